"""What a run is given, read and checked before any math: the model file (lipref .npz, torch
checkpoint or ONNX), the data as given, the dtype the run computes in, PGD's domain and the
seed. The CLI calls these; a Python user can too."""
import secrets
import warnings

from . import data as D
from .backend import float_dtype, get_backend, host
from .data import ranges
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


def resolve_domain(value, dataset, model=None, spec=None):
    """PGD's domain, (lo, hi) or None, once the data fit it. An explicit "LO,HI" must hold the
    data; "none" accepts any data as given. "auto": the range the model's metadata name
    (`data.ranges.expected_range`: what it was trained on), refusing data outside it (8-bit
    pixels 0..255 for a model trained on [0, 1]); for a model that does not say, [0, 1] where
    every value of the data lies in it (every named dataset), else unbounded, with a
    RangeWarning where the images look like unscaled pixels. `spec` names the data in errors."""
    found = ranges.image_range(dataset.images)
    where = spec or getattr(dataset, "source", None) or "the data"
    if value == "none":
        return None
    if value != "auto":
        domain = _domain_option(value)
        if not ranges.inside(found, domain):
            raise InputError(f"{where}: the data lie outside the domain [{domain[0]:g}, {domain[1]:g}] (values "
                             f"{ranges.range_text(found)}); give the data's domain (--domain LO,HI) or none "
                             "(--domain none)")
        return domain
    expected = ranges.expected_range(getattr(model, "metadata", None))
    if expected is not None:
        lo, hi, why = expected
        if not ranges.inside(found, (lo, hi)):
            raise D.DataError(f"{where}: images range over {ranges.range_text(found)}, but the model expects inputs "
                              f"in [{lo:g}, {hi:g}] ({why}); scale the images to it (8-bit pixels: images / 255), or "
                              "pass --domain none (or --domain LO,HI holding them) to use them as they are")
        return (lo, hi)
    if ranges.inside(found, ranges.UNIT_RANGE):
        return ranges.UNIT_RANGE
    if ranges.looks_like_pixels(dataset.images):
        warnings.warn(f"{where}: images are whole numbers {ranges.range_text(found)}, like unscaled pixels, and the "
                      "model does not record its input range; if it was trained on [0, 1], divide the images by "
                      "255 (--domain none or LO,HI: use them as they are, without this warning)",
                      ranges.RangeWarning, stacklevel=2)
    return None


def _domain_option(value):
    """(lo, hi) of --domain LO,HI."""
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
