"""Certification and evaluation of a model on a dataset.

Per sample: the prediction; the global and local Lipschitz bounds of x -> penultimate; the
certificate at eps from each (worst-case logits of the ball-and-box last layer, which is
never looser than GloRo's); a certified radius from each; the fraction of constant neurons
per activation layer; and, optionally, an l2 PGD attack. A sample that is certified and
that PGD breaks inside the ball is a soundness violation: reported, never hidden.

Certified radius: the bound L(eps) is valid on the ball of radius eps, hence on every
smaller ball, so the prediction cannot change within
min(eps, min_j (z_y - z_j) / (L(eps) ||w_y - w_j||)) (GloRo's margin form). A sample
certified at eps by the tighter last layer gets radius eps. With the global bound the
margin form holds for every radius, so its radius is not capped at eps.
"""
import time
from dataclasses import dataclass, field

from .pgd import pgd_l2
from .backend import (STREAM_BOUNDS, STREAM_PGD, check_seed, global_rng, host, sample_streams, seed_from,
                      to_host)
from .bounds import MODES, BoundOptions, global_norms, network_bounds
from .bounds.certificate import certify_bounds, one_hot, predictions
from .bounds.certificates import GRAM_LIMIT
from .bounds.layer_norms import model_dtype
from .config import FLOAT_DTYPES, setting
from .data.batches import batches
from .errors import InputError
from .tape import value_of

DTYPES = ("auto",) + FLOAT_DTYPES  # auto: float64 where the data, model or mode need it (inputs.compute_dtype)


@dataclass(frozen=True)
class CertifyConfig:
    """The options of `lipref certify` and `lipref bound` (and the batch size, domain and dtype
    of `lipref attack`), with their defaults, choices and help, written once."""
    mode: str = setting("fast", "fast: power iteration (the paper's evaluation; estimates). sound: upper bounds "
                                "everywhere, float64 (see docs/soundness.md).", choices=MODES)
    n_iters: int = setting(100, "Power-iteration steps (fast) or Lanczos steps (sound) per layer.", minimum=1)
    pgd_steps: int = setting(100, "l2 PGD steps (step eps/4, random start); 0 skips the attack.", minimum=0)
    pgd_restarts: int = setting(1, "PGD restarts.", minimum=1)
    batch_size: int = setting(100, "Batch size.", minimum=1)
    domain: str = setting("auto", "The data domain PGD stays in (besides the ball): LO,HI (it must hold the data), "
                                  "none (unbounded: the data are used as they are), or auto: the model's input "
                                  "range where its file records one ([0, 1] for a model trained on a named "
                                  "dataset), refusing data outside it; else [0, 1] when every value of the data "
                                  "lies there, else unbounded (with a warning for whole-number pixels above 1).")
    dtype: str = setting("auto", "Floating-point type of the computation. auto: float64 in sound mode; in fast "
                                 "mode float32 unless the data or the model's parameters hold values float32 cannot "
                                 "(then float64), so that what is certified is the input and the model as given. "
                                 "float32 with a float64 model certifies the model rounded to float32 (said on "
                                 "stderr; model_rounded in the JSON).", choices=DTYPES)
    gram_limit: int = setting(GRAM_LIMIT, "Sound mode: certify a conv layer's global norm on its dense Gram matrix "
                                    "(nearly exact, about half a minute for 4c3f) when the layer's smaller side "
                                    "has at most this many entries; 0 uses the polyphase circulant bound only "
                                    "(seconds, 0.1-1% looser).", minimum=0)

    def bound_options(self, bound, threads=None):
        """The `BoundOptions` of this run's `bound` ("local" or "global")."""
        return BoundOptions(bound, self.mode, self.n_iters, threads=threads)

    def global_norms(self, model, seed):
        """The run's GlobalNorms, computed once before any batch (never warm-started from batch
        to batch, so no batch depends on another): fast mode, n_iters power-iteration steps
        from starts drawn from [seed, STREAM_GLOBAL]; sound mode, the certified norms (their rng
        from the same stream)."""
        return global_norms(model, self.mode, self.n_iters, global_rng(seed), gram_limit=self.gram_limit)


def local_over_global(local, global_):
    """local / global per sample (host arrays): 1 where both are 0 (a network constant on the
    ball: the bounds agree), never the NaN of 0/0; inf where only the global bound is 0."""
    both_zero = (local == 0) & (global_ == 0)
    with host.errstate(divide="ignore"):
        return host.where(both_zero, 1.0, local / host.where(both_zero, 1.0, global_))


