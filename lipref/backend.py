"""Arrays and backends: the only module of lipref that imports numpy or cupy.

The engine's math never names a library: it asks the arrays it is given for their
namespace (`namespace(x, ...)`, array-api-compat's `array_namespace`) and uses only
standard array-API functions, so the same code runs on NumPy, CuPy and array-api-strict.
This module chooses a backend by name, moves arrays between host and backend, gives a
clear error when CuPy or a GPU is missing, and runs independent blocks of samples in
threads on the host (`sample_blocks`, `map_in_threads`), and draws every random number from
streams keyed by (seed, sample index, purpose) (`sample_streams`, `global_rng`).
"""
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as host  # host-side I/O (data files, model files) uses this, nothing else
import threadpoolctl
from array_api_compat import array_namespace

from .errors import InputError, UserError

BACKENDS = ("numpy", "cupy")


class BackendError(UserError, RuntimeError):
    """A requested backend cannot be used on this machine."""


_NAMESPACE_OF_TYPE = {}  # array type -> array_namespace's answer for arrays of that type alone


def namespace(*arrays):
    """The array-API namespace shared by `arrays` (Python scalars and None are ignored).

    array_namespace's answer depends on the arrays' types only, so it is kept per type
    when all arrays have one: the engine asks hundreds of times per block of samples, and
    the threads that bound blocks in parallel queue for the interpreter lock while one
    asks (see BENCHMARKS.md)."""
    if len(arrays) == 1:  # the common case, first
        xp = _NAMESPACE_OF_TYPE.get(type(arrays[0]))
        if xp is not None:
            return xp
    # exact Python scalars only: NumPy scalars (np.float64 subclasses float) are arrays here
    arrays = [a for a in arrays if a is not None and type(a) not in (int, float, bool)]
    kind = type(arrays[0]) if arrays else None
    if kind is None or any(type(a) is not kind for a in arrays):
        return array_namespace(*arrays)
    xp = _NAMESPACE_OF_TYPE.get(kind)
    if xp is None:
        xp = _NAMESPACE_OF_TYPE[kind] = array_namespace(*arrays)
    return xp


def cupy_unavailable_reason():
    """None if CuPy imports and sees a working CUDA device, else a sentence saying why not."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return "CuPy imports but finds no CUDA device"
        cupy.zeros(1).sum().item()  # a device that is listed but cannot run kernels
    except Exception as exc:
        return f"CuPy imports but no working CUDA device ({type(exc).__name__}: {exc})"
    return None


def get_backend(name):
    """The array namespace for backend `name` ('numpy' or 'cupy')."""
    if name == "numpy":
        import array_api_compat.numpy as xp
        return xp
    if name == "cupy":
        reason = cupy_unavailable_reason()
        if reason is not None:
            raise BackendError(f"backend 'cupy' cannot be used: {reason}; use --backend numpy")
        import array_api_compat.cupy as xp
        return xp
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def float_dtype(xp, name):
    """`xp`'s float dtype named 'float32' or 'float64'."""
    if name not in ("float32", "float64"):
        raise InputError(f"dtype must be 'float32' or 'float64', got {name!r}")
    return getattr(xp, name)


def to_backend(a, xp, dtype=None):
    """Copy host array (or nested list) `a` to backend `xp`, optionally casting to `dtype`."""
    arr = xp.asarray(a)
    if dtype is not None and arr.dtype != dtype:
        arr = xp.astype(arr, dtype)
    return arr


def to_host(a):
    """A host NumPy copy of backend array `a` (NumPy, CuPy or array-api-strict)."""
    if isinstance(a, host.ndarray):
        return a
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    try:
        return host.asarray(a)
    except Exception:
        return host.from_dlpack(a)


def cholesky_or_none(xp, a):
    """The lower Cholesky factor of the symmetric matrix `a`, or None where floating-point
    Cholesky breaks down (a non-positive pivot: `a` is not numerically positive definite).

    A certificate rests on this answer, and the failure signal differs by library, which
    is why it lives here: NumPy and array-api-strict raise numpy's LinAlgError; CuPy by
    default returns an invalid factor without a word (its linalg errstate 'ignore'), so it
    runs under cupyx.errstate(linalg='raise'), which checks cuSOLVER's devInfo."""
    try:
        if "cupy" in xp.__name__:
            import cupyx
            with cupyx.errstate(linalg="raise"):
                factor = xp.linalg.cholesky(a)
        else:
            factor = xp.linalg.cholesky(a)
    except host.linalg.LinAlgError:
        return None
    if not bool(xp.all(xp.isfinite(factor))):
        return None
    return factor


