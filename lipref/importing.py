"""Any model file a user may hand lipref: its own .npz, a PyTorch checkpoint (.pth, .pt) or
an ONNX model (.onnx), the last two imported in memory (torch_import.py, onnx_import/)
with the architecture and input shape found from the file. So auditing a published model
is one command: `lipref certify MODEL.pth ...`. Every reader keeps the precision of the
file's parameters (float32, or float64; lipref.precision)."""
from pathlib import Path

from .backend import to_host
from .models import load_model, load_parameters_into, model_from_document
from .onnx_import import import_onnx_model
from .torch_import import import_torch_checkpoint

TORCH_SUFFIXES = (".pth", ".pt")
ONNX_SUFFIXES = (".onnx",)


def load_any_model(path, xp, dtype=None):
    """The model in `path` on backend xp with parameters of `dtype`, None: the file's precision
    (see the module docstring); `model.precision` and `model.rounded` as `models.load_parameters_into`
    sets them."""
    suffix = Path(path).suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return on_backend(import_torch_checkpoint(path, "auto", None, None, "auto"), xp, dtype, path)
    if suffix in ONNX_SUFFIXES:
        return on_backend(import_onnx_model(path), xp, dtype, path)
    return load_model(path, xp, dtype)


def on_backend(model, xp, dtype, path):
    """A copy of `model` (its layer specs and parameter values, checked as a file's are) on
    backend xp with parameters of `dtype` (None: the model's precision), and its metadata;
    `rounded` names the parameters the cast changed."""
    copy = model_from_document(str(path), {"layers": model.spec()})
    arrays = {name: to_host(v.value) for name, v in model.parameters().items()}
    load_parameters_into(copy, str(path), arrays, xp, dtype)
    copy.metadata = dict(getattr(model, "metadata", {}))
    copy.extra_arrays = {}
    return copy
