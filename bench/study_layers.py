"""Per-layer statistics of the study's models: how many neurons are constant on the eps-ball
and how much tighter each layer's local (masked) norm is than its global norm.

After every epoch the study reads the run's checkpoint.npz (written just before the
"epoch_end" event) and measures it on a fixed probe set of selection images; the numbers go
to the run folder's layers.json, atomically, so an interrupted run keeps them, and a resumed
run first measures the checkpoint it resumes from when that epoch's numbers are missing.
"""
import json

import array_api_compat.numpy as xp
import numpy

from lipref.bounds import BoundOptions, network_bounds
from lipref.models import atomic_write_bytes, load_model

LAYERS_FILE = "layers.json"
BATCH = 100


def layer_statistics(model, images, eps, n_iters, seed):
    """On host images (N, C, H, W), with the local bound at radius eps (fast mode, n_iters
    power-iteration steps): per activation layer l, the mean over samples of the fraction of
    its neurons constant on the ball; per affine layer l but the last, the median over samples
    of ||D_rows W_l D_cols|| / ||W_l|| (local over global norm); and the median over samples of
    the whole local bound over the global one (their products)."""
    rng = numpy.random.default_rng([seed, 0x1A7E])
    constant, ratios, network = [], [], []
    for s in range(0, images.shape[0], BATCH):
        x = xp.asarray(images[s:s + BATCH], dtype=xp.float32)
        b = network_bounds(model, x, eps, BoundOptions("local", "fast", n_iters), rng=rng)
        constant.append([numpy.asarray(a.constant_fraction, dtype=numpy.float64) for a in b.activations])
        ratios.append([numpy.asarray(loc, dtype=numpy.float64) / float(g)
                       for loc, g in zip(b.local_norms, b.global_norms)])
        network.append(numpy.asarray(b.lipschitz, dtype=numpy.float64) / float(b.global_lipschitz))
    per_layer = list(zip(*constant)), list(zip(*ratios))
    return {"constant_fraction": [float(numpy.concatenate(c).mean()) for c in per_layer[0]],
            "median_local_over_global": [float(numpy.median(numpy.concatenate(r))) for r in per_layer[1]],
            "median_network_local_over_global": float(numpy.median(numpy.concatenate(network))),
            "n": int(images.shape[0]), "eps": float(eps), "n_iters": int(n_iters)}


class EpochProbe:
    """The study's progress callback: at every "epoch_end" it measures the run's checkpoint on
    the probe images and records {"epoch", **layer_statistics} in folder/layers.json."""

    def __init__(self, folder, images, eps, n_iters, seed, then=None):
        self.folder, self.images, self.eps, self.n_iters, self.seed = folder, images, eps, n_iters, seed
        self.then = then or (lambda event: None)
        path = folder / LAYERS_FILE
        self.records = json.loads(path.read_text()) if path.exists() else []

    def __call__(self, event):
        if event["event"] == "epoch_end":
            self.measure_checkpoint()
        self.then(event)

    def measure_checkpoint(self):
        """Measure checkpoint.npz unless its epoch is recorded already (a resumed run)."""
        path = self.folder / "checkpoint.npz"
        if not path.exists():
            return
        model = load_model(path, xp, xp.float32)
        epoch = int(model.metadata["checkpoint"]["epoch"])
        if any(r["epoch"] == epoch for r in self.records):
            return
        stats = layer_statistics(model, self.images, self.eps, self.n_iters, self.seed)
        self.records = sorted(self.records + [{"epoch": epoch, **stats}], key=lambda r: r["epoch"])
        atomic_write_bytes(self.folder / LAYERS_FILE, json.dumps(self.records, indent=1).encode("utf-8"))
