"""lipref: certified robustness through local Lipschitz bounds (Huang et al., NeurIPS 2021)."""
__version__ = "0.1.0"
