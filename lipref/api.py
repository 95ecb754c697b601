"""lipref's Python API (docs/api.md): load a model, certify it, bound it, attack it, train one.

The CLI runs the same code (lipref/commands/certify.py): a run's inputs are checked and
prepared once (`prepare`: the compute dtype from the model and the data, the model cast to
it, the data's fit to the model, PGD's domain, the seed), then computed (`certify_prepared`,
`bounds_prepared`, `attack_prepared`). So `certify(...).summary()` is the JSON object of
`lipref certify --json` without what only a command line has (the keys "model" and "data",
the file and spec it was given, and "provenance"), and `certify(...).samples()` is its
`--samples` file; `bound(...)` and `attack(...)` are `lipref bound` and `lipref attack` alike.
The functions are named like the commands; the modules they call have other names
(lipref.certification, lipref.bounds, lipref.pgd, lipref.training), so `import lipref.X`
always reaches a module.
"""
import warnings
from dataclasses import dataclass, fields, replace

from .pgd import AttackConfig
from .backend import float_dtype, get_backend, host, to_host
from .bounds import BoundOptions, GlobalNorms, global_norms, network_bounds
from .bounds.certificate import predictions
from .bounds.layer_norms import model_dtype
from .certification import Certification, CertifyConfig
from .config import check_settings
from .data import Dataset, batches, dataset_from_arrays, load_data
from .data.registry import EVALUATION_SPLIT, TRAINING_SPLIT, with_split
from .errors import InputError
from .importing import on_backend
from .inputs import check_fits, compute_dtype, load_model_file, resolve_domain, rounding_note, run_seed
from .kernels import reference_only_if
from .torch_import import from_torch_module  # imports torch only when called
from .training import TrainConfig

# the modules whose functions the API calls, looked up when called (a test that replaces one
# sees the API call it)
from . import certification as _certification  # noqa: E402
from . import pgd as _attacks  # noqa: E402
from . import training as _training  # noqa: E402

__all__ = ["load", "from_torch", "certify", "bound", "attack", "train", "Certification", "PerSampleBounds",
           "AttackOutcome", "CertifyConfig", "TrainConfig", "AttackConfig", "BoundOptions", "GlobalNorms",
           "global_norms", "network_bounds", "RoundingWarning"]


class RoundingWarning(UserWarning):
    """dtype="float32" rounded a float64 model's parameters: the rounded model is what the run
    certifies (the CLI says the same on stderr)."""


# ------------------------------------------------------------------------------- models

def load(path, dtype=None, backend="numpy"):
    """The model in `path`: a lipref .npz, a torch checkpoint (.pth, .pt) or an ONNX model
    (.onnx), imported in memory as `lipref certify MODEL` imports it (lipref.importing), on
    `backend` ("numpy" or "cupy"), its parameters in `dtype` ("float32" or "float64"; None:
    the file's precision, exactly; `certify` then computes in the dtype the CLI would)."""
    return load_model_file(path, backend, dtype)


def from_torch(module, input_shape):
    """A lipref model computing what the torch `nn.Sequential` `module` computes on inputs of
    `input_shape` ((C, H, W) or (D,)), its parameters exactly the module's (float32, or float64
    after module.double()); lipref.torch_import.from_torch_module says which modules it takes."""
    return from_torch_module(module, input_shape)


# --------------------------------------------------------------------------- a run's inputs

@dataclass(frozen=True)
class Prepared:
    """A run's inputs once checked: the model in the compute dtype on its backend
    (`model.rounded` names the parameters that cast rounded), the data (a Dataset of host
    arrays that fit the model), the dtype's name, the seed and PGD's domain ((lo, hi) or None)."""
    model: object
    dataset: object
    dtype: str
    seed: int
    domain: tuple

    @property
    def model_rounded(self):
        return bool(getattr(self.model, "rounded", ()))

    def rounding_note(self):
        """None, or the line saying that the cast rounded the model (inputs.rounding_note)."""
        return rounding_note(self.model, self.dtype)


