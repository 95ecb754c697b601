"""Fast paths beside the plain definitions (see registry.py): importing this package
registers every kernel. Kernel modules work on raw arrays and never import
lipref.primitives or lipref.bounds, so the plain core has no import cycle.

The registry tries a name's kernels in registration order, so the order of the imports
matters: winograd's kernels (float32, 3x3 stride 1) are registered before conv's and
conv_grads', which apply to every conv. winograd.py imports neither of those modules."""
from . import winograd  # noqa: F401, I001 (first: see above)
from . import ball_box, conv, conv_grads, conv_grid, dense, norms  # noqa: F401 (importing a kernel module registers it)
from .registry import enabled, pick, reference_only, reference_only_if, register, registered  # noqa: F401
