"""Fast paths beside the plain definitions (see registry.py). Importing this package
registers every kernel: KERNEL_MODULES lists them all, and the first call of any
replaceable function imports it (registry.load_kernels), so no process runs without them.
Kernel modules work on raw arrays and never import lipref.primitives or lipref.bounds, so
the plain core has no import cycle.

The registry tries a name's kernels in registration order, so the order of the imports
matters: winograd's kernels (float32, 3x3 stride 1 and 4x4 stride 2) are registered before
conv's and conv_grads', which apply to every conv. winograd.py imports neither of those."""
import importlib

from .registry import (  # noqa: F401
    applying_kernel,
    enabled,
    load_kernels,
    reference_only,
    reference_only_if,
    register,
    registered,
    replaceable,
    replaceables,
    without,
)

# every kernel module, in registration order (tests/test_kernels_registry.py checks it against the folder)
KERNEL_MODULES = ("winograd", "ball_box", "conv", "conv_grads", "conv_blocks", "conv_grid", "dense", "norms",
                  "power_iteration")
for _name in KERNEL_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
