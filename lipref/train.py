"""Certified training (Huang et al. 2021): the local (or global) bound inside the loss.

One step: walk the network over the eps-ball of each sample of the batch (interval and ball
bounds, masks, masked power iteration warm-started from the sample's stored vectors),
build the loss kappa * CE + (1 - kappa) * robust + sparsity_weight * sparsity on the tape,
take its gradient with respect to every parameter and apply Adam (thresholds projected to
>= 0). eps, kappa and the learning rate follow `schedules.py`. On the CPU a step runs in
blocks of samples (in threads; each loss term is a mean over samples, so the batch's
gradient is the blocks' weighted sum).

A run folder holds: checkpoint.npz (model, optimiser state, schedule position, history;
written atomically after every epoch), best.npz (the model with the best certified accuracy
on the evaluation set among those trained at least `first_best_epoch` epochs, by default
the end of the ramp), model.npz (the final model), history.json, and vectors/ (the
per-sample power-iteration vectors, memory-mapped). Everything random is drawn from
generators seeded by (seed, epoch), so a resumed run replays its interrupted epoch exactly.

The evaluation set chooses best.npz, so it must not overlap the training set
(`data.record`: refused unless allowed). history.json and every model file's metadata
record the data (specs, sources, sizes, digests) and lipref's provenance (version, command
line, extras, kernels); a resumed run must be given the same examples.
"""
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import losses
from . import primitives as P
from .backend import float_dtype, get_backend, host, map_in_threads, sample_blocks, to_backend, to_host
from .bounds import BOUNDS, global_norms, network_bounds, start_vectors
from .bounds import margins as M
from .certify import certify
from .config import FLOAT_DTYPES, setting
from .data.augment import augment
from .data.record import check_same_data, input_range, refuse_overlap, training_data
from .errors import InputError, RunFolderError, TrainingDiverged
from .layers import ACTIVATIONS
from .models import (
    atomic_write_bytes,
    build_model,
    layer_inits,
    load_model,
    model_to_bytes,
    save_model,
    set_layer_inits,
)
from .optim import Adam
from .provenance import provenance
from .schedules import Schedule, eps_at, kappa_at, lr_at
from .seeds import check_seed
from .tape import grad, value_of
from .vectors import VectorStore, epoch_folder, remove_other_epochs

CHECKPOINT = "checkpoint.npz"