@dataclass
class Certification:
    eps: float
    mode: str
    n_iters: int
    labels: object  # host arrays, (N,)
    predictions: object
    correct: object
    global_bound: object
    local_bound: object
    certified_global: object
    certified_local: object
    radius_global: object
    radius_local: object
    constant_fraction: object  # (N, n_activation_layers)
    pgd_steps: int = 0
    pgd_broken: object = None  # (N,) bool or None when no attack ran
    seconds: float = 0.0
    violations: list = field(default_factory=list)
    # what the run was given besides the arrays (seed, dtype, model_rounded, reference, domain),
    # set by lipref.api and the CLI: part of summary()
    context: dict = field(default_factory=dict)

    def summary(self):
        """The numbers `lipref certify --json` prints (see the CLI's contract), with the run's
        `context`; none is NaN (`local_over_global`)."""
        n = int(self.labels.shape[0])
        out = {
            "n": n, "eps": self.eps, "mode": self.mode, "n_iters": self.n_iters,
            "clean_accuracy": float(self.correct.mean()),
            "certified_accuracy_global": float(self.certified_global.mean()),
            "certified_accuracy_local": float(self.certified_local.mean()),
            "pgd_accuracy": None, "pgd_steps": self.pgd_steps,
            "median_local_over_global": float(host.median(local_over_global(self.local_bound, self.global_bound))),
            "mean_constant_fraction": [float(c) for c in self.constant_fraction.mean(axis=0)],
            "soundness_violations": list(self.violations),
            "seconds": self.seconds,
        }
        if self.pgd_broken is not None:
            out["pgd_accuracy"] = float((self.correct & ~self.pgd_broken).mean())
        out.update(self.context)
        return out

    def samples(self, offset=0):
        """One row per sample (`--samples FILE`); a radius is inf where no class can ever
        win (lipref.outputs writes it as "inf")."""
        rows = []
        for i in range(int(self.labels.shape[0])):
            rows.append({
                "index": offset + i, "label": int(self.labels[i]), "prediction": int(self.predictions[i]),
                "global": float(self.global_bound[i]), "local": float(self.local_bound[i]),
                "certified_global": bool(self.certified_global[i]),
                "certified_local": bool(self.certified_local[i]),
                "radius_global": float(self.radius_global[i]), "radius_local": float(self.radius_local[i]),
                "constant_fraction": [float(c) for c in self.constant_fraction[i]],
                "pgd_broken": None if self.pgd_broken is None else bool(self.pgd_broken[i]),
            })
        return rows


def run_seed_of(seed, rng):
    """The seed of a run: `seed`, or one drawn from `rng` (callers that pass a Generator)."""
    if seed is not None:
        return check_seed(seed)
    if rng is None:
        raise InputError("certify and bound need seed (or rng, a numpy Generator) for the random starts")
    return seed_from(rng)


def certify(model, images, labels, eps, config=CertifyConfig(pgd_steps=0), *, seed=None, rng=None, norms=None,
            domain=None, progress=None, threads=None, first_index=0):
    """Certify host arrays images (N, C, H, W) and labels (N,) at radius eps: a Certification.

    config: a CertifyConfig (mode: "fast", power iteration from random starts, or "sound",
    upper bounds, for a float64 model; n_iters, batch_size, pgd_steps, pgd_restarts,
    gram_limit). Every random draw comes from (seed, sample index) (backend.sample_streams; seed drawn
    from rng when not given), the global norms from `norms` (the run's GlobalNorms,
    `config.global_norms` when None), so no sample's draws depend on its batch: shards of
    whole batches give the same numbers bit for bit (first_index: the index in the whole
    dataset of images[0]), other batch sizes the same to the rounding of the kernels' sums
    (which may pick their order by block size). pgd_steps > 0 also runs l2 PGD (step eps/4,
    random start, pgd_restarts restarts) inside the ball and the data domain `domain` ((lo,
    hi), which must hold the data, or None: unbounded); a certified sample that PGD breaks
    at a point within eps (measured in float64) is a soundness violation. progress(n_done)
    is called after each batch. threads: for network_bounds and PGD (None: the backend's
    default)."""
    if not 0 <= eps < float("inf"):
        raise InputError(f"eps must be finite and >= 0, got {eps}")
    seed = run_seed_of(seed, rng)
    if int(labels.shape[0]) == 0:
        raise InputError("nothing to certify: the dataset has no examples")
    xp, dtype = model_dtype(model)
    start = time.perf_counter()
    norms = config.global_norms(model, seed) if norms is None else norms
    parts = []
    for s, e, x, y in batches(images, labels, batch_size=config.batch_size, xp=xp, dtype=dtype):
        first, last = first_index + s, first_index + e
        streams = sample_streams(seed, first, last, STREAM_BOUNDS)
        part = _certify_batch(model, x, y, eps, config, streams, norms, threads)
        if config.pgd_steps > 0:
            attack = pgd_l2(model, x, y, eps, sample_streams(seed, first, last, STREAM_PGD), config.pgd_steps, None,
                            config.pgd_restarts, domain, threads)
            broken = to_host(attack.success) & _within(to_host(attack.adversarial), images[s:e], eps)
            part["pgd_broken"] = broken & part["correct"]
        parts.append(part)
        if progress is not None:
            progress(e - s)
    return joined_certification(parts, eps, config.mode, config.n_iters, config.pgd_steps, time.perf_counter() - start)


