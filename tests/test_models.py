"""Hostile model files: every malformed architecture description or parameter array is a
ModelFileError naming the file, the layer (or parameter) and the field; nothing loads
silently changed. Also: lipref's error classes are UserErrors (the CLI's one-line errors)."""
import io
import json
import os

import array_api_compat.numpy as xp
import numpy
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lipref.backend import BackendError
from lipref.data import DataError
from lipref.errors import InputError, UserError
from lipref.layers import Conv2d, Linear, layer_from_spec
from lipref.models import (
    ModelFileError,
    architecture_names,
    build_architecture,
    build_model,
    load_model,
    model_to_bytes,
    save_model,
)
from lipref.torch_import import TorchImportError, TorchNotInstalled


@pytest.mark.parametrize("cls,builtin", [(DataError, ValueError), (ModelFileError, ValueError),
                                         (BackendError, RuntimeError), (TorchImportError, ValueError),
                                         (TorchNotInstalled, ImportError)])
def test_error_classes_are_user_errors_and_keep_their_builtin_base(cls, builtin):
    assert issubclass(cls, UserError) and issubclass(cls, builtin)


# ------------------------------------------------------------------ writing damaged files

def _parts(arch, shape, activation="relu"):
    model = build_model(arch, shape, 3, xp, xp.float32, numpy.random.default_rng(0), activation)
    with numpy.load(io.BytesIO(model_to_bytes(model))) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return json.loads(arrays.pop("__lipref__").tobytes().decode("utf-8")), arrays


@pytest.fixture(scope="module")
def conv_parts():
    # layers: 0 conv (16,4,2,1) 1x8x8 -> 16x4x4, 1 relu, 2 conv (32,4,2,1) -> 32x2x2, 3 relu,
    # 4 flatten, 5 linear 128->100, 6 relu, 7 linear 100->3
    return _parts("2c2f", (1, 8, 8))


@pytest.fixture(scope="module")
def mlp_parts():
    # layers: 0 flatten (1,3,3), 1 linear 9->4, 2 clipped_relu (4,), 3 linear 4->3
    return _parts("mlp-4", (1, 3, 3), "clipped_relu")


def _write(path, doc, arrays):
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode("utf-8")
    numpy.savez(path, __lipref__=numpy.frombuffer(raw, dtype=numpy.uint8), **arrays)
    return path


def _edit(doc, index, **fields):
    doc = json.loads(json.dumps(doc))
    doc["layers"][index].update(fields)
    return doc


def _error(path, *fragments, dtype=xp.float32):
    with pytest.raises(ModelFileError) as info:
        load_model(path, xp, dtype)
    message = str(info.value)
    assert "\n" not in message
    for fragment in (str(path),) + fragments:
        assert fragment in message, (fragment, message)
    return message


DOCUMENT_CASES = [
    ("list", lambda d: [d], ("not a JSON object",)),
    ("string", lambda d: "lipref", ("not a JSON object",)),
    ("no-layers", lambda d: {k: v for k, v in d.items() if k != "layers"}, ("'layers'",)),
    ("layers-dict", lambda d: dict(d, layers={"0": d["layers"][0]}), ("'layers'", "list")),
    ("layers-empty", lambda d: dict(d, layers=[]), ("'layers'", "empty")),
    ("metadata-list", lambda d: dict(d, metadata=[1]), ("metadata",)),
]


@pytest.mark.parametrize("name,change,fragments", DOCUMENT_CASES, ids=[c[0] for c in DOCUMENT_CASES])
def test_malformed_document(tmp_path, conv_parts, name, change, fragments):
    doc, arrays = conv_parts
    _error(_write(tmp_path / f"{name}.npz", change(doc), arrays), *fragments)


def test_deep_nesting_long_integers_and_npy_file(tmp_path, conv_parts):
    _, arrays = conv_parts
    _error(_write(tmp_path / "deep.npz", b"[" * 100000 + b"]" * 100000, arrays), "corrupted model description")
    _error(_write(tmp_path / "digits.npz", b'{"format": ' + b"9" * 5000 + b"}", arrays), "corrupted model description")
    numpy.save(tmp_path / "single.npy", numpy.ones(3))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    _error(tmp_path / "single.npz", "not a lipref model file")


