"""Independent reference implementations used to check lipref (not used by lipref's engine).

`torch_reference` re-implements the forward pass, the global and local Lipschitz bounds and
the masks in PyTorch, from the paper's definitions, with torch autograd for the gradients;
`torch_margins` the worst-case logits and the robust losses. They need torch (`pip install
'lipref[torch]'`), so this package imports nothing at import time; import
`lipref.reference.torch_reference` explicitly.
"""