def _certify_batch(model, x, labels, eps, config, streams, norms, threads):
    """The per-sample arrays (`PER_SAMPLE`, host) of one batch: the local and the global bound
    with their certificates and radii, the predictions, the constant fractions."""
    last = model.layers[-1]
    weight, bias = (value_of(a) for a in last.linear_part(last.params))
    onehot = one_hot(labels, model.n_classes, x.dtype)
    sound = config.mode == "sound"
    local = network_bounds(model, x, eps, config.bound_options("local", threads), norms, streams)
    glob = network_bounds(model, x, eps, config.bound_options("global", threads), norms)  # draws nothing
    cert_local, radius_local = certify_bounds(local, weight, bias, onehot, eps, sound, cap_at_eps=True)
    cert_global, radius_global = certify_bounds(glob, weight, bias, onehot, eps, sound, cap_at_eps=False)
    preds, labels = to_host(predictions(local.logits)), to_host(labels)
    fractions = [to_host(a.constant_fraction) for a in local.activations]
    return {"labels": labels, "predictions": preds, "correct": preds == labels,
            "global_bound": to_host(glob.lipschitz), "local_bound": to_host(local.lipschitz),
            "certified_global": to_host(cert_global), "certified_local": to_host(cert_local),
            "radius_global": to_host(radius_global), "radius_local": to_host(radius_local),
            "constant_fraction": host.stack(fractions, axis=1) if fractions else host.zeros((preds.shape[0], 0))}


def bounds_per_sample(model, images, labels, eps, config=CertifyConfig(), *, seed=None, rng=None, norms=None,
                      progress=None, threads=None, first_index=0):
    """Per sample, a dict: index, label, prediction, global and local Lipschitz bound of
    x -> penultimate on the eps-ball, and the fraction of constant neurons per activation
    layer. Random starts and global norms as in `certify` (same arguments)."""
    xp, dtype = model_dtype(model)
    seed = run_seed_of(seed, rng)
    norms = config.global_norms(model, seed) if norms is None else norms
    samples = []
    for s, e, x, _ in batches(images, labels, batch_size=config.batch_size, xp=xp, dtype=dtype):
        streams = sample_streams(seed, first_index + s, first_index + e, STREAM_BOUNDS)
        b = network_bounds(model, x, eps, config.bound_options("local", threads), norms, streams)
        preds, local = to_host(predictions(b.logits)), to_host(b.lipschitz)
        glob = float(to_host(b.global_lipschitz))
        fractions = [to_host(a.constant_fraction) for a in b.activations]
        for i in range(e - s):
            samples.append({"index": first_index + s + i, "label": int(labels[s + i]), "prediction": int(preds[i]),
                            "global": glob, "local": float(local[i]),
                            "constant_fraction": [float(f[i]) for f in fractions]})
        if progress is not None:
            progress(e - s)
    return samples


def _within(points, centres, eps):
    """Which points lie in the closed eps-ball of their centre, measured in float64."""
    diff = host.asarray(points, dtype=host.float64) - host.asarray(centres, dtype=host.float64)
    return host.sqrt(host.sum(diff.reshape(diff.shape[0], -1) ** 2, axis=1)) <= eps


def _violations(result):
    """Indices of certified samples that PGD broke inside the ball."""
    if result.pgd_broken is None:
        return []
    certified_any = result.certified_local | result.certified_global
    return [int(i) for i in host.nonzero(certified_any & result.pgd_broken)[0]]


# the per-sample arrays of a Certification, in the order a shard stores them
PER_SAMPLE = ("labels", "predictions", "correct", "global_bound", "local_bound", "certified_global", "certified_local",
              "radius_global", "radius_local", "constant_fraction", "pgd_broken")


def certification_arrays(result):
    """{name: host array} of a Certification's per-sample fields (pgd_broken left out when no
    attack ran): what a shard sends back and stores."""
    return {k: getattr(result, k) for k in PER_SAMPLE if getattr(result, k) is not None}


def joined_certification(shards, eps, mode, n_iters, pgd_steps, seconds):
    """One Certification from the `certification_arrays` of consecutive batches or shards, in
    sample order; the same arrays, value for value, as one run over all samples."""
    arrays = {k: host.concatenate([s[k] for s in shards]) for k in shards[0]}
    result = Certification(eps=float(eps), mode=mode, n_iters=n_iters, pgd_steps=pgd_steps, seconds=seconds,
                           **{k: arrays.get(k) for k in PER_SAMPLE})
    result.violations = _violations(result)
    return result


def certified_accuracy_curve(result, radii):
    """Certified accuracy at each radius from the per-sample certified radii (global and local;
    the local curve stops at eps, beyond which the local bound says nothing)."""
    rows = []
    for r in radii:
        row = {"radius": float(r), "global": float((result.radius_global >= r).mean() if r > 0 else
                                                    result.correct.mean())}
        if r <= result.eps:
            row["local"] = float((result.radius_local >= r).mean() if r > 0 else result.correct.mean())
        rows.append(row)
    return rows