def domain_text(domain):
    """A domain as CertifyConfig.domain spells it: "auto", "none" or "LO,HI" as given; (lo, hi)
    as "LO,HI" (repr: the same floats), None as "none" (unbounded)."""
    if domain is None:
        return "none"
    if isinstance(domain, str):
        return domain
    lo, hi = domain
    return f"{float(lo)!r},{float(hi)!r}"


def prepare(model, dataset, mode="fast", dtype="auto", domain="auto", seed=None, backend=None, names=(None, None)):
    """The run's `Prepared` inputs: the compute dtype for `mode` and `dtype` from the data and
    the model (inputs.compute_dtype: fast "auto" is float32 only where it holds both exactly),
    `model` cast to it on `backend` (None: the model's own), `dataset` checked to fit the
    model, PGD's `domain` (`domain_text`) resolved against the data and the model's input
    range (inputs.resolve_domain), the seed (inputs.run_seed: sound mode without one draws
    it from OS entropy). names: (the model's, the data's) in error messages."""
    model_name, data_name = names
    compute = compute_dtype(mode, dtype, dataset, model)
    xp = model_dtype(model)[0] if backend is None else get_backend(backend)
    cast = on_backend(model, xp, float_dtype(xp, compute), model_name or "the model")
    where = data_name or dataset.source
    dataset = check_fits(cast, dataset, where)
    resolved = resolve_domain(domain_text(domain), dataset, cast, where)
    return Prepared(cast, dataset, compute, run_seed(mode, seed), resolved)


def _given(images, labels):
    """The arrays a caller gave, checked as a data .npz is (data.dataset_from_arrays)."""
    return dataset_from_arrays(to_host(images), to_host(labels), "arrays")


