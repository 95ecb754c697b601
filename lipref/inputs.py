"""What a run is given, read and checked before any math: the model file (lipref .npz, torch
checkpoint or ONNX), the data as given, the dtype the run computes in, PGD's domain and the
seed. The CLI calls these; a Python user can too."""
import secrets

from . import data as D
from .backend import float_dtype, get_backend, host
from .errors import InputError
from .importing import load_any_model
from .seeds import check_seed


def run_seed(mode, seed):
    """The seed of a run: the given one; in sound mode, else, fresh OS entropy, so that the
    random starts (Lanczos) cannot have been fitted by whoever made the model; 0 in fast mode."""
    if seed is not None:
        return check_seed(seed)
    if mode == "sound":
        return secrets.randbits(63)
    return 0


def resolve_domain(value, dataset):
    """PGD's domain: (lo, hi) or None. auto: [0, 1] where every value of the data lies in it
    (every named dataset), else unbounded."""
    if value == "none":
        return None
    if value == "auto":
        images = dataset.images
        inside = images.size == 0 or (float(images.min()) >= 0.0 and float(images.max()) <= 1.0)
        return (0.0, 1.0) if inside else None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"--domain must be auto, none or LO,HI (two numbers), got {value!r}") from None
    if not lo < hi:
        raise InputError(f"--domain LO,HI needs LO < HI, got {value!r}")
    return (lo, hi)


def compute_dtype(mode, dtype, dataset):
    """float64 in sound mode; in fast mode float32 unless the data are not exact in float32
    (then float64: what is certified is the input as given)."""
    if mode == "sound":
        if dtype == "float32":
            raise InputError("sound mode computes in float64; --dtype float32 cannot be sound")
        return "float64"
    if dtype != "auto":
        return dtype
    images = dataset.images
    exact = images.dtype == host.float32 or bool(host.all(images.astype(host.float32) == images))
    return "float32" if exact else "float64"


def load_model_file(path, backend, dtype):
    """A lipref .npz, or a torch .pth / .pt or .onnx model imported in memory (lipref.importing)."""
    xp = get_backend(backend)
    return load_any_model(path, xp, float_dtype(xp, dtype))


def load_data_as_given(spec, data_dir, limit, mode, dtype):
    """The data as given: named datasets in float64 where the run computes in float64."""
    wide = mode == "sound" or dtype == "float64"
    return D.load_data(spec, data_dir, limit, dtype="float64" if wide else "float32")


def load_model_and_data(model_path, spec, data_dir, limit, backend, mode, dtype):
    """(model, dataset, compute dtype): the data first, since they decide the dtype (`compute_dtype`)."""
    dataset = load_data_as_given(spec, data_dir, limit, mode, dtype)
    compute = compute_dtype(mode, dtype, dataset)
    model = load_model_file(model_path, backend, compute)
    return model, check_fits(model, dataset, spec), compute


def data_for_model(model, spec, data_dir, limit):
    """The data `spec` names, checked to fit `model`."""
    return check_fits(model, D.load_data(spec, data_dir, limit), spec)


def check_fits(model, dataset, spec):
    """`dataset`, once its images have the model's input shape and its labels fit its classes."""
    if tuple(dataset.input_shape) != tuple(model.input_shape):
        raise D.DataError(f"data {spec} has images of shape {tuple(dataset.input_shape)}, "
                          f"the model needs {tuple(model.input_shape)}")
    if dataset.labels.size and int(dataset.labels.max()) >= model.n_classes:
        raise D.DataError(f"data {spec} has label {int(dataset.labels.max())}, the model has "
                          f"{model.n_classes} classes")
    return dataset
