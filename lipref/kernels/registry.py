"""The kernel registry: fast paths beside the plain definitions, and one switch.

Every primitive and every operator the bounds use has a plain, readable definition, and
that definition is the one registered and documented (lipref/primitives.py, lipref/bounds/).
A kernel is a faster computation of the same function, registered here under the name of
what it replaces. At each call the dispatcher (`pick`) returns the kernel that applies to
the arguments, or None, and the caller then runs the plain definition. Inside
`reference_only()` (or with LIPREF_REFERENCE=1 in the environment) no kernel applies:
everything runs on the plain definitions, which is how the property suites check that the
kernels change nothing but rounding. Each kernel has an equivalence test against the plain
definition (tests/test_kernels_*.py).

The switch is process-wide, not per thread: the bounds run blocks of samples in worker
threads, which must see the caller's choice.
"""
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

_KERNELS = {}  # name -> [Kernel], tried in registration order
_reference_depth = [1 if os.environ.get("LIPREF_REFERENCE", "") not in ("", "0") else 0]


@dataclass(frozen=True)
class Kernel:
    name: str  # what it replaces: a primitive ("conv2d"), one of its gradients ("conv2d.vjp.x"), an operator
    fn: object
    applies: object  # applies(*args) -> bool, e.g. only on NumPy's namespace; None: always
    module: str


def register(name, applies=None):
    """Decorator: register `fn` as a kernel for `name`, used where `applies(*args)` holds."""
    def decorate(fn):
        _KERNELS.setdefault(name, []).append(Kernel(name, fn, applies, fn.__module__))
        return fn
    return decorate


def pick(name, *args):
    """The kernel registered for `name` that applies to `args`, or None (then the caller
    runs the plain definition): always None inside `reference_only()`."""
    if _reference_depth[0]:
        return None
    for kernel in _KERNELS.get(name, ()):
        if kernel.applies is None or kernel.applies(*args):
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


def reference_only_if(reference):
    """`reference_only()` when `reference` is true, else a context that changes nothing (the
    --reference option of the commands and of a shard)."""
    return reference_only() if reference else nullcontext()


def registered():
    """{name: [Kernel]} of every kernel registered so far (tests iterate over it)."""
    return {name: list(kernels) for name, kernels in _KERNELS.items()}
