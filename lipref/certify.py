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

from .attack import pgd_l2
from .backend import host, namespace, to_host
from .bounds import MODES, global_norms, network_bounds, sound_global_norms
from .bounds import margins as M
from .bounds.certificates import GRAM_LIMIT
from .bounds.rounding import (
    below,
    forward_error_norm,
    logit_slack,
    margin_slack,
    norm_upper,
    product_upper,
    support_radius,
)
from .config import FLOAT_DTYPES, setting
from .data.batches import batches
from .errors import InputError
from .seeds import BOUNDS, PGD, check_seed, global_rng, sample_streams, seed_from

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

    def summary(self):
        """The numbers `lipref certify --json` prints (see the CLI's contract); none is NaN
        (`local_over_global`)."""
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


def gloro_radius(logits, last_weight, onehot, lipschitz, gap_slack=None, forward_norm=None):
    """min_j (z_y - z_j) / (L ||w_y - w_j||) per sample (0 where the prediction is wrong), a
    little below it, since a tie is never certified; never NaN. The norms are scaled (no
    square underflows or overflows) and the product L ||w_y - w_j|| is rounded up, so it is
    0 only where a factor is (then the margin never moves: radius +inf if it is positive).
    Sound mode (gap_slack given): the gap is reduced by the logits' rounding (`gap_slack`, per
    sample) and by ||w_y - w_j|| ||forward error|| (forward_norm), and the norms are upper
    bounds (`rounding.norm_upper`)."""
    xp = namespace(logits)
    diff = M.class_differences(last_weight, onehot)  # (N, K, D) w_j - w_y
    z_y = xp.sum(logits * onehot, axis=1)
    gap = z_y[:, None] - logits
    if gap_slack is not None:
        norms = norm_upper(diff, axis=2, entry_roundings=1)
        gap = gap - gap_slack[:, None] - product_upper(norms, forward_norm[:, None])
    else:
        norms = M.difference_norms(diff)
    denom = product_upper(norms, lipschitz[:, None])
    unbounded = xp.full_like(gap, xp.inf)
    ratio = below(gap / xp.where(denom == 0, xp.ones_like(denom), denom) * (1 - 2.0 ** -48))
    ratio = xp.where(denom == 0, unbounded, ratio)  # the margin never moves
    ratio = xp.where(gap > 0, ratio, xp.zeros_like(gap))  # wrong or tied; also -inf over inf
    ratio = xp.where(onehot > 0, unbounded, ratio)
    radius = xp.min(ratio, axis=1)
    return xp.where(radius > 0, radius, xp.zeros_like(radius))  # a NaN (overflowed weights) gives 0


def certify_bounds(bounds, last_weight, last_bias, onehot, eps, mode, cap_at_eps):
    """(certified, radius) per sample from one `network_bounds` result: the ball-and-box
    certificate at eps (`bcp_worst_logits_upper`, with `margin_slack` in sound mode) and the
    certified radius (GloRo's margin form; capped at eps for a local bound, which holds on
    the eps-ball only; eps itself where the ball-and-box certificate holds)."""
    xp = namespace(last_weight)
    radius = support_radius(bounds)
    worst = M.bcp_worst_logits_upper(bounds.logits, last_weight, onehot, radius, bounds.penultimate,
                                     bounds.lower, bounds.upper)
    sound = mode == "sound"
    slack = margin_slack(bounds, last_weight, last_bias) if sound else 0.0
    cert = M.certified(worst, bounds.logits, onehot, slack)
    forward_norm = forward_error_norm(bounds) if sound else None
    gap_slack = logit_slack(bounds, last_weight, last_bias) if sound else None
    r = gloro_radius(bounds.logits, last_weight, onehot, bounds.lipschitz, gap_slack, forward_norm)
    if cap_at_eps:
        r = xp.minimum(r, xp.full_like(r, float(eps)))
    if eps > 0:
        r = xp.where(cert, xp.maximum(r, xp.full_like(r, float(eps))), r)
    return cert, r


@dataclass(frozen=True)
class GlobalNorms:
    """What every batch and shard of a run shares, computed once up front from the seed (never
    warm-started from batch to batch, so no batch depends on another): fast mode's global
    power-iteration vectors (each batch takes the norms at them), sound mode's certified
    global norms."""
    vectors: dict = None
    sound: list = None


