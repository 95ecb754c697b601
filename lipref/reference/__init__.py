"""Independent reference implementations used to check lipref (not used by lipref's engine).

`torch_reference` re-implements the forward pass, the global and local Lipschitz bounds, the
masks and the worst-case logits in PyTorch, from the paper's definitions, with torch autograd
for the gradients. It needs torch (`pip install 'lipref[torch]'`), so this package imports
nothing at import time; import `lipref.reference.torch_reference` explicitly.
"""
