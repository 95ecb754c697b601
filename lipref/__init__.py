"""lipref: certified robustness through local Lipschitz bounds (Huang et al., NeurIPS 2021).

The Python API (lipref/api.py; docs/api.md): `load`, `from_torch`, `certify`, `bound`,
`attack`, `train`, their results and options objects, and `network_bounds` for researchers;
`lipref.data` reads datasets. `lipref certify`, `bound` and `attack` run the same functions."""
__version__ = "0.1.0"  # first: modules imported below read it

from . import data  # noqa: E402, F401
from .api import (  # noqa: E402, F401
    AttackConfig,
    AttackOutcome,
    BoundOptions,
    Certification,
    CertifyConfig,
    GlobalNorms,
    PerSampleBounds,
    RoundingWarning,
    TrainConfig,
    attack,
    bound,
    certify,
    from_torch,
    global_norms,
    load,
    network_bounds,
    train,
)