def global_norms_once(model, mode, n_iters, seed, gram_limit=GRAM_LIMIT):
    """GlobalNorms of a run: fast mode, n_iters power-iteration steps from starts drawn from
    [seed, GLOBAL]; sound mode, `sound_global_norms` (its rng from the same stream)."""
    if mode == "sound":
        return GlobalNorms(sound=sound_global_norms(model, global_rng(seed), gram_limit))
    _, vectors = global_norms(model, "fast", n_iters, global_rng(seed), {}, False)
    return GlobalNorms(vectors=vectors)


def run_seed_of(seed, rng):
    """The seed of a run: `seed`, or one drawn from `rng` (callers that pass a Generator)."""
    if seed is not None:
        return check_seed(seed)
    if rng is None:
        raise InputError("certify and bound need seed (or rng, a numpy Generator) for the random starts")
    return seed_from(rng)


def _norms_of(model, mode, n_iters, seed, norms, sound_norms):
    if norms is not None:
        return norms
    if mode == "sound" and sound_norms is not None:
        return GlobalNorms(sound=sound_norms)
    return global_norms_once(model, mode, n_iters, seed)


def _bounds(model, x, eps, bound, mode, n_iters, streams, norms, threads):
    """network_bounds of one batch with the run's global norms (global_iters=0: the norms at
    the given vectors) and, for the local bound, each sample's own start vectors."""
    return network_bounds(model, x, eps, bound, mode, n_iters, streams, None, norms.vectors,
                          sound_norms=norms.sound, threads=threads, global_iters=0)


def _certify_batch(model, x, labels, eps, mode, n_iters, streams, norms, threads):
    weight, bias = model.layers[-1].params["weight"].value, model.layers[-1].params["bias"].value
    onehot = M.one_hot(labels, model.n_classes, x.dtype)
    local = _bounds(model, x, eps, "local", mode, n_iters, streams, norms, threads)
    glob = _bounds(model, x, eps, "global", mode, n_iters, None, norms, threads)  # draws nothing
    out = {}
    for name, b in (("local", local), ("global", glob)):
        cert, radius = certify_bounds(b, weight, bias, onehot, eps, mode, cap_at_eps=name == "local")
        out[name] = (to_host(b.lipschitz), to_host(cert), to_host(radius))
    preds = to_host(M.predictions(local.logits))
    fractions = [to_host(a.constant_fraction) for a in local.activations]
    return out, preds, fractions


def bounds_per_sample(model, images, labels, eps, mode=CertifyConfig.mode, n_iters=CertifyConfig.n_iters, rng=None,
                      batch_size=CertifyConfig.batch_size, progress=None, sound_norms=None, threads=None, seed=None,
                      first_index=0, norms=None):
    """Per sample, a dict: index, label, prediction, global and local Lipschitz bound of
    x -> penultimate on the eps-ball, and the fraction of constant neurons per activation
    layer. Random starts come from (seed, index) (lipref.seeds; seed drawn from rng when
    not given), the global norms from `norms` (GlobalNorms; computed once here when None,
    or from sound_norms), so no sample's draws depend on its batch (see `certify`).
    first_index: the index in the whole dataset of images[0] (a shard's offset). threads:
    for network_bounds."""
    params = next(iter(model.parameters().values())).value
    xp = namespace(params)
    seed = run_seed_of(seed, rng)
    norms = _norms_of(model, mode, n_iters, seed, norms, sound_norms)
    samples = []
    for s, e, x, _ in batches(images, labels, batch_size, xp, params.dtype):
        streams = sample_streams(seed, first_index + s, first_index + e, BOUNDS)
        b = _bounds(model, x, eps, "local", mode, n_iters, streams, norms, threads)
        preds, local = to_host(M.predictions(b.logits)), to_host(b.lipschitz)
        glob = float(to_host(b.global_lipschitz))
        fractions = [to_host(a.constant_fraction) for a in b.activations]
        for i in range(e - s):
            samples.append({"index": first_index + s + i, "label": int(labels[s + i]), "prediction": int(preds[i]),
                            "global": glob, "local": float(local[i]),
                            "constant_fraction": [float(f[i]) for f in fractions]})
        if progress is not None:
            progress(e - s)
    return samples


