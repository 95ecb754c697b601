"""Fast paths beside the plain definitions (see registry.py): importing this package
registers every kernel. Kernel modules work on raw arrays and never import
lipref.primitives or lipref.bounds, so the plain core has no import cycle."""
from . import conv, conv_grads, conv_grid, dense, norms  # noqa: F401 (importing a kernel module registers it)  # noqa: F401
from .registry import enabled, pick, reference_only, reference_only_if, register, registered  # noqa: F401
