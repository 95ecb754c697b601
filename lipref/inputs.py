"""What a run is given, read and checked before any math: the model file (lipref .npz, torch
checkpoint or ONNX), the data as given, the dtype the run computes in, PGD's domain and the
seed. The CLI calls these; a Python user can too."""
import secrets
import warnings

from . import data as D
from .backend import check_seed, float_dtype, get_backend, host, to_host
from .data import ranges
from .errors import InputError
from .importing import check_sound, load_any_model, on_backend
from .precision import exact_in_float32


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


def compute_dtype(mode, dtype, dataset, model=None):
    """The dtype a run computes in. Sound mode: float64 (exact for float32 data and models;
    --dtype float32 is refused). Fast mode: `dtype` when given ("float32" with a float64 model
    rounds the model: `rounding_note`); "auto": float32 where float32 holds the data and the
    model's parameters exactly, else float64, so that what is certified is the input and the
    model as given."""
    if mode == "sound":
        if dtype == "float32":
            raise InputError("sound mode computes in float64; --dtype float32 cannot be sound")
        if model is not None:
            check_sound(model)  # an import's fold that rounded
        return "float64"
    if dtype != "auto":
        return dtype
    images = dataset.images
    exact = images.dtype == host.float32 or bool(host.all(images.astype(host.float32) == images))
    return "float32" if exact and (model is None or model_exact_in_float32(model)) else "float64"


def model_exact_in_float32(model):
    """Whether float32 holds every parameter of `model` exactly (lipref.precision)."""
    return all(exact_in_float32(to_host(v.value)) for v in model.parameters().values())


def rounding_note(model, compute):
    """None, or one line saying that the cast to `compute` rounded the model's parameters
    (`model.rounded`), so that the rounded model, not the file's, is what the run certifies."""
    rounded = getattr(model, "rounded", ())
    if not rounded:
        return None
    names = ", ".join(rounded[:3]) + (f" and {len(rounded) - 3} more" if len(rounded) > 3 else "")
    return (f"note: --dtype {compute} rounds the model's {model.precision} parameters ({names}): the model "
            f"certified is the rounded one, not the file's (--dtype auto or float64 keeps the file's)")


def load_model_file(path, backend, dtype=None):
    """A lipref .npz, or a torch .pth / .pt or .onnx model imported in memory (lipref.importing),
    its parameters in `dtype` ("float32" or "float64"; None: the file's precision)."""
    xp = get_backend(backend)
    return load_any_model(path, xp, None if dtype is None else float_dtype(xp, dtype))


def load_data_as_given(spec, data_dir, limit, mode, dtype, model=None):
    """The data as given: named datasets in float64 where the run computes in float64 (sound
    mode, --dtype float64, or --dtype auto with a model that float32 does not hold)."""
    wide = mode == "sound" or dtype == "float64" or (dtype == "auto" and model is not None
                                                      and not model_exact_in_float32(model))
    return D.load_data(spec, data_dir, limit, dtype="float64" if wide else "float32")


def load_model_and_data(model_path, spec, data_dir, limit, backend, mode, dtype):
    """(model, dataset, compute dtype): the model at its file's precision, read once (on the
    host), then the data, then the dtype both allow (`compute_dtype`), then the model on the
    backend in that dtype (`model.rounded` names what the cast rounded: `rounding_note`)."""
    native = load_model_file(model_path, "numpy")
    dataset = load_data_as_given(spec, data_dir, limit, mode, dtype, native)
    compute = compute_dtype(mode, dtype, dataset, native)
    xp = get_backend(backend)
    model = on_backend(native, xp, float_dtype(xp, compute), model_path)
    return model, check_fits(model, dataset, spec), compute


def data_for_model(model, spec, data_dir, limit):
    """The data `spec` names, checked to fit `model`."""
    return check_fits(model, D.load_data(spec, data_dir, limit), spec)


def check_fits(model, dataset, spec):
    """`dataset`, once its images have the model's input shape and its labels fit its classes."""
    if tuple(dataset.input_shape) != tuple(model.input_shape):
        vector = len(model.input_shape) == 1
        hint = (f" (the model reads vectors: give a data .npz with images of shape (N, {model.input_shape[0]}))"
                if vector else "")
        raise D.DataError(f"data {spec} has images of shape {tuple(dataset.input_shape)}, "
                          f"the model needs {tuple(model.input_shape)}{hint}")
    if dataset.labels.size and int(dataset.labels.max()) >= model.n_classes:
        raise D.DataError(f"data {spec} has label {int(dataset.labels.max())}, the model has "
                          f"{model.n_classes} classes")
    return dataset
