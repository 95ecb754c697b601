"""Fast paths beside the plain definitions (see registry.py). Importing this package
registers every kernel: KERNEL_MODULES lists them all, and the first call of any
replaceable function imports it (registry.load_kernels), so no process runs without them.
Kernel modules work on raw arrays and never import lipref.primitives or lipref.bounds, so
the plain core has no import cycle."""
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

# every kernel module (tests/test_kernels_registry.py checks this list against the folder)
KERNEL_MODULES = ("ball_box", "conv", "conv_grads", "conv_grid", "dense", "norms", "power_iteration")
for _name in KERNEL_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
