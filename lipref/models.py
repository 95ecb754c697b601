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
import zipfile
import zlib

from .backend import host, to_host
from .layers import (ACTIVATIONS, ClampedMaxMin, ClippedReLU, Conv2d, Flatten, Linear, ReLU, Sequential,
                     layer_from_spec)

FORMAT = "lipref-model/1"

# (out_channels, kernel, stride, padding) per conv layer, then hidden fc widths
ARCHITECTURES = {
    "4c3f": ([(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 512]),
    "6c2f": ([(32, 3, 1, 1), (32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512]),
    "8c2f": ([(64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1), (128, 4, 2, 1),
              (256, 3, 1, 1), (256, 4, 2, 1)], [256]),
    "2c2f": ([(16, 4, 2, 1), (32, 4, 2, 1)], [100]),  # small, for CPU runs and tests
}


class ModelFileError(ValueError):
    """A model file that cannot be read as a lipref model."""


def architecture_names():
    return sorted(ARCHITECTURES) + ["mlp-<width>[-<width>...]"]


def _activation(name, shape, threshold_init):
    if name == "relu":
        return ReLU(shape)
    if name == "clipped_relu":
        return ClippedReLU(shape, threshold_init)
    if name == "maxmin":
        return ClampedMaxMin(shape, threshold_init)
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def build_architecture(arch, input_shape, n_classes, activation="relu", threshold_init=1.0):
    """A Sequential (parameters not yet initialised) for a named architecture.

    Names: 4c3f, 6c2f, 8c2f (the paper's), 2c2f (small), mlp-W1-W2-... (dense, for tests)."""
    input_shape = tuple(int(d) for d in input_shape)
    layers = []
    match = re.fullmatch(r"mlp((?:-\d+)+)", arch)
    if match:
        convs, widths = [], [int(w) for w in match.group(1).split("-")[1:]]
    elif arch in ARCHITECTURES:
        convs, widths = ARCHITECTURES[arch]
        if len(input_shape) != 3:
            raise ValueError(f"architecture {arch} needs an image input (C, H, W), got {input_shape}")
    else:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(architecture_names())}")
    shape = input_shape
    for out_ch, k, s, p in convs:
        conv = Conv2d(shape, out_ch, k, s, p)
        layers += [conv, _activation(activation, conv.out_shape, threshold_init)]
        shape = conv.out_shape
    if len(shape) > 1:
        layers.append(Flatten(shape))
        shape = layers[-1].out_shape
    for width in widths:
        layers += [Linear(shape[0], width), _activation(activation, (width,), threshold_init)]
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
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such model file")
    try:
        with host.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError,
            zlib.error) as exc:
        # zipfile raises NotImplementedError / RuntimeError for damaged header fields
        # (version, compression method, encryption flag)
        raise ModelFileError(f"{path}: not a lipref model file (unreadable .npz: {exc})") from None
    if "__lipref__" not in arrays:
        raise ModelFileError(f"{path}: not a lipref model file (no '__lipref__' entry)")
    try:
        doc = json.loads(arrays.pop("__lipref__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupted model description ({exc})") from None
    if doc.get("format") != FORMAT:
        raise ModelFileError(f"{path}: unsupported model format {doc.get('format')!r} (expected {FORMAT})")
    return doc, arrays


def load_model(path, xp, dtype):
    """Load a model file onto backend xp with parameters cast to dtype."""
    doc, arrays = read_model_file(path)
    try:
        model = Sequential([layer_from_spec(s) for s in doc["layers"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid architecture description ({exc})") from None
    model.init_params(xp, dtype, host.random.default_rng(0))
    expected = model.parameters()
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ModelFileError(f"{path}: missing parameters {', '.join(missing)}")
    values = {}
    for name, var in expected.items():
        a = arrays[name]
        if tuple(a.shape) != tuple(var.value.shape):
            raise ModelFileError(f"{path}: parameter {name} has shape {tuple(a.shape)}, "
                                 f"the architecture needs {tuple(var.value.shape)}")
        if not host.all(host.isfinite(a)):
            raise ModelFileError(f"{path}: parameter {name} contains NaN or inf")
        values[name] = xp.asarray(a, dtype=dtype)
    model.set_parameters(values)
    model.metadata = doc.get("metadata", {})
    model.extra_arrays = {k: v for k, v in arrays.items() if k not in expected}
    return model
