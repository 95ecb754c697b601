"""The paper's architectures by name, and model files.

A model file is one .npz: each parameter under its torch-style name ("0.weight", ...) and
"__lipref__", a JSON document (architecture spec + metadata) stored as UTF-8 bytes. It is
written atomically, and a round trip gives bit-identical parameters and outputs.
"""
import io
import json
import os
import re
import tempfile

from .backend import host, to_host
from .data.files import read_npz_checked
from .errors import InputError, UserError
from .layers import (
    AvgPool2d,
    ClampedMaxMin,
    ClippedReLU,
    Conv2d,
    Flatten,
    Linear,
    Sequential,
    activation_layer,
    check_int,
    check_shape,
    layer_from_spec,
)
from .precision import exact_in_float32, precision_of, widen_exactly
from .tape import Var

FORMAT = "lipref-model/1"

# (out_channels, kernel, stride, padding) per conv layer, then hidden fc widths
ARCHITECTURES = {
    "4c3f": ([(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 512]),
    # 4c3f with every width halved: the conv study's network on 2 CPU cores (docs/results.md)
    "4c3f-half": ([(16, 3, 1, 1), (16, 4, 2, 1), (32, 3, 1, 1), (32, 4, 2, 1)], [256, 256]),
    "6c2f": ([(32, 3, 1, 1), (32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512]),
    # the paper's TinyImageNet model: its strided layers have no padding (64 -> 31 -> 14 -> 6)
    "8c2f": ([(64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 0), (128, 3, 1, 1), (128, 3, 1, 1), (128, 4, 2, 0),
              (256, 3, 1, 1), (256, 4, 2, 0)], [256]),
    "2c2f": ([(16, 4, 2, 1), (32, 4, 2, 1)], [100]),  # small, for CPU runs and tests
}


class ModelFileError(UserError, ValueError):
    """A model file that cannot be read as a lipref model."""


GENERIC_STACK = "conv:OUT:K:STRIDE:PAD,avgpool:K:STRIDE:PAD,...,fc:WIDTH,..."


def architecture_names():
    return sorted(ARCHITECTURES) + ["mlp-<width>[-<width>...]", "linear", GENERIC_STACK]


def parse_generic(text):
    """(convs, widths) of a generic stack "conv:OUT:K:STRIDE:PAD,avgpool:K:STRIDE:PAD,...,
    fc:WIDTH,..." (convs and pools first, in order; fcs after), or None when `text` is not in
    that form. convs: (out, k, stride, padding) per conv, ("avgpool", k, stride, padding) per
    average pooling (no activation after it)."""
    convs, widths = [], []
    for token in text.split(","):
        conv = re.fullmatch(r"conv:(\d+):(\d+):(\d+):(\d+)", token.strip())
        pool = re.fullmatch(r"avgpool:(\d+):(\d+):(\d+)", token.strip())
        fc = re.fullmatch(r"fc:(\d+)", token.strip())
        if conv and not widths:
            convs.append(tuple(int(g) for g in conv.groups()))
        elif pool and not widths:
            convs.append(("avgpool",) + tuple(int(g) for g in pool.groups()))
        elif fc:
            widths.append(int(fc.group(1)))
        else:
            return None
    return convs, widths


def build_architecture(arch, input_shape, n_classes, activation="relu", threshold_init=1.0):
    """A Sequential (parameters not yet initialised) for a named architecture.

    Names: 4c3f, 6c2f, 8c2f (the paper's), 4c3f-half (4c3f with every width halved), 2c2f
    (small), mlp-W1-W2-... (dense, for tests),
    linear (one linear layer: a dense stack without hidden layers)."""
    input_shape = check_shape("input shape", tuple(input_shape))
    check_int("n_classes", n_classes, 1)
    match = re.fullmatch(r"mlp((?:-\d+)+)", arch)
    if arch == "linear":
        convs, widths = [], []
    elif match:
        convs, widths = [], [int(w) for w in match.group(1).split("-")[1:]]
        if min(widths) < 1:
            raise InputError(f"architecture {arch}: every width must be >= 1")
    elif arch in ARCHITECTURES or (":" in arch and parse_generic(arch) is not None):
        convs, widths = ARCHITECTURES[arch] if arch in ARCHITECTURES else parse_generic(arch)
        if convs and len(input_shape) != 3:
            raise InputError(f"architecture {arch} needs an image input (C, H, W), got {input_shape}")
    else:
        raise InputError(f"unknown architecture {arch!r}; known: {', '.join(architecture_names())}")
    return build_stack(convs, widths, input_shape, n_classes, activation, threshold_init)


def build_stack(convs, widths, input_shape, n_classes, activation="relu", threshold_init=1.0):
    """The paper's layout for any conv/fc widths: [conv, act]..., Flatten, [linear, act]..., linear.
    convs: (out_channels, kernel, stride, padding) per conv layer, or ("avgpool", kernel,
    stride, padding) for an average pooling (no activation after it); widths: hidden fc widths."""
    layers, shape = [], tuple(input_shape)
    for item in convs:
        if item[0] == "avgpool":
            layers.append(AvgPool2d(shape, *item[1:]))
            shape = layers[-1].out_shape
            continue
        conv = Conv2d(shape, *item)
        layers += [conv, activation_layer(activation, conv.out_shape, threshold_init)]
        shape = conv.out_shape
    if len(shape) > 1:
        layers.append(Flatten(shape))
        shape = layers[-1].out_shape
    for width in widths:
        layers += [Linear(shape[0], width), activation_layer(activation, (width,), threshold_init)]
        shape = (width,)
    layers.append(Linear(shape[0], n_classes))
    return Sequential(layers)


def build_model(arch, input_shape, n_classes, xp, dtype, rng, activation="relu", threshold_init=1.0):
    """A named architecture with the paper's initialisation, parameters on backend xp."""
    model = build_architecture(arch, input_shape, n_classes, activation, threshold_init)
    model.init_params(xp, dtype, rng)
    model.metadata = {"arch": arch, "activation": activation, "input_shape": list(input_shape),
                      "n_classes": n_classes, "threshold_init": threshold_init}
    return model


def layer_inits(text):
    """The per-activation-layer initial thresholds of `--layer-inits`: None, or a list of
    floats (clipped ReLU: "T,...") or (hi, lo) pairs (MaxMin: "HI:LO,...")."""
    if text is None:
        return None
    out = []
    for item in str(text).split(","):
        try:
            parts = [float(v) for v in item.split(":")]
        except ValueError:
            raise InputError(f"layer inits: {item.strip()!r} is not a number or HI:LO") from None
        if len(parts) > 2 or any(v != v or abs(v) == float("inf") for v in parts):
            raise InputError(f"layer inits: {item.strip()!r} is not a finite T or HI:LO")
        out.append(parts[0] if len(parts) == 1 else tuple(parts))
    return out


def set_layer_inits(model, inits, xp, dtype):
    """Fill each clipped ReLU's thresholds (a float) or MaxMin's clamps (a (hi, lo) pair) from `inits`."""
    if inits is None:
        return
    acts = [layer for layer in model.layers if isinstance(layer, (ClippedReLU, ClampedMaxMin))]
    if len(inits) != len(acts):
        raise InputError(f"layer inits: {len(inits)} values for {len(acts)} activation layers with thresholds")
    for layer, init in zip(acts, inits):
        pair = isinstance(layer, ClampedMaxMin)
        if pair != isinstance(init, tuple):
            raise InputError(f"layer inits: {init!r} does not fit a {type(layer).__name__} layer "
                             f"({'HI:LO' if pair else 'one threshold'})")
        values = dict(zip(("max", "min"), init)) if pair else {"threshold": init}
        for name, value in values.items():
            layer.params[name] = Var(xp.full(layer.params[name].value.shape, value, dtype=dtype))


def atomic_write_bytes(path, data):
    """Write `data` to `path` via a temporary file in the same folder and os.replace."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_to_bytes(model, extra_arrays=None):
    """The .npz bytes of a model (plus optional extra host arrays, e.g. optimiser state)."""
    doc = {"format": FORMAT, "layers": model.spec(), "metadata": getattr(model, "metadata", {})}
    arrays = {name: to_host(v.value) for name, v in model.parameters().items()}
    arrays.update(extra_arrays or {})
    arrays["__lipref__"] = host.frombuffer(json.dumps(doc).encode("utf-8"), dtype=host.uint8)
    buf = io.BytesIO()
    host.savez(buf, **arrays)
    return buf.getvalue()


def save_model(path, model):
    atomic_write_bytes(path, model_to_bytes(model))


def read_model_file(path):
    """(document, {name: host array}) of a model file, with clear errors for bad files."""
    path = os.fspath(path)
    arrays = read_npz_checked(path, ModelFileError, "lipref model file")
    if "__lipref__" not in arrays:
        raise ModelFileError(f"{path}: not a lipref model file (no '__lipref__' entry)")
    try:
        doc = json.loads(arrays.pop("__lipref__").tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, a 5000-digit integer
        raise ModelFileError(f"{path}: corrupted model description ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise ModelFileError(f"{path}: corrupted model description (not a JSON object but {type(doc).__name__})")
    if doc.get("format") != FORMAT:
        raise ModelFileError(f"{path}: unsupported model format {doc.get('format')!r:.60} (expected {FORMAT})")
    if not isinstance(doc.get("metadata", {}), dict):
        raise ModelFileError(f"{path}: corrupted model description ('metadata' is not a JSON object)")
    return doc, arrays


def model_from_document(path, doc):
    """The Sequential (parameters not set) that a model document describes, every field checked."""
    specs = doc.get("layers")
    if not isinstance(specs, list) or not specs:
        raise ModelFileError(f"{path}: invalid architecture description ('layers' must be a non-empty list "
                             f"of layer objects, got {specs!r:.60})")
    layers = []
    for i, spec in enumerate(specs):
        try:
            layers.append(layer_from_spec(spec))
        except InputError as exc:
            raise ModelFileError(f"{path}: invalid architecture description (layer {i}: {exc})") from None
    try:
        return Sequential(layers)
    except InputError as exc:  # shapes that do not chain, or a last layer that is not Linear
        raise ModelFileError(f"{path}: invalid architecture description ({exc})") from None


def file_parameters(path, arrays, names):
    """({name: host array}, precision) of parameters `names` of `arrays`, each real and finite
    and widened exactly, then all in the file's one precision (lipref.precision: float32, or
    float64 when any parameter needs it); ModelFileError names the file and the parameter
    otherwise."""
    out = {}
    for name in names:
        a = widen_exactly(host.asarray(arrays[name]),
                          lambda why, name=name: ModelFileError(f"{path}: parameter {name} {why}"))
        if not host.all(host.isfinite(a)):
            raise ModelFileError(f"{path}: parameter {name} contains NaN or inf")
        out[name] = a
    precision = precision_of(out.values())
    return {name: a.astype(precision, copy=False) for name, a in out.items()}, precision


def backend_value(path, name, a, xp, dtype):
    """Host array `a` (float32 or float64) as a backend array of `dtype`, refused beyond that
    dtype's range (a cast to it may round, never overflow)."""
    info = xp.finfo(dtype)
    largest = float(host.max(host.abs(a))) if a.size else 0.0
    if largest > float(info.max):
        raise ModelFileError(f"{path}: parameter {name} has values up to {largest:.3g}, which exceed the range "
                             f"of {info.dtype} (max {float(info.max):.3g})")
    return xp.asarray(a, dtype=dtype)


def load_parameters_into(model, path, arrays, xp, dtype=None):
    """`model` with its parameters taken from host `arrays` (checked by `file_parameters`) on
    backend xp in `dtype`, None: the file's precision. Sets `model.precision` (the file's:
    'float32' or 'float64') and `model.rounded` (the names of the parameters whose values the
    cast to a narrower `dtype` changed: that model, not the file's, is what is then computed)."""
    values, precision = file_parameters(path, arrays, model.parameter_shapes())
    dtype = getattr(xp, precision) if dtype is None else dtype
    narrow = xp.finfo(dtype).bits < 64
    model.load_parameters({name: backend_value(path, name, a, xp, dtype) for name, a in values.items()})
    model.precision = precision
    model.rounded = tuple(name for name, a in values.items() if narrow and not exact_in_float32(a))
    return model


def load_model(path, xp, dtype=None):
    """The model in a model file on backend xp, its parameters in `dtype`, None: in the file's
    precision (`load_parameters_into`: float64 parameters stay float64)."""
    path = os.fspath(path)
    doc, arrays = read_model_file(path)
    model = model_from_document(path, doc)
    expected = model.parameter_shapes()
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ModelFileError(f"{path}: missing parameters {', '.join(missing)}")
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise ModelFileError(f"{path}: parameter {name} has shape {tuple(arrays[name].shape)}, "
                                 f"the architecture needs {shape}")
    load_parameters_into(model, path, arrays, xp, dtype)
    model.metadata = doc.get("metadata", {})
    model.extra_arrays = {k: v for k, v in arrays.items() if k not in expected}
    return model