def _config(cls, options, function, allowed=None):
    """cls(**options), every value checked (config.check_settings); TypeError names an option
    that `function` does not take (`allowed`: the fields it takes, default all)."""
    allowed = allowed or [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{function}() got unknown options {', '.join(unknown)}; it takes {', '.join(allowed)}")
    if "domain" in options:
        options = dict(options, domain=domain_text(options["domain"]))
    return check_settings(cls(**options))


def _said(run):
    """`run`, after a RoundingWarning where its dtype rounded the model."""
    note = run.rounding_note()
    if note is not None:
        warnings.warn(note, RoundingWarning, stacklevel=3)
    return run


# --------------------------------------------------------------------------------- certify

def certify_prepared(run, eps, config, *, norms=None, progress=None, threads=None, reference=False):
    """lipref.certification.certify on a `Prepared` run (config: a CertifyConfig; norms: the run's
    GlobalNorms, computed from config and the seed when None; reference: plain definitions
    only), its Certification carrying the run's seed, dtype, model_rounded, reference, domain."""
    data = run.dataset
    with reference_only_if(reference):
        result = _certification.certify(run.model, data.images, data.labels, eps, config, seed=run.seed, norms=norms,
                                        domain=run.domain, progress=progress, threads=threads)
    result.context = certify_context(run, reference)
    return result


def certify_context(run, reference):
    """What a Certification's summary() adds from the run (`lipref certify --json`'s keys)."""
    return {"seed": run.seed, "dtype": run.dtype, "model_rounded": run.model_rounded, "reference": bool(reference),
            "domain": None if run.domain is None else list(run.domain)}


def certify(model, images, labels, eps, mode="fast", seed=None, *, reference=False, threads=None, progress=None,
            norms=None, **options):
    """Certify `model` on host arrays `images` (N, C, H, W) or (N, D) and integer `labels` (N,)
    at l2 radius `eps`, as `lipref certify` does: a Certification (summary(), samples()).

    mode: "fast" (power iteration: estimates, the paper's evaluation) or "sound" (upper
    bounds, float64; docs/soundness.md). seed: of every random draw (None: 0 in fast mode,
    fresh OS entropy in sound mode; summary()["seed"] says which). options: the other
    CertifyConfig fields, with its defaults (n_iters=100, pgd_steps=100, pgd_restarts=1,
    batch_size=100, domain="auto", dtype="auto", gram_limit); domain may also be (lo, hi)
    or None (unbounded). reference: run on the plain definitions alone. progress(n_done)
    after each batch; norms: the run's GlobalNorms, reused (CertifyConfig.global_norms)."""
    config = _config(CertifyConfig, dict(options, mode=mode), "certify")
    run = _said(prepare(model, _given(images, labels), config.mode, config.dtype, config.domain, seed))
    return certify_prepared(run, eps, config, norms=norms, progress=progress, threads=threads, reference=reference)


# ---------------------------------------------------------------------------------- bounds

@dataclass
class PerSampleBounds:
    """Per-sample Lipschitz bounds (`lipref bound`): `rows`, one dict per sample (index,
    label, prediction, global, local, constant_fraction), and the run they came from."""
    eps: float
    mode: str
    n_iters: int
    seed: int
    dtype: str
    model_rounded: bool
    reference: bool
    rows: list

    def samples(self):
        """The rows: `lipref bound --json`'s "samples"."""
        return self.rows

    def summary(self):
        """`lipref bound --json` without "model", "data" and "provenance"."""
        return {"eps": self.eps, "mode": self.mode, "iters": self.n_iters, "seed": self.seed, "dtype": self.dtype,
                "model_rounded": self.model_rounded, "reference": self.reference, "samples": self.rows}


def bounds_prepared(run, eps, config, *, norms=None, progress=None, threads=None, reference=False):
    """lipref.certification.bounds_per_sample on a `Prepared` run, as a PerSampleBounds."""
    data = run.dataset
    with reference_only_if(reference):
        rows = _certification.bounds_per_sample(run.model, data.images, data.labels, eps, config, seed=run.seed,
                                                norms=norms, progress=progress, threads=threads)
    return bounds_of(run, eps, config, reference, rows)


def bounds_of(run, eps, config, reference, rows):
    """The PerSampleBounds of `rows` computed for `run` (in one process or in shards)."""
    return PerSampleBounds(eps, config.mode, config.n_iters, run.seed, run.dtype, run.model_rounded, bool(reference),
                           rows)


BOUND_OPTIONS = ("n_iters", "batch_size", "dtype", "domain", "gram_limit")


def bound(model, images, labels, eps, mode="fast", seed=None, *, reference=False, threads=None, progress=None,
           norms=None, **options):
    """The global and local Lipschitz bounds of `model` per sample on the l2 ball of radius
    `eps`, and its fraction of constant neurons per activation layer, as `lipref bound` does:
    a PerSampleBounds. Arguments as `certify`'s, without PGD's (options: n_iters, batch_size,
    dtype, domain, gram_limit; the domain is only checked against the data)."""
    config = _config(CertifyConfig, dict(options, mode=mode), "bounds", ("mode",) + BOUND_OPTIONS)
    run = _said(prepare(model, _given(images, labels), config.mode, config.dtype, config.domain, seed))
    return bounds_prepared(run, eps, config, norms=norms, progress=progress, threads=threads, reference=reference)


# ---------------------------------------------------------------------------------- attack

@dataclass
class AttackOutcome:
    """An l2 PGD attack on every sample (`lipref attack`): per sample (host arrays) whether the
    model was right on the clean input (`correct`), whether PGD changed a right prediction
    inside the ball (`broken`), and the point it found (`adversarial`, else the input)."""
    eps: float
    steps: int
    restarts: int
    seed: int
    dtype: str
    model_rounded: bool
    domain: tuple
    correct: object
    broken: object
    adversarial: object

    def summary(self):
        """`lipref attack --json` without "model", "data" and "provenance"."""
        n, right, broken = int(self.correct.shape[0]), int(self.correct.sum()), int(self.broken.sum())
        return {"eps": self.eps, "steps": self.steps, "restarts": self.restarts, "n": n, "seed": self.seed,
                "dtype": self.dtype, "model_rounded": self.model_rounded,
                "domain": None if self.domain is None else list(self.domain),
                "clean_accuracy": right / n, "pgd_accuracy": (right - broken) / n}


def attack_prepared(run, eps, pgd=AttackConfig(), batch_size=CertifyConfig.batch_size, threads=None):
    """l2 PGD (lipref.pgd.pgd_l2, `pgd`'s steps, step size and restarts) on a `Prepared`
    run in batches of `batch_size`, every start drawn from one generator seeded with the run's
    seed, in batch order (as `lipref attack` always has): an AttackOutcome."""
    xp, dtype = model_dtype(run.model)
    rng = host.random.default_rng(run.seed)
    correct, broken, found = [], [], []
    for _, _, x, y in batches(run.dataset.images, run.dataset.labels, batch_size, xp, dtype):
        right = to_host(predictions(run.model(x, record=False)) == y)
        result = _attacks.pgd_l2(run.model, x, y, eps, rng, pgd.steps, pgd.step_size, pgd.restarts, run.domain,
                                 threads=threads)
        correct.append(right)
        broken.append(to_host(result.success) & right)
        found.append(to_host(result.adversarial))
    joined = (host.concatenate(parts) for parts in (correct, broken, found))
    return AttackOutcome(eps, pgd.steps, pgd.restarts, run.seed, run.dtype, run.model_rounded, run.domain, *joined)


def attack(model, images, labels, eps, steps=AttackConfig.steps, step_size=None, restarts=AttackConfig.restarts,
           seed=None, *, batch_size=CertifyConfig.batch_size, dtype="auto", domain="auto", threads=None):
    """Empirical robust accuracy of `model` under l2 PGD at radius `eps` (step_size: default
    eps/4; random starts from `seed`, default 0), as `lipref attack` does: an AttackOutcome.
    dtype and domain as `certify`'s (fast mode); PGD stays inside the ball and the domain."""
    pgd = _config(AttackConfig, {"steps": steps, "step_size": step_size, "restarts": restarts}, "attack")
    config = _config(CertifyConfig, {"batch_size": batch_size, "dtype": dtype, "domain": domain}, "attack")
    run = _said(prepare(model, _given(images, labels), "fast", config.dtype, config.domain, seed))
    return attack_prepared(run, eps, pgd, config.batch_size, threads)


# ----------------------------------------------------------------------------------- train

def _training_set(data, data_dir, split, limit=None):
    """A Dataset as given, or the one a spec names (its `split` when it names none); its first
    `limit` examples when a limit is given."""
    if isinstance(data, Dataset):
        return data if limit is None else replace(data, images=data.images[:limit], labels=data.labels[:limit])
    if isinstance(data, str):
        return load_data(with_split(data, split), data_dir, limit)
    raise TypeError(f"training and evaluation data are a spec (str) or a lipref.data.Dataset, got "
                    f"{type(data).__name__}")


def train(config, train_data, eval_data, out_dir, *, resume=False, allow_overlap=False, progress=None,
          threads=None, reference=False, data_dir=None, limit=None):
    """Train (or with resume=True continue) the run `config` (a TrainConfig) in the folder
    `out_dir`, as `lipref train` does; returns the per-epoch history (a list of dicts).

    train_data: a Dataset or a spec ("embedded", "fashion-mnist:train", a .npz path; its
    training split when none is named). eval_data: held-out data that choose best.npz (a
    Dataset, or a spec, its test split when none is named, read up to config.eval_limit
    examples as the CLI reads them), or None: the training dataset's test split. Evaluation
    data that overlap the training data are refused unless allow_overlap. data_dir: where
    specs are read (`--data-dir`); limit: train on the first `limit` examples (`--limit`).
    progress(event) is called with each step's and epoch's event dict."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig, got {type(config).__name__}")
    check_settings(config)
    train_set = _training_set(train_data, data_dir, TRAINING_SPLIT, limit)
    if eval_data is None and train_set.split in ("file", "given"):
        raise InputError(f"{train_set.source}: arrays or a file have no test split to evaluate on; give "
                         "eval_data with held-out data (it chooses best.npz)")
    eval_spec = f"{train_set.name}:{EVALUATION_SPLIT}" if eval_data is None else eval_data
    eval_set = _training_set(eval_spec, data_dir, EVALUATION_SPLIT, config.eval_limit)
    specs = tuple(d if isinstance(d, str) else None for d in (train_data, eval_data))
    with reference_only_if(reference):
        return _training.train(config, train_set, eval_set, out_dir, resume, progress, threads,
                               allow_overlap=allow_overlap, data_specs=specs)