def certify(model, images, labels, eps, mode=CertifyConfig.mode, n_iters=CertifyConfig.n_iters, rng=None,
            batch_size=CertifyConfig.batch_size, pgd_steps=0, pgd_restarts=CertifyConfig.pgd_restarts, domain=None,
            progress=None, sound_norms=None, threads=None, seed=None, first_index=0, norms=None):
    """Certify host arrays images (N, C, H, W) and labels (N,) at radius eps.

    mode: "fast" (power iteration, n_iters steps from random starts) or "sound" (upper
    bounds; the model must be float64). Every random draw comes from (seed, sample index)
    (lipref.seeds; seed drawn from rng when not given), the global norms from `norms`
    (GlobalNorms, computed once here when None, or sound mode's sound_norms), so no sample's
    draws depend on its batch: shards of whole batches give the same numbers bit for bit
    (first_index: the index in the whole dataset of images[0]), other batch sizes the same
    to the rounding of the kernels' sums (which may pick their order by block size).
    pgd_steps > 0 also runs l2 PGD (step eps/4, random start, pgd_restarts restarts) inside
    the ball and the data domain `domain` ((lo, hi), which must hold the data, or None:
    unbounded); a certified sample that PGD breaks at a point within eps (measured in
    float64) is a soundness violation. progress(n_done) is called after each batch.
    threads: for network_bounds and PGD (None: the backend's default)."""
    if not 0 <= eps < float("inf"):
        raise InputError(f"eps must be finite and >= 0, got {eps}")
    seed = run_seed_of(seed, rng)
    if int(labels.shape[0]) == 0:
        raise InputError("nothing to certify: the dataset has no examples")
    params = next(iter(model.parameters().values())).value
    xp = namespace(params)
    start = time.perf_counter()
    parts = {k: [] for k in ("lg", "cg", "rg", "ll", "cl", "rl", "pred", "frac", "broken")}
    norms = _norms_of(model, mode, n_iters, seed, norms, sound_norms)
    for s, e, x, y in batches(images, labels, batch_size, xp, params.dtype):
        first, last = first_index + s, first_index + e
        out, preds, fractions = _certify_batch(model, x, y, eps, mode, n_iters, sample_streams(seed, first, last, BOUNDS),
                                               norms, threads)
        for key, (lip, cert, rad) in (("g", out["global"]), ("l", out["local"])):
            parts["l" + key].append(lip)
            parts["c" + key].append(cert)
            parts["r" + key].append(rad)
        parts["pred"].append(preds)
        parts["frac"].append(fractions)
        if pgd_steps > 0:
            attack = pgd_l2(model, x, y, eps, sample_streams(seed, first, last, PGD), pgd_steps, None, pgd_restarts,
                            domain, threads)
            parts["broken"].append(to_host(attack.success) & _within(to_host(attack.adversarial), images[s:e], eps))
        if progress is not None:
            progress(e - s)
    return _assemble(parts, labels, eps, mode, n_iters, pgd_steps, time.perf_counter() - start)


def _within(points, centres, eps):
    """Which points lie in the closed eps-ball of their centre, measured in float64."""
    diff = host.asarray(points, dtype=host.float64) - host.asarray(centres, dtype=host.float64)
    return host.sqrt(host.sum(diff.reshape(diff.shape[0], -1) ** 2, axis=1)) <= eps


def _assemble(parts, labels, eps, mode, n_iters, pgd_steps, seconds):
    cat = host.concatenate
    preds = cat(parts["pred"])
    n_layers = len(parts["frac"][0])
    fractions = host.stack([cat([f[i] for f in parts["frac"]]) for i in range(n_layers)], axis=1) \
        if n_layers else host.zeros((preds.shape[0], 0))
    result = Certification(
        eps=float(eps), mode=mode, n_iters=n_iters, labels=labels, predictions=preds, correct=preds == labels,
        global_bound=cat(parts["lg"]), local_bound=cat(parts["ll"]),
        certified_global=cat(parts["cg"]), certified_local=cat(parts["cl"]),
        radius_global=cat(parts["rg"]), radius_local=cat(parts["rl"]),
        constant_fraction=fractions, pgd_steps=pgd_steps, seconds=seconds)
    if pgd_steps > 0:
        result.pgd_broken = cat(parts["broken"]) & result.correct
    result.violations = _violations(result)
    return result


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
    """One Certification from the `certification_arrays` of consecutive shards, in sample
    order; the same arrays, value for value, as one run over all samples."""
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
