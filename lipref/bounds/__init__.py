"""Lipschitz bounds of a network over an l2 ball, global and local (the paper's walk).

The public entry points; walk.py has the algorithm, docs/soundness.md what "sound" promises."""
from .layer_norms import GlobalNorms, global_norms, sound_global_norms, start_vectors  # noqa: F401
from .walk import (  # noqa: F401
                   BOUNDS,
                   MODES,
                   ActivationBounds,
                   BoundOptions,
                   NetworkBounds,
                   network_bounds,
)
