"""Any model file a user may hand lipref: its own .npz, a PyTorch checkpoint (.pth, .pt) or
an ONNX model (.onnx), the last two imported in memory (torch_import.py, onnx_import/)
with the architecture and input shape found from the file. So auditing a published model
is one command: `lipref certify MODEL.pth ...`. Every reader keeps the precision of the
file's parameters (float32, or float64; lipref.precision).

What an import folds into a layer (normalisation, BatchNorm; lipref.folding) is listed in the
model's metadata["folds"]; an elementwise fold that rounded is certified in fast mode only:
`check_sound` refuses it in sound mode, naming it."""
from pathlib import Path

from .backend import to_host
from .errors import InputError
from .folding import rounded_folds
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


def check_sound(model):
    """Refuse (InputError, one line) a model for sound mode whose import folded constants into a
    layer only with rounding: the file's model is then not one lipref can compute exactly."""
    rounded = rounded_folds(getattr(model, "metadata", {}))
    if rounded:
        where = "; ".join(f"{f.get('from')} into layer {f.get('into_layer')}" for f in rounded)
        source = model.metadata.get("imported_from", "the model")
        raise InputError(f"{source}: sound mode certifies the model as its file holds it, and folding {where} is not "
                         "exact in float64 (the fast mode certifies the correctly rounded fold; for an input "
                         "normalisation, export the model without it and certify normalised data, whose radius is "
                         "then in normalised units)")


def import_summary(model):
    """What an import's one line adds: the folds made, and the data layout an NHWC file's model reads."""
    meta = getattr(model, "metadata", {})
    folds = meta.get("folds", [])
    text = f"; folded: {', '.join(str(f.get('from')) for f in folds)}" if folds else ""
    if meta.get("input_layout") == "NHWC":
        text += ("; the file reads NHWC (N, H, W, C), the imported model (N, C, H, W): give images.transpose(0, 3, "
                 "1, 2)")
    return text


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