def eigh(a, values_only):
    """Eigen-decomposition of a batch of small symmetric matrices (..., k, k), ascending.

    Uses the backend's linalg extension. A namespace without one falls back to host
    LAPACK: these matrices are small (Lanczos tridiagonals, Gram matrices), so the copy
    costs little, and there is no array-API way to diagonalise without linalg."""
    xp = namespace(a)
    if hasattr(xp, "linalg"):
        if values_only:
            return xp.linalg.eigvalsh(a)
        res = xp.linalg.eigh(a)
        return res.eigenvalues, res.eigenvectors
    a_host = to_host(a)
    if values_only:
        return xp.asarray(host.linalg.eigvalsh(a_host))
    w, v = host.linalg.eigh(a_host)
    return xp.asarray(w), xp.asarray(v)


def is_host_numpy(xp):
    """True when `xp` is (a wrapper of) NumPy, the backend whose arrays live on the host."""
    return "numpy" in xp.__name__ and "strict" not in xp.__name__


def host_blas():
    """(description, hint) of NumPy's BLAS, which sets lipref's CPU speed. hint is None or a
    line for the user: OpenBLAS 0.3.31 takes AMD Zen 5 for Haswell and leaves AVX-512
    unused (OpenMathLib/OpenBLAS#6029); OPENBLAS_CORETYPE=Cooperlake, set before Python
    starts, doubles float32 matmul speed there."""
    libs = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    if not libs:
        return "none found", None
    lib = libs[0]
    arch = lib.get("architecture") or ""
    text = f"{lib.get('internal_api')} {lib.get('version')} {arch}, {lib.get('num_threads')} threads".strip()
    hint = None
    if lib.get("internal_api") == "openblas" and arch.lower() in ("haswell", "zen") and _cpu_has("avx512f"):
        hint = ("this CPU has AVX-512 but OpenBLAS picked its Haswell kernels; "
                "export OPENBLAS_CORETYPE=Cooperlake before starting Python for about 2x matmul speed")
    return text, hint


def _cpu_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


# ---------------------------------------------------------------- threads over samples
#
# NumPy runs each elementwise pass and each copy on one core; only its BLAS calls use
# several. Bounds are computed per sample, so on the host lipref splits a batch into
# blocks of samples and runs the blocks in threads, each with a one-thread BLAS: every
# pass then runs on every core, and each block's arrays are small enough to stay in the
# cache between passes. NumPy releases the GIL inside its loops and BLAS calls, so the
# threads run at once. On a GPU (CuPy) or array-api-strict the batch stays whole and runs
# in the calling thread.

HOST_SAMPLE_BLOCK = 32  # samples per block on the host (blocks of 32 to 64 measured alike; 32 feeds more threads)

_worker = threading.local()  # .active is True inside map_in_threads' workers
_pools = {}  # thread count -> a ThreadPoolExecutor kept for the next call (making one costs 0.2 ms)
_controller = []  # threadpoolctl's view of the loaded BLAS, made once (0.15-1 ms each time)
_pools_lock = threading.Lock()


def _blas_controller():
    """threadpoolctl's controller of the libraries loaded now, made on first use: the conv
    kernels map blocks in threads on every call, where making one per call cost 1-3 ms."""
    with _pools_lock:
        if not _controller:
            _controller.append(threadpoolctl.ThreadpoolController())
        return _controller[0]


def _pool(threads):
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(max_workers=threads)
        return _pools[threads]