LAYER_CASES = [  # (layer index, changed fields, fragments of the message)
    (0, {"stride": 0}, ("layer 0", "stride", ">= 1")),
    (0, {"stride": -2}, ("layer 0", "stride")),
    (2, {"padding": -1}, ("layer 2", "padding", ">= 0")),
    (0, {"kernel_size": 0}, ("layer 0", "kernel_size")),
    (0, {"kernel_size": 4.0}, ("layer 0", "kernel_size", "integer")),
    (0, {"out_channels": True}, ("layer 0", "out_channels", "integer")),
    (0, {"out_channels": "16"}, ("layer 0", "out_channels", "integer")),
    (0, {"stride": None}, ("layer 0", "stride")),
    (5, {"in_features": 128.7}, ("layer 5", "in_features", "128.7")),
    (7, {"out_features": 2 ** 40}, ("layer 7", "out_features")),
    (0, {"in_shape": [1, 0, 8]}, ("layer 0", "in_shape")),
    (0, {"in_shape": [1, 8]}, ("layer 0", "in_shape", "3")),
    (0, {"in_shape": "1x8x8"}, ("layer 0", "in_shape")),
    (1, {"shape": [16, 4, -4]}, ("layer 1", "shape")),
    (1, {"shape": []}, ("layer 1", "shape")),
    (4, {"in_shape": [32, 2.5, 2]}, ("layer 4", "in_shape")),
    (0, {"kernel_size": 11}, ("layer 0", "does not fit")),       # 8 + 2*1 < 11
    (2, {"in_shape": [16, 4, 5]}, ("layer 2", "layer 1")),      # does not chain
    (0, {"out_channels": 8}, ("layer 1", "layer 0")),           # does not chain
    (3, {"type": "softmax"}, ("layer 3", "softmax")),
]


@pytest.mark.parametrize("index,fields,fragments", LAYER_CASES, ids=[str(c[1]) for c in LAYER_CASES])
def test_malformed_conv_layer_spec(tmp_path, conv_parts, index, fields, fragments):
    doc, arrays = conv_parts
    _error(_write(tmp_path / "bad.npz", _edit(doc, index, **fields), arrays), "invalid architecture", *fragments)


def test_malformed_dense_layer_spec(tmp_path, mlp_parts):
    doc, arrays = mlp_parts
    bad = json.loads(json.dumps(doc))
    bad["layers"][1] = ["linear", 9, 4]
    _error(_write(tmp_path / "a.npz", bad, arrays), "layer 1", "not a JSON object")
    del bad["layers"][1]
    _error(_write(tmp_path / "b.npz", bad, arrays), "layer 1")
    no_field = _edit(doc, 1)
    del no_field["layers"][1]["out_features"]
    _error(_write(tmp_path / "c.npz", no_field, arrays), "layer 1", "out_features", "missing")
    for value in ("high", float("nan"), True, 10 ** 400):
        _error(_write(tmp_path / "d.npz", _edit(doc, 2, threshold_init=value), arrays), "layer 2",
               "threshold_init")
    last = json.loads(json.dumps(doc))
    last["layers"].append({"type": "relu", "shape": [3]})
    _error(_write(tmp_path / "e.npz", last, arrays), "last layer", "Linear")
    # the intact parts load
    assert load_model(_write(tmp_path / "ok.npz", doc, arrays), xp, xp.float32).n_classes == 3