MAX_CLASSES = 100_000  # a label of 10^9 in a file would otherwise ask for a 10^9-row last layer


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in its checkpoint; --resume reuses it). Each field
    carries its command-line help, choices and range (`lipref train` reads them)."""
    arch: str = setting("2c2f", "Architecture: 4c3f, 6c2f, 8c2f (the paper's), 4c3f-half (4c3f with every width "
                                "halved), 2c2f (small), mlp-W[-W...].")
    activation: str = setting("relu", "Activation after every hidden layer.", choices=ACTIVATIONS)
    threshold_init: float = setting(1.0, "Initial threshold of clipped ReLU / clamp of MaxMin.")
    epochs: int = setting(10, "Training epochs.", minimum=1)
    batch_size: int = setting(64, "Batch size.", minimum=1)
    eps_train: float = setting(0.5, "Training radius (l2), reached at the end of the ramp.")
    eps_eval: float = setting(None, "Radius of the per-epoch evaluation (default: --eps).")  # None: eps_train
    warmup: float = setting(1.0, "Epochs of clean training first.")
    ramp: float = setting(4.0, "Epochs over which eps grows 0 -> --eps and kappa moves --kappa-start -> --kappa-end.")
    kappa_end: float = setting(0.0, "Final weight of the clean loss in kappa*CE + (1-kappa)*robust.", minimum=0,
                               maximum=1)
    kappa_start: float = setting(1.0, "Weight of the clean loss when the ramp starts (0 with --kappa-end 0: the "
                                      "robust loss alone, as the official GloRo recipe).", minimum=0, maximum=1)
    lr: float = setting(1e-3, "Adam learning rate.")
    lr_end: float = setting(1e-4, "Learning rate reached at the last epoch (exponential decay after the ramp).")
    decay_start: float = setting(None, "Epoch where the decay starts (default: end of ramp).")
    loss: str = setting("gloro", "Robust loss: gloro (bottom logit z_j + R ||w_j - w_y||), bcp (the "
                                 "ball-and-box worst-case logits) or gloro-bcp (GloRo's bottom logit from the "
                                 "ball-and-box worst case; the official MNIST recipe).", choices=losses.ROBUST_LOSSES)
    bound: str = setting("local", "Lipschitz bound inside the loss.", choices=BOUNDS)
    sparsity: float = setting(0.0, "Weight of the sparsity loss that pushes neurons to be constant on the ball "
                                   "(paper: 0.01-0.1).")
    saturation_weight: float = setting(0.1, "c in the clipped-ReLU sparsity term mean(relu(ub)) + "
                                            "c*mean(relu(theta - lb)).")
    n_iters: int = setting(2, "Power-iteration steps per training step (warm-started per sample).", minimum=1)
    eval_iters: int = setting(20, "Power-iteration steps in the per-epoch evaluation.", minimum=1)
    eval_limit: int = setting(200, "Examples used for the per-epoch evaluation.", minimum=1)
    crop_padding: int = setting(0, "Augmentation: random crop after padding each side with this many zeros "
                                   "(0: none; the official CIFAR recipe: 4).", minimum=0)
    flip: bool = setting(False, "Augmentation: horizontal flip with probability 1/2.")
    best_from: float = setting(None, "Epochs trained before a model may become best.npz (default: the end of the "
                                     "ramp, as the official code; 0: any epoch).", minimum=0)
    layer_inits: str = setting(None, "Initial threshold per activation layer, comma separated (clipped ReLU: T; "
                                     "MaxMin: HI:LO); overrides --threshold-init.")
    seed: int = 0
    dtype: str = setting("float32", "Floating-point type of the training.", choices=FLOAT_DTYPES)
    backend: str = "numpy"

    def __post_init__(self):
        if self.loss not in losses.ROBUST_LOSSES:
            raise InputError(f"loss must be one of {', '.join(losses.ROBUST_LOSSES)}, got {self.loss!r}")
        if self.bound not in BOUNDS:
            raise InputError(f"bound must be one of {', '.join(BOUNDS)}, got {self.bound!r}")
        if self.batch_size < 1 or self.n_iters < 1 or self.eval_iters < 1:
            raise InputError("batch_size, n_iters and eval_iters must be >= 1")
        if self.sparsity < 0:
            raise InputError(f"sparsity weight must be >= 0, got {self.sparsity}")
        if self.eps_eval is not None and self.eps_eval < 0:
            raise InputError(f"eps_eval must be >= 0, got {self.eps_eval}")
        self.schedule()  # validates epochs, eps, warmup, ramp, kappa, lr
        layer_inits(self.layer_inits)  # validates the list
        check_seed(self.seed)

    def schedule(self):
        return Schedule(self.epochs, self.eps_train, self.warmup, self.ramp, self.kappa_end, self.lr, self.lr_end,
                        self.decay_start, self.kappa_start)

    @property
    def first_best_epoch(self):
        """Epochs trained before a model may become best.npz (at most the last epoch)."""
        start = self.warmup + self.ramp if self.best_from is None else self.best_from
        return min(start, float(self.epochs))

    @property
    def eval_eps(self):
        return self.eps_train if self.eps_eval is None else self.eps_eval

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def blocked_gradients(xp, n, params, block_loss, threads=None, sample_block=None):
    """The loss of a batch of n samples and its gradients, computed block by block.

    block_loss(s) takes a slice of the batch and returns (loss, extra): loss a scalar Var
    that is a mean over the block's samples (so that the batch's loss is the sum over
    blocks of share * loss, share the block's fraction of the batch, and its gradient the
    same sum of gradients), extra anything the caller wants back. The blocks come from
    backend.sample_blocks(xp, n, sample_block) and run in `threads` threads
    (map_in_threads; None: backend.default_threads); the sums run in block order, so the
    result does not depend on `threads`. Returns (loss value, [gradient per param],
    [extra per block])."""
    def one_block(s):
        loss, extra = block_loss(s)
        loss = P.multiply(loss, (s.stop - s.start) / n)
        return loss.value, grad(loss, params), extra
    parts = map_in_threads(xp, one_block, sample_blocks(xp, n, sample_block), threads)
    value, grads = parts[0][0], list(parts[0][1])
    for part_value, part_grads, _ in parts[1:]:
        value = value + part_value
        grads = [a + b for a, b in zip(grads, part_grads)]
    return value, grads, [extra for _, _, extra in parts]


def _rng(seed, *keys):
    return host.random.default_rng([seed, *keys])


def _affine_input_shapes(model):
    """{layer index: input shape} of the affine layers whose masked norms are estimated."""
    return {i: layer.in_shape for i, layer in enumerate(model.layers[:-1]) if layer.is_affine}


def _finite(value):
    """`value` with every non-finite float replaced by None (history.json is strict JSON)."""
    if isinstance(value, float):
        return value if value - value == 0 else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Trainer:
    def __init__(self, config, train_set, eval_set, run_dir, resume=False, progress=None, threads=None,
                 sample_block=None, allow_overlap=False, data_specs=(None, None)):
        self.config = config
        self.sample_block = sample_block  # None: backend.sample_blocks' default
        self.train_set, self.eval_set = train_set, eval_set
        self.run_dir = Path(run_dir)
        self.progress = progress or (lambda event: None)
        self.xp = get_backend(config.backend)
        self.dtype = float_dtype(self.xp, config.dtype)
        self.threads = threads  # None: backend.default_threads
        if (threads is not None and threads < 1) or (sample_block is not None and sample_block < 1):
            raise InputError(f"threads and sample_block must be >= 1, got {threads} and {sample_block}")
        self.data = dict(training_data(train_set, eval_set, data_specs), allow_overlap=bool(allow_overlap))
        self.sessions = []  # the provenance of each earlier process that trained this run
        checkpoint = self.run_dir / CHECKPOINT
        if checkpoint.exists() and not resume:
            raise RunFolderError(f"{checkpoint} exists: pass --resume to continue that run, or choose another --out")
        if resume and checkpoint.exists():
            self._load_checkpoint(checkpoint)
        else:
            self._fresh()
        if tuple(train_set.input_shape) != tuple(self.model.input_shape):
            raise InputError(f"data {train_set.name} has input shape {train_set.input_shape}, "
                             f"the model needs {self.model.input_shape}")
        if train_set.n_classes != self.model.n_classes:
            raise InputError(f"data {train_set.name} has {train_set.n_classes} classes, "
                             f"the model {self.model.n_classes}")
        refuse_overlap(self.data, allow_overlap)

    # ----------------------------------------------------------- state
    def _fresh(self):
        c = self.config
        if self.train_set.n_classes > MAX_CLASSES:
            raise InputError(f"data {self.train_set.name} have labels up to {self.train_set.n_classes - 1}; lipref "
                             f"trains classifiers of at most {MAX_CLASSES} classes")
        self.model = build_model(c.arch, self.train_set.input_shape, self.train_set.n_classes, self.xp, self.dtype,
                                 _rng(c.seed, 0xA11), c.activation, c.threshold_init)
        set_layer_inits(self.model, layer_inits(c.layer_inits), self.xp, self.dtype)
        self.optimizer = self._make_optimizer()
        self.epoch = 0
        self.history = []
        self.best = None
        self.global_vectors = {}

    def _make_optimizer(self):
        params = self.model.parameters()
        thresholds = [k for k in params if k.endswith(".threshold")]
        return Adam(params, lr=self.config.lr, project=thresholds)

    def _load_checkpoint(self, path):
        model = load_model(path, self.xp, self.dtype)
        state = model.metadata.get("checkpoint")
        if state is None:
            raise InputError(f"{path}: a model file without training state; not a checkpoint")
        try:
            saved = TrainConfig.from_dict(state["config"])
            epoch, history, step_count = int(state["epoch"]), list(state["history"]), int(state["step_count"])
        except (KeyError, TypeError, ValueError) as exc:  # a hand-edited or foreign file, not an engine bug
            raise RunFolderError(f"{path}: corrupted training state ({type(exc).__name__}: {exc})") from None
        if asdict(saved) != asdict(self.config):
            changed = [f.name for f in fields(TrainConfig) if getattr(saved, f.name) != getattr(self.config, f.name)]
            raise InputError(f"{path}: the run was started with different settings ({', '.join(changed)}); "
                             "resume with the same options")
        check_same_data(path, model.metadata.get("data"), self.data)
        earlier = model.metadata.get("earlier_sessions")
        self.sessions = (earlier if isinstance(earlier, list) else []) + [model.metadata.get("provenance")]
        self.model = model
        self.optimizer = self._make_optimizer()
        extra = {k: to_backend(v, self.xp, self.dtype) for k, v in model.extra_arrays.items()}
        self.optimizer.load_state({k: v for k, v in extra.items() if k.startswith("adam.")}, step_count)
        self.global_vectors = {int(k.split(".")[1]): v for k, v in extra.items() if k.startswith("global_vector.")}
        self.epoch, self.history = epoch, history
        self.best = state.get("best")
        self.model.metadata = {k: v for k, v in model.metadata.items() if k != "checkpoint"}

    def _write_checkpoint(self):
        extra = {k: to_host(v) for k, v in self.optimizer.state().items()}
        extra.update({f"global_vector.{k}": to_host(v) for k, v in self.global_vectors.items()})
        meta = dict(self.model.metadata)
        self.model.metadata = dict(meta, checkpoint={
            "epoch": self.epoch, "step_count": self.optimizer.step_count, "config": asdict(self.config),
            "history": self.history, "best": self.best})
        try:
            atomic_write_bytes(self.run_dir / CHECKPOINT, model_to_bytes(self.model, extra))
        finally:
            self.model.metadata = meta

    # ----------------------------------------------------------- loop
    def run(self):
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model.metadata.update({"training": asdict(c), "data": self.data, "provenance": provenance(),
                                    "earlier_sessions": self.sessions, "input_range": input_range(self.train_set)})
        self.progress({"event": "data", **self.data})
        while self.epoch < c.epochs:
            self._train_epoch(self.epoch)
            self.epoch += 1
            record = self._evaluate()
            self.history.append(record)
            eligible = self.epoch >= c.first_best_epoch
            if eligible and (self.best is None or
                             record["certified_accuracy_local"] > self.best["certified_accuracy_local"]):
                self.best = record
                self.model.metadata["best"] = record
                save_model(self.run_dir / "best.npz", self.model)
            self._write_checkpoint()
            if c.bound == "local":
                remove_other_epochs(self.run_dir, self.epoch)
            self.progress({"event": "epoch_end", **record})
        self.model.metadata["history"] = self.history
        save_model(self.run_dir / "model.npz", self.model)
        doc = {"config": asdict(c), "data": self.data, "provenance": self.model.metadata["provenance"],
               "earlier_sessions": self.sessions, "history": self.history, "best": self.best}
        atomic_write_bytes(self.run_dir / "history.json",
                           json.dumps(_finite(doc), indent=2, allow_nan=False).encode("utf-8"))
        return self.history

    def _vector_stores(self, epoch):
        if self.config.bound != "local":
            return None, None
        shapes = _affine_input_shapes(self.model)
        n = int(self.train_set.labels.shape[0])
        previous = None
        if epoch > 0:
            previous = VectorStore(epoch_folder(self.run_dir, epoch), shapes, n, host.float32, create=False)
        current = VectorStore(epoch_folder(self.run_dir, epoch + 1), shapes, n, host.float32, create=True)
        return previous, current

    def _train_epoch(self, epoch):
        c = self.config
        schedule = c.schedule()
        rng = _rng(c.seed, epoch)
        n = int(self.train_set.labels.shape[0])
        order = rng.permutation(n)
        steps = (n + c.batch_size - 1) // c.batch_size
        previous, current = self._vector_stores(epoch)
        for step in range(steps):
            index = host.sort(order[step * c.batch_size:(step + 1) * c.batch_size])
            t = epoch + step / steps
            stats = self._step(index, eps_at(schedule, t), kappa_at(schedule, t), lr_at(schedule, t), rng,
                               previous, current)
            self.progress({"event": "step", "epoch": epoch, "step": step + 1, "steps": steps, **stats})
        if current is not None:
            current.flush()

    def _step(self, index, eps, kappa, lr, rng, previous, current):
        c = self.config
        xp = self.xp
        x = to_backend(augment(self.train_set.images[index], rng, c.crop_padding, c.flip), xp, self.dtype)
        y = to_backend(self.train_set.labels[index], xp)
        onehot = M.one_hot(y, self.model.n_classes, self.dtype)
        params = self.model.parameters()
        names = list(params)
        n = len(index)
        stored = None
        if previous is not None:
            stored = {k: to_backend(v, xp, self.dtype) for k, v in previous.read(index).items()}
        clean_only = kappa == 1.0 and c.sparsity == 0  # warm-up: clean training, stored vectors carried over
        global_vectors, local_starts = {}, {}
        if not clean_only:
            global_starts, local_starts = start_vectors(self.model, n, c.bound, rng, stored, self.global_vectors)
            # the global power iteration once, here; each block only puts its norms on the tape
            global_vectors = global_norms(self.model, "fast", c.n_iters, None, global_starts, False)[1]
        last = self.model.layers[-1].params["weight"]

        def block_loss(s):
            if clean_only:
                return losses.clean_loss(self.model(x[s, ...]), onehot[s, ...]), None
            b = network_bounds(self.model, x[s, ...], eps, c.bound, "fast", c.n_iters, None,
                               {k: v[s, ...] for k, v in local_starts.items()}, global_vectors, record=True,
                               global_iters=0)
            loss = losses.mixed_loss(c.loss, b, last, onehot[s, ...], kappa)
            if c.sparsity > 0:
                loss = loss + losses.sparsity_loss(b.activations, c.saturation_weight) * c.sparsity
            return loss, b
        value, grads, bounds = blocked_gradients(xp, n, [params[k] for k in names], block_loss, self.threads,
                                                 self.sample_block)
        if clean_only:
            new_vectors, lipschitz = stored, None
        else:
            self.global_vectors = bounds[0].global_vectors  # every block put the same vectors on the tape
            new_vectors = {k: xp.concat([b.local_vectors[k] for b in bounds], axis=0)
                           for k in bounds[0].local_vectors}
            lipschitz = float(to_host(xp.mean(xp.concat([value_of(b.lipschitz) for b in bounds], axis=0))))
        if current is not None:
            if new_vectors is None or any(k not in new_vectors for k in current.shapes):
                new_vectors = self._fresh_vectors(n, rng, new_vectors or {})
            current.write(index, {k: to_host(xp.astype(new_vectors[k], xp.float32)) for k in current.shapes})
        self.optimizer.lr = lr
        self.optimizer.step(dict(zip(names, grads)))
        value = float(to_host(value))
        if value != value:
            raise TrainingDiverged(f"training diverged: the loss is NaN at epoch {self.epoch}; lower --lr")
        return {"loss": value, "eps": eps, "kappa": kappa, "lr": lr, "lipschitz": lipschitz}

    def _fresh_vectors(self, n, rng, have):
        out = dict(have)
        for key, shape in _affine_input_shapes(self.model).items():
            if key not in out:
                out[key] = self.xp.asarray(rng.standard_normal((n,) + tuple(shape)), dtype=self.dtype)
        return out

    def _evaluate(self):
        c = self.config
        ev = self.eval_set
        n = min(int(ev.labels.shape[0]), c.eval_limit)
        result = certify(self.model, ev.images[:n], ev.labels[:n], c.eval_eps, "fast", c.eval_iters,
                         _rng(c.seed, 0xE7A1, self.epoch), batch_size=100, threads=self.threads)
        s = result.summary()
        return _finite({"epoch": self.epoch, "eps": c.eval_eps, "n": n, "clean_accuracy": s["clean_accuracy"],
                        "certified_accuracy_global": s["certified_accuracy_global"],
                        "certified_accuracy_local": s["certified_accuracy_local"],
                        "median_local_over_global": s["median_local_over_global"],
                        "mean_constant_fraction": s["mean_constant_fraction"]})


def train(config, train_set, eval_set, run_dir, resume=False, progress=None, threads=None, sample_block=None,
          allow_overlap=False, data_specs=(None, None)):
    """Train (or resume) a run in `run_dir`; returns the per-epoch history. Nothing is written
    before the data, model and options have been checked. eval_set chooses best.npz, so an
    eval_set that overlaps train_set (the same dataset and split, the same file, the same
    images) is refused unless allow_overlap. data_specs: the two specs as the user gave them
    (recorded). threads: how many blocks of a batch run at once on the CPU (None:
    backend.default_threads); the results do not depend on it. sample_block: the most
    samples per block (None: backend.sample_blocks' default; results depend on it only
    through rounding)."""
    return Trainer(config, train_set, eval_set, run_dir, resume, progress, threads, sample_block, allow_overlap,
                   data_specs).run()