def default_threads(xp):
    """Threads for `map_in_threads` on backend `xp`: 1 off the host; on the host, the
    thread count NumPy's BLAS was given (OPENBLAS_NUM_THREADS and its kin, or the CPUs
    this process may use), so lipref uses the cores BLAS would have used."""
    if not is_host_numpy(xp):
        return 1
    counts = [lib.num_threads for lib in _blas_controller().select(user_api="blas").lib_controllers]
    if counts and counts[0]:
        return int(counts[0])
    if hasattr(os, "sched_getaffinity"):  # Linux: the CPUs this process may use
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def sample_blocks(xp, n, block):
    """Slices of a batch of n samples for `map_in_threads`: the fewest near-equal blocks of at
    most `block` samples (None: HOST_SAMPLE_BLOCK on the host, the whole batch elsewhere).
    They depend on n and block only, never on the thread count, so neither do the results
    (BLAS may round a product of 20 rows differently from two of 10)."""
    if block is None:
        block = HOST_SAMPLE_BLOCK if is_host_numpy(xp) else max(n, 1)
    if block < 1:
        raise InputError(f"sample block size must be >= 1, got {block}")
    count = max(-(-n // block), 1)
    return [slice(i * n // count, (i + 1) * n // count) for i in range(count)]


def map_in_threads(xp, fn, items, threads=None):
    """[fn(item) for item in items], in order. On host NumPy the calls run with NumPy's BLAS
    held at one thread (threadpoolctl; the setting is process-wide and restored after), in a
    pool of `threads` threads (None: `default_threads`, read before BLAS is held) when there
    is more than one item: BLAS may split a product's sum between its threads, so a product
    computed with one BLAS thread everywhere rounds the same whatever `threads` is. Called
    from inside one of those threads (nested), or on any other backend, the calls run one
    after another in the calling thread. An exception in a call is raised here."""
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    items = list(items)
    if not is_host_numpy(xp) or getattr(_worker, "active", False):
        return [fn(item) for item in items]
    threads = default_threads(xp) if threads is None else threads

    def run(item):
        _worker.active = True
        try:
            return fn(item)
        finally:
            _worker.active = False
    with _blas_controller().limit(limits=1, user_api="blas"):
        if threads == 1 or len(items) < 2:
            return [run(item) for item in items]
        return list(_pool(min(threads, len(items))).map(run, items))


# ---------------------------------------------------------------- random streams
#
# Random draws derived from (seed, sample index, purpose), never from a batch, shard or worker.
#
# `certify` and `bound` draw a power-iteration or Lanczos start and PGD's random starts for
# every sample. Each sample gets its own NumPy generator, seeded with [seed, index, purpose],
# so a sample's draws are the same whichever batch, shard or process computes it: results do
# not depend on the batch size, and a run sharded over a cluster equals a single-process run
# bit for bit. The global norms' draws (one start per layer, not per sample) come from
# [seed, STREAM_GLOBAL] and are made once per run.

# purpose tags: arbitrary distinct constants, one stream per kind of draw
STREAM_GLOBAL = 0x61_0BA1  # the global power iteration's starts, or sound mode's Gram estimates
STREAM_BOUNDS = 0x10_CA1  # each sample's local power-iteration (fast) or Lanczos (sound) starts
STREAM_PGD = 0x9_6D  # each sample's PGD starts, one per restart


def check_seed(seed):
    """The seed as an int >= 0 (NumPy's SeedSequence takes no negative entropy)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"the seed must be an integer >= 0, got {seed!r}")
    return seed


def seed_from(rng):
    """A run seed drawn from a caller's Generator (for callers that pass rng, not seed)."""
    return int(rng.integers(0, 2 ** 63))


def global_rng(seed):
    """The generator of a run's global, once-per-run draws."""
    return host.random.default_rng([check_seed(seed), STREAM_GLOBAL])


class SampleStreams:
    """A stand-in for a NumPy Generator over a batch: a draw of shape (n, ...) takes row k
    from sample `indices[k]`'s own generator, so each sample's draws are the same in any
    batch. Only the draws the engine makes are offered: standard_normal and uniform."""

    def __init__(self, seed, indices, purpose):
        seed = check_seed(seed)
        self.generators = [host.random.default_rng([seed, int(i), purpose]) for i in indices]

    def _rows(self, n):
        if n != len(self.generators):  # a draw not per sample (e.g. a global start) must not come from here
            raise ValueError(f"per-sample streams of {len(self.generators)} samples asked for {n} rows")
        return self.generators

    def standard_normal(self, shape):
        shape = tuple(shape)
        rows = [g.standard_normal(shape[1:]) for g in self._rows(shape[0])]
        return host.stack(rows) if rows else host.zeros(shape)

    def uniform(self, low=0.0, high=1.0, size=None):
        n = size if isinstance(size, int) else size[0]
        rest = () if isinstance(size, int) else tuple(size[1:])
        rows = [g.uniform(low, high, rest) for g in self._rows(n)]
        return host.stack(rows) if rows else host.zeros((n,) + rest)


def sample_streams(seed, start, stop, purpose):
    """SampleStreams for the samples start .. stop - 1 of a run (indices into the whole dataset)."""
    return SampleStreams(seed, range(start, stop), purpose)


# ---------------------------------------------------------------- host memory
#
# glibc's malloc hands large freed blocks back to the OS (chunks above its mmap threshold,
# and a heap top above its trim threshold), and the next array of that size page-faults
# its memory in again. The bounds allocate thousands of arrays of 0.1-30 MB per call: for
# 4c3f at batch 256 that was 29,000 page faults and 0.3 s of system time per local bound
# (of 1.6 s). Keeping freed memory for reuse removes them (1.57 -> 1.30 s there) and left
# the peak resident memory as it was (645 MB).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory in the process for reuse instead of giving it
    back to the OS (mallopt: mmap threshold 32 MiB, its largest; trim threshold 1 GiB; top
    pad 64 MiB). Process-wide and lasting, so the CLI and the benchmarks call it, never
    the engine's functions; a library user may. Returns True if glibc took all three
    settings, False elsewhere (another C library or OS), where nothing changes."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)