def test_stride_zero_is_a_one_line_cli_error(tmp_path, conv_parts):
    from cli import main
    doc, arrays = conv_parts
    path = _write(tmp_path / "stride.npz", _edit(doc, 0, stride=0), arrays)
    result = CliRunner().invoke(main, ["info", str(path)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "stride" in lines[0] and str(path) in lines[0]


# ------------------------------------------------------------------ parameter values

def test_values_beyond_the_load_dtype_range(tmp_path, mlp_parts):
    doc, arrays = mlp_parts
    big = arrays["1.weight"].astype(numpy.float64)
    big[1, 2] = -1e300
    path = _write(tmp_path / "big.npz", doc, dict(arrays, **{"1.weight": big}))
    _error(path, "1.weight", "float32", "range")
    model = load_model(path, xp, xp.float64)  # exact in float64: loads unchanged
    assert numpy.asarray(model.parameters()["1.weight"].value)[1, 2] == -1e300
    just = big.copy()
    just[1, 2] = float(numpy.finfo(numpy.float32).max)
    load_model(_write(tmp_path / "max.npz", doc, dict(arrays, **{"1.weight": just})), xp, xp.float32)
    inf = arrays["3.bias"].copy()
    inf[0] = -numpy.inf
    _error(_write(tmp_path / "inf.npz", doc, dict(arrays, **{"3.bias": inf})), "3.bias", "NaN or inf",
           dtype=xp.float64)


@pytest.mark.parametrize("kind", ["complex", "bool", "str"])
def test_parameters_that_are_not_real_numbers(tmp_path, mlp_parts, kind):
    doc, arrays = mlp_parts
    w = arrays["1.weight"]
    value = {"complex": w + 0j, "bool": w > 0, "str": w.astype(str)}[kind]
    _error(_write(tmp_path / f"{kind}.npz", doc, dict(arrays, **{"1.weight": value})), "1.weight",
           str(value.dtype))


def test_integer_parameters_load_exactly(tmp_path, mlp_parts):
    doc, arrays = mlp_parts
    ints = numpy.arange(36, dtype=numpy.int64).reshape(4, 9) - 18
    model = load_model(_write(tmp_path / "int.npz", doc, dict(arrays, **{"1.weight": ints})), xp, xp.float32)
    numpy.testing.assert_array_equal(numpy.asarray(model.parameters()["1.weight"].value), ints)


# ------------------------------------------------------------------ the file's precision

def _float64_mlp(tmp_path, xp_=xp):
    """An mlp-4 model file with float64 parameters: float32 numbers but for 1.weight's first,
    1 + 2^-30, which float32 does not hold."""
    model = build_model("mlp-4", (1, 3, 3), 3, xp_, xp_.float32, numpy.random.default_rng(0))
    for var in model.parameters().values():
        var.value = xp_.asarray(numpy.asarray(var.value).astype(numpy.float64))
    weight = numpy.asarray(model.parameters()["1.weight"].value).copy()
    weight[0, 0] = 1 + 2.0 ** -30
    model.parameters()["1.weight"].value = xp_.asarray(weight)
    path = tmp_path / "f64.npz"
    save_model(path, model)
    return path, weight


def test_a_float64_model_file_loads_in_float64_unless_asked_and_says_what_a_cast_rounds(tmp_path, xp):
    path, weight = _float64_mlp(tmp_path)
    model = load_model(path, xp)  # no dtype: the file's precision
    assert model.precision == "float64" and model.rounded == ()
    value = model.parameters()["1.weight"].value
    assert value.dtype == xp.float64 and float(value[0, 0]) == 1 + 2.0 ** -30
    narrow = load_model(path, xp, xp.float32)
    assert narrow.precision == "float64" and narrow.rounded == ("1.weight",)  # only that one is not float32 numbers
    exact = build_model("mlp-4", (1, 3, 3), 3, xp, xp.float32, numpy.random.default_rng(0))
    save_model(tmp_path / "f32.npz", exact)
    assert load_model(tmp_path / "f32.npz", xp).precision == "float32"
    assert load_model(tmp_path / "f32.npz", xp, xp.float64).rounded == ()


def test_mixed_and_narrow_parameters_widen_exactly(tmp_path, mlp_parts):
    doc, arrays = mlp_parts
    half = dict(arrays, **{"1.weight": arrays["1.weight"].astype(numpy.float16)})
    model = load_model(_write(tmp_path / "half.npz", doc, half), xp)
    assert model.precision == "float32"
    numpy.testing.assert_array_equal(numpy.asarray(model.parameters()["1.weight"].value),
                                     half["1.weight"].astype(numpy.float32))
    mixed = dict(arrays, **{"3.bias": arrays["3.bias"].astype(numpy.float64) + 2.0 ** -40})
    model = load_model(_write(tmp_path / "mixed.npz", doc, mixed), xp)
    assert model.precision == "float64"
    assert all(v.value.dtype == numpy.float64 for v in model.parameters().values())  # one precision per model
    numpy.testing.assert_array_equal(numpy.asarray(model.parameters()["3.bias"].value), mixed["3.bias"])
    big = dict(arrays, **{"1.weight": numpy.full((4, 9), 2 ** 53 + 1, dtype=numpy.int64)})
    _error(_write(tmp_path / "big.npz", doc, big), "1.weight", "beyond +-2^53")


def test_fast_mode_computes_a_float64_model_in_float64(tmp_path):
    from cli import main
    path, _ = _float64_mlp(tmp_path)
    data = tmp_path / "data.npz"
    numpy.savez(data, images=numpy.full((2, 1, 3, 3), 0.5, numpy.float32), labels=numpy.array([0, 1]))
    for command in ("certify", "bound", "attack"):
        args = [command, str(path), "--data", str(data), "--eps", "0.1", "--json"]
        result = CliRunner().invoke(main, args + (["--quiet", "--pgd-steps", "2"] if command == "certify" else []),
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["dtype"] == "float64" and doc["model_rounded"] is False, (command, doc)
        rounded = CliRunner().invoke(main, args + ["--dtype", "float32"], catch_exceptions=False)
        assert json.loads(rounded.stdout)["model_rounded"] is True and "1.weight" in rounded.stderr


def test_linear_is_an_architecture_name():
    model = build_architecture("linear", (1, 3, 3), 4)
    assert [layer.kind for layer in model.layers] == ["flatten", "linear"] and "linear" in architecture_names()


# ------------------------------------------------------------------ building layers in code

@pytest.mark.parametrize("args", [(4, 0, 1), (4, 3, 0), (4, 3, -1, -1), (0, 3, 1), (4, 20, 1)])
def test_conv_constructor_refuses_bad_geometry(args):
    out_channels, k, s, *p = args
    with pytest.raises(InputError):
        Conv2d((1, 8, 8), out_channels, k, s, p[0] if p else 1)


def test_build_architecture_and_layer_from_spec_errors():
    with pytest.raises(InputError, match="mlp-0"):
        build_architecture("mlp-0", (1, 3, 3), 3)
    with pytest.raises(InputError, match="does not fit"):
        build_architecture("4c3f", (1, 2, 2), 3)
    with pytest.raises(InputError, match="unknown architecture"):
        build_architecture("9z9z", (1, 3, 3), 3)
    with pytest.raises(InputError, match="n_classes"):
        build_architecture("mlp-4", (1, 3, 3), 0)
    with pytest.raises(InputError, match="in_features"):
        layer_from_spec({"type": "linear", "in_features": 9.0, "out_features": 3})
    assert isinstance(layer_from_spec({"type": "linear", "in_features": 9, "out_features": 3}), Linear)


@pytest.mark.parametrize("arch,shape", [("4c3f", (3, 16, 16)), ("6c2f", (1, 12, 12)), ("2c2f", (1, 8, 8)),
                                        ("mlp-5-7", (2, 3))])
@pytest.mark.parametrize("activation", ["relu", "clipped_relu", "maxmin"])
def test_parameter_shapes_are_the_shapes_init_params_makes(arch, shape, activation):
    if activation == "maxmin" and arch == "mlp-5-7":
        arch = "mlp-6-8"
    model = build_architecture(arch, shape, 4, activation)
    declared = model.parameter_shapes()
    model.init_params(xp, xp.float32, numpy.random.default_rng(0))
    assert declared == {name: tuple(v.value.shape) for name, v in model.parameters().items()}


def test_huge_declared_sizes_are_refused_without_allocating(tmp_path, conv_parts):
    doc, arrays = conv_parts
    # 2^31 - 1 rows of 100 weights would be 800 GB: the shapes are compared before any allocation
    path = _write(tmp_path / "huge.npz", _edit(doc, 7, out_features=2 ** 31 - 1), arrays)
    _error(path, "7.weight", "(3, 100)", "(2147483647, 100)")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 7), key=st.sampled_from(["type", "in_shape", "shape", "out_channels", "kernel_size",
                                                     "stride", "padding", "in_features", "out_features",
                                                     "threshold_init", "unused"]),
       value=JSON | st.integers(-3, 40))
@example(index=0, key="stride", value=0)
@example(index=5, key="in_features", value=128.7)
def test_any_json_value_in_any_field_loads_or_is_a_model_file_error(tmp_path, conv_parts, index, key, value):
    doc, arrays = conv_parts
    path = _write(tmp_path / "fuzz.npz", _edit(doc, index, **{key: value}), arrays)
    try:
        model = load_model(path, xp, xp.float32)
    except ModelFileError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert {k: tuple(v.value.shape) for k, v in model.parameters().items()} == {k: v.shape for k, v in arrays.items()}
    got = model.spec()[index].get(key, value)  # a field that loads is used as written, never coerced
    assert got == value and type(got) is type(value)
