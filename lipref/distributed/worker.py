"""What a worker does with one shard: the single-process code path on the shard's samples.

Imports nothing of Dask: a shard runs the same way in a worker process and in the calling
process (a sharded run without a cluster). Each process loads a model file once (a cache
keyed by path, the file's sha256, backend and dtype), so a worker computing many shards reads
it once; the digest is checked when the file is loaded, so a worker that reads another file
at MODEL's path (another machine, or a file changed since an earlier run on the same
cluster) refuses the shard instead of computing it from another model.
"""
import socket
import time
from dataclasses import dataclass

from ..backend import host, keep_freed_memory
from ..certification import PER_SAMPLE, CertifyConfig, bounds_per_sample, certification_arrays, certify
from ..errors import InputError, UserError
from ..inputs import load_model_file
from ..kernels import reference_only_if
from .folder import file_digest

COMMANDS = ("certify", "bound")
BOUND_ARRAYS = ("index", "label", "prediction", "global", "local", "constant_fraction")  # bound_arrays' names


@dataclass(frozen=True)
class ShardOptions:
    """Everything a shard's numbers depend on besides its samples and the global norms."""
    command: str
    eps: float
    mode: str
    n_iters: int
    batch_size: int
    seed: int
    backend: str
    dtype: str
    reference: bool = False
    pgd_steps: int = 0
    pgd_restarts: int = 1
    domain: tuple = None

    def __post_init__(self):
        if self.command not in COMMANDS:
            raise ValueError(f"command must be one of {COMMANDS}, got {self.command!r}")

    def config(self):
        """The CertifyConfig a shard computes with (the run's global norms come with the task)."""
        return CertifyConfig(mode=self.mode, n_iters=self.n_iters, pgd_steps=self.pgd_steps,
                             pgd_restarts=self.pgd_restarts, batch_size=self.batch_size)

    def result_names(self):
        """The names of the arrays a shard's result holds (what a shard file must hold)."""
        if self.command == "bound":
            return BOUND_ARRAYS
        return tuple(k for k in PER_SAMPLE if k != "pgd_broken" or self.pgd_steps > 0)


@dataclass(frozen=True)
class ShardTask:
    """One shard: samples start .. stop - 1 of the run, their host arrays, and how to compute them."""
    index: int
    start: int
    stop: int
    images: object
    labels: object
    model_path: str
    model_sha256: str  # of the file the run was planned with: a worker must load that very file
    options: ShardOptions
    norms: object  # the run's bounds.GlobalNorms, computed once
    threads: int = None  # blocks of samples in threads inside the shard; changes no number


@dataclass(frozen=True)
class ShardFailure:
    """A lipref error inside a shard (a bad value in the data or the model), sent back as a
    result rather than raised: Dask never retries it, and the caller raises it once."""
    error_type: type
    message: str

    def error(self):
        try:
            return self.error_type(self.message)
        except TypeError:  # a UserError subclass with another constructor
            return UserError(self.message)


_MODELS = {}  # (path, sha256, backend, dtype) -> model, per process
_LOADS = []  # the keys loaded, in order (how often each process read a model file)


def cached_model(path, sha256, backend, dtype):
    """The model in the file at `path`, loaded once per process, once its bytes are checked to
    have the digest `sha256` (InputError naming the path and this machine where they do not)."""
    key = (path, sha256, backend, dtype)
    if key not in _MODELS:
        found = file_digest(path)
        if found != sha256:
            raise InputError(f"the worker on {socket.gethostname()} reads another file at {path} (sha256 "
                             f"{found[:12]}..., the run's model {sha256[:12]}...): every worker must read MODEL's "
                             "very file")
        if not _LOADS:
            keep_freed_memory()  # as the CLI does in its own process (speed only)
        for replaced in [k for k in _MODELS if k[0] == path and k[1] != sha256]:  # the file changed: drop its old model
            del _MODELS[replaced]
        _MODELS[key] = load_model_file(path, backend, dtype)
        _LOADS.append(key)
    return _MODELS[key]


def model_loads():
    """The model keys this process loaded, in order (for tests and diagnostics)."""
    return list(_LOADS)


def compute_shard(task):
    """(shard index, {name: host array}, seconds) for one ShardTask, or a ShardFailure."""
    started = time.perf_counter()
    o = task.options
    try:
        model = cached_model(task.model_path, task.model_sha256, o.backend, o.dtype)
        with reference_only_if(o.reference):
            arrays = _certify_arrays(model, task) if o.command == "certify" else _bound_arrays(model, task)
    except UserError as exc:
        return ShardFailure(type(exc), " ".join(str(exc).split()))
    return task.index, arrays, time.perf_counter() - started


def _certify_arrays(model, task):
    o = task.options
    result = certify(model, task.images, task.labels, o.eps, o.config(), seed=o.seed, norms=task.norms,
                     domain=o.domain, threads=task.threads, first_index=task.start)
    return certification_arrays(result)


def _bound_arrays(model, task):
    o = task.options
    samples = bounds_per_sample(model, task.images, task.labels, o.eps, o.config(), seed=o.seed, norms=task.norms,
                                threads=task.threads, first_index=task.start)
    return bound_arrays(samples)


def bound_arrays(samples):
    """`bounds_per_sample`'s rows as arrays (float64 holds each float exactly)."""
    return {"index": host.asarray([s["index"] for s in samples], dtype=host.int64),
            "label": host.asarray([s["label"] for s in samples], dtype=host.int64),
            "prediction": host.asarray([s["prediction"] for s in samples], dtype=host.int64),
            "global": host.asarray([s["global"] for s in samples], dtype=host.float64),
            "local": host.asarray([s["local"] for s in samples], dtype=host.float64),
            "constant_fraction": host.asarray([s["constant_fraction"] for s in samples],
                                              dtype=host.float64).reshape(len(samples), -1)}


def bound_samples(arrays):
    """The rows of `bounds_per_sample` back from `bound_arrays` (of one shard or several joined)."""
    return [{"index": int(arrays["index"][i]), "label": int(arrays["label"][i]),
             "prediction": int(arrays["prediction"][i]), "global": float(arrays["global"][i]),
             "local": float(arrays["local"][i]),
             "constant_fraction": [float(c) for c in arrays["constant_fraction"][i]]}
            for i in range(int(arrays["index"].shape[0]))]
