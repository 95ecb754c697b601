"""Any model file a user may hand lipref: its own .npz, a PyTorch checkpoint (.pth, .pt) or
an ONNX model (.onnx), the last two imported in memory (torch_import.py, onnx_import.py)
with the architecture and input shape found from the file. So auditing a published model
is one command: `lipref certify MODEL.pth ...`."""
from pathlib import Path

from .backend import to_host
from .models import checked_value, load_model, model_from_document
from .onnx_import import import_onnx_model
from .torch_import import import_torch_checkpoint

TORCH_SUFFIXES = (".pth", ".pt")
ONNX_SUFFIXES = (".onnx",)


def load_any_model(path, xp, dtype):
    """The model in `path` on backend xp with parameters of `dtype` (see the module docstring)."""
    suffix = Path(path).suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return on_backend(import_torch_checkpoint(path, "auto", None, None, "auto"), xp, dtype, path)
    if suffix in ONNX_SUFFIXES:
        return on_backend(import_onnx_model(path), xp, dtype, path)
    return load_model(path, xp, dtype)


def on_backend(model, xp, dtype, path):
    """A copy of `model` (its layer specs and parameter values, checked as a file's are) on
    backend xp with parameters of `dtype`, and its metadata."""
    copy = model_from_document(str(path), {"layers": model.spec()})
    copy.load_parameters({name: checked_value(str(path), name, to_host(v.value), xp, dtype)
                          for name, v in model.parameters().items()})
    copy.metadata = dict(getattr(model, "metadata", {}))
    copy.extra_arrays = {}
    return copy
