"""The kernel registry: fast paths beside the plain definitions, and one switch.

Every primitive and every operator the bounds use has a plain, readable definition, and
that definition is the one registered and documented (lipref/primitives/, lipref/bounds/).
A plain function that a kernel may replace is marked `@replaceable(name)`: called, it runs
the kernel registered under `name` that applies to its arguments, and its own body where
none does (or where the kernel declines by returning `NotImplemented` after a look at the
values); `fn.plain` is the body itself, for the equivalence tests. A kernel (a module of
lipref/kernels/, `@register(name, applies=...)`) takes exactly the arguments of the plain
function and returns exactly what it returns; any state it keeps between calls (a weight in
another layout, say) lives inside its module. So the plain definitions hold no dispatch
code, and no kernel's shape leaks into them.

Inside `reference_only()` (or with LIPREF_REFERENCE=1 in the environment) no kernel runs:
everything runs on the plain definitions, which is how the property suites check that the
kernels change nothing but rounding. Each kernel has an equivalence test against its plain
definition (tests/test_kernels_registry.py lists them). The first call of any replaceable
function imports every kernel module (lipref/kernels/__init__.py lists them), so a process
that never imported lipref.kernels itself runs the same kernels as one that did.

The switch is process-wide, not per thread: the bounds run blocks of samples in worker
threads, which must see the caller's choice.
"""
import functools
import importlib
import os
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

_KERNELS = {}  # name -> [Kernel], tried in registration order
_REPLACEABLE = {}  # name -> the replaceable plain function
_reference_depth = [1 if os.environ.get("LIPREF_REFERENCE", "") not in ("", "0") else 0]
_loaded = threading.Event()
_loading = threading.Lock()


@dataclass(frozen=True)
class Kernel:
    name: str  # the replaceable function it replaces ("conv2d", "norms", ...)
    fn: object
    applies: object  # applies(*args) -> bool, e.g. only on NumPy's namespace; None: always
    module: str


def register(name, applies=None):
    """Decorator: register `fn` as a kernel for the replaceable function `name`, used where
    `applies(*args)` holds."""
    def decorate(fn):
        _KERNELS.setdefault(name, []).append(Kernel(name, fn, applies, fn.__module__))
        return fn
    return decorate


def replaceable(name):
    """Decorator: mark a plain definition as one that a kernel registered under `name` may
    replace (see the module docstring). The result keeps the plain body as `.plain`."""
    def decorate(plain):
        @functools.wraps(plain)
        def run(*args, **kwargs):
            if not _reference_depth[0]:
                for kernel in _kernels_for(name):
                    if kernel.applies is None or kernel.applies(*args, **kwargs):
                        out = kernel.fn(*args, **kwargs)
                        if out is not NotImplemented:
                            return out
                        break  # the kernel looked and declined: the plain definition runs
            return plain(*args, **kwargs)
        run.plain = plain
        run.replaceable_name = name
        _REPLACEABLE[name] = run
        return run
    return decorate


def _kernels_for(name):
    if not _loaded.is_set():
        load_kernels()
    return _KERNELS.get(name, ())


def load_kernels():
    """Import every kernel module (once per process; thread-safe)."""
    with _loading:
        if not _loaded.is_set():
            importlib.import_module("lipref.kernels")
            _loaded.set()


def applying_kernel(name, *args, **kwargs):
    """The kernel a call of the replaceable `name` with these arguments would run (it may
    still decline after a look at the values), or None; always None inside
    `reference_only()`. For tests and `lipref info`: the plain code never asks."""
    if _reference_depth[0]:
        return None
    for kernel in _kernels_for(name):
        if kernel.applies is None or kernel.applies(*args, **kwargs):
            return kernel.fn
    return None


def enabled():
    """Do kernels run now (False inside `reference_only()`)?"""
    return not _reference_depth[0]


@contextmanager
def reference_only():
    """Run everything inside on the plain definitions (no kernel applies)."""
    _reference_depth[0] += 1
    try:
        yield
    finally:
        _reference_depth[0] -= 1


@contextmanager
def without(*names):
    """Run everything inside without the kernels registered under `names` (the others run):
    for paired A/B measurements of one kernel (bench/). Process-wide, like `reference_only`."""
    load_kernels()
    kept = {name: _KERNELS.pop(name, []) for name in names}
    try:
        yield
    finally:
        for name, found in kept.items():
            _KERNELS.setdefault(name, [])[:0] = found


def reference_only_if(reference):
    """`reference_only()` when `reference` is true, else a context that changes nothing (the
    --reference option of the commands and of a shard)."""
    return reference_only() if reference else nullcontext()


def registered():
    """{name: [Kernel]} of every kernel registered (every kernel module imported first)."""
    load_kernels()
    return {name: list(kernels) for name, kernels in _KERNELS.items()}


def replaceables():
    """{name: the replaceable plain function} of every one defined so far."""
    return dict(_REPLACEABLE)
