"""The tape (lipref.tape) and model files (lipref.models).

Tape: shared subexpressions accumulate (diamonds, a Var used twice by one primitive, long
ladders of diamonds in linear time), Vars off the path get zeros of their own shape and
backend, seeds, deep chains without recursion, `array op Var` through the reflected
operators, and a whole training loss on array-api-strict (whose arrays reject `array op Var`,
so any such use inside the engine would raise there) equal to NumPy's.
Model files: save / load round trips are bit-identical on every backend; truncated, corrupted
and foreign files give ModelFileError naming the file, never another exception.
"""
import io
import json
import math
import sys

import array_api_compat.numpy as host_xp  # noqa: E402
import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import assert_backend_close, to_numpy

from lipref import losses
from lipref import primitives as P
from lipref.bounds import BoundOptions, GlobalNorms, global_norms, network_bounds
from lipref.models import ModelFileError, build_model, load_model, model_to_bytes, save_model
from lipref.tape import Var, grad, value_of

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _var(xp, a):
    return Var(xp.asarray(numpy.asarray(a, dtype=numpy.float64)))


def _total(v):
    return P.sum(v, None, False)


# ---------------------------------------------------------------- accumulation

def test_diamond_accumulates_both_paths(xp):
    x_h = numpy.random.default_rng(0).standard_normal((3, 4))
    x = _var(xp, x_h)
    a = P.multiply(x, 3.0)          # shared by both branches
    b = P.square(a)
    c = P.add(a, b)                 # d c / d x = 3 + 2 * (3x) * 3
    (gx,) = grad(_total(c), [x])
    assert_backend_close(gx, 3.0 + 18.0 * x_h, xp, rtol=1e-14, what="diamond gradient")


def test_one_var_twice_in_one_primitive(xp):
    x_h = numpy.random.default_rng(1).standard_normal((5,))
    x = _var(xp, x_h)
    (gx,) = grad(_total(P.multiply(x, x)), [x])     # both parents are x: 2x
    assert_backend_close(gx, 2.0 * x_h, xp, rtol=1e-15, what="x * x")
    (gx,) = grad(_total(P.subtract(x, x)), [x])     # 1 - 1
    assert_backend_close(gx, numpy.zeros(5), xp, atol=0.0, what="x - x")


def test_fan_out_sums_every_use(xp):
    x = _var(xp, numpy.arange(4.0))
    total = x
    for _ in range(49):
        total = P.add(total, x)
    (gx,) = grad(_total(total), [x])
    assert_backend_close(gx, numpy.full(4, 50.0), xp, atol=0.0, what="50 uses of x")


def test_ladder_of_diamonds_is_linear_time():
    """x_{k+1} = x_k + x_k, 200 times: 2**200 paths; a walk that visits every node once
    (gradients summed before propagating) gives exactly 2**200, a per-path walk would hang."""
    x = Var(numpy.ones(()))
    h = x
    for _ in range(200):
        h = P.add(h, h)
    (gx,) = grad(h, [x])
    assert float(gx) == 2.0 ** 200


def test_var_not_on_the_path_gets_zeros_of_its_shape_and_backend(xp):
    x, unused = _var(xp, numpy.ones((2, 3))), _var(xp, numpy.ones((4, 1, 2)))
    gx, gu, gx_again = grad(_total(P.exp(x)), [x, unused, x])
    assert_backend_close(gu, numpy.zeros((4, 1, 2)), xp, atol=0.0, what="unused Var")
    assert gu.shape == (4, 1, 2) and gu.dtype == xp.float64
    assert_backend_close(gx, numpy.full((2, 3), math.e), xp, rtol=1e-15, what="gradient")
    assert_backend_close(gx_again, numpy.full((2, 3), math.e), xp, rtol=1e-15, what="repeated wrt")


def test_grad_of_an_intermediate_and_of_the_output_itself(xp):
    x = _var(xp, [1.0, 2.0])
    y = P.multiply(x, 2.0)
    out = _total(P.square(y))
    gout, gy, gx = grad(out, [out, y, x])
    assert_backend_close(gout, numpy.asarray(1.0), xp, atol=0.0, what="d out / d out")
    assert_backend_close(gy, numpy.array([4.0, 8.0]), xp, atol=0.0, what="d out / d y")
    assert_backend_close(gx, numpy.array([8.0, 16.0]), xp, atol=0.0, what="d out / d x")


# ---------------------------------------------------------------- seeds and errors

def test_seed_is_the_upstream_gradient_and_is_not_modified(xp):
    rng = numpy.random.default_rng(3)
    x_h, w_h, s_h = rng.standard_normal((4, 3)), rng.standard_normal((2, 3)), rng.standard_normal((4, 2))
    x, w = _var(xp, x_h), _var(xp, w_h)
    out = P.add(P.linear(x, w, None), P.linear(x, w, None))  # the seed reaches w twice
    seed = xp.asarray(s_h)
    gx, gw = grad(out, [x, w], seed=seed)
    assert_backend_close(gx, 2.0 * s_h @ w_h, xp, rtol=1e-14, what="dx")
    assert_backend_close(gw, 2.0 * s_h.T @ x_h, xp, rtol=1e-14, what="dw")
    assert_backend_close(seed, s_h, xp, atol=0.0, what="seed after grad")


def test_non_scalar_output_needs_a_seed_and_plain_arrays_have_no_gradient(xp):
    x = _var(xp, numpy.ones((2, 2)))
    with pytest.raises(ValueError, match="seed"):
        grad(P.exp(x), [x])
    with pytest.raises(TypeError, match="does not depend on any Var"):
        grad(P.exp(xp.ones((2, 2))), [x])


def test_primitives_on_plain_arrays_record_nothing(xp):
    a = xp.asarray(numpy.ones((2, 3)))
    out = P.relu(P.add(P.multiply(a, 2.0), a))
    assert not isinstance(out, Var)
    assert_backend_close(out, numpy.full((2, 3), 3.0), xp, atol=0.0)


# ---------------------------------------------------------------- depth

@pytest.mark.parametrize("depth", [5000, 20000])
def test_deep_chains_do_not_recurse(depth):
    assert depth > sys.getrecursionlimit()  # a recursive walk would fail here
    x = Var(numpy.asarray([1.0, -2.0]))
    h = x
    for _ in range(depth):
        h = P.add(h, 1.0)
    (gx,) = grad(_total(h), [x])
    numpy.testing.assert_array_equal(gx, [1.0, 1.0])
    numpy.testing.assert_array_equal(h.value, [1.0 + depth, -2.0 + depth])
    h = x
    for _ in range(depth):
        h = P.multiply(h, 1.0001)
    (gx,) = grad(_total(h), [x])
    numpy.testing.assert_allclose(gx, numpy.full(2, 1.0001 ** depth), rtol=1e-9)


# ---------------------------------------------------------------- mixed arithmetic

def test_numpy_array_op_var_goes_through_the_reflected_primitive():
    """Var.__array_ufunc__ = None: `ndarray op Var` is Var's reflected operator, on the tape,
    never a NumPy object array."""
    a = numpy.array([1.0, 2.0, 3.0])
    x = Var(numpy.array([4.0, 5.0, 6.0]))
    for result, expected_value, expected_grad in (
            (a * x, a * x.value, a), (a + x, a + x.value, numpy.ones(3)), (a - x, a - x.value, -numpy.ones(3)),
            (a / x, a / x.value, -a / x.value ** 2), (x * a, a * x.value, a), (-x, -x.value, -numpy.ones(3))):
        assert isinstance(result, Var)
        numpy.testing.assert_allclose(result.value, expected_value, rtol=1e-15)
        (gx,) = grad(_total(result), [x])
        numpy.testing.assert_allclose(gx, expected_grad, rtol=1e-15)
    assert isinstance(2.0 * x, Var) and isinstance(1.0 - x, Var)


def test_strict_arrays_reject_array_op_var_so_mixed_arithmetic_uses_primitives():
    xs = pytest.importorskip("array_api_strict")
    a, x = xs.asarray([1.0, 2.0]), Var(xs.asarray([3.0, 4.0]))
    with pytest.raises(TypeError):
        a * x                    # why the engine writes P.multiply(a, x), never `a * x`
    for out in (P.multiply(a, x), x * a, P.add(a, x), P.subtract(a, x), P.divide(a, x)):
        assert isinstance(out, Var)
    (gx,) = grad(_total(P.multiply(a, x)), [x])
    assert_backend_close(gx, numpy.array([1.0, 2.0]), xs, atol=0.0)


@pytest.mark.parametrize("arch,activation,loss", [("2c2f", "relu", "gloro"), ("2c2f", "clipped_relu", "bcp"),
                                                  ("2c2f", "maxmin", "gloro"), ("mlp-8", "clipped_relu", "gloro"),
                                                  ("mlp-8", "maxmin", "bcp")])
def test_training_loss_on_strict_arrays_equals_numpy(arch, activation, loss):
    """The whole training loss (local bounds, robust + clean + sparsity) recorded on
    array-api-strict: any `strict_array op Var` inside the engine raises TypeError there."""
    xs = pytest.importorskip("array_api_strict")
    shape, k, n = (1, 8, 8), 5, 4
    rng = numpy.random.default_rng(11)
    x_h, labels = rng.uniform(0, 1, (n,) + shape), rng.integers(0, k, n)

    def run(ns):
        model = build_model(arch, shape, k, ns, ns.float64, numpy.random.default_rng(5), activation, 0.5)
        params = model.parameters()
        x = ns.asarray(x_h)
        onehot = ns.asarray(numpy.eye(k)[labels])
        b = network_bounds(model, x, 0.1, BoundOptions("local", "fast", 3, record=True), rng=numpy.random.default_rng(9))
        total = losses.mixed_loss(loss, b, model.layers[-1].params["weight"], onehot, 0.5)
        total = total + losses.sparsity_loss(b.activations, 0.1) * 0.01
        return value_of(total), grad(total, list(params.values())), list(params)

    h_loss, h_grads, names = run(host_xp)
    s_loss, s_grads, _ = run(xs)
    assert_backend_close(s_loss, h_loss, xs, rtol=1e-9, what="loss")
    for name, gs, gh in zip(names, s_grads, h_grads):
        assert numpy.all(numpy.isfinite(to_numpy(gh))), name
        assert_backend_close(gs, gh, xs, rtol=1e-8, atol=1e-12, what=f"gradient of {name}")


# ---------------------------------------------------------------- model files

@pytest.mark.parametrize("arch,activation,dtype", [("2c2f", "relu", "float32"), ("2c2f", "clipped_relu", "float64"),
                                                   ("mlp-6-4", "maxmin", "float32")])
def test_save_load_round_trip_is_bit_identical(xp, tmp_path, arch, activation, dtype):
    shape = (1, 8, 8)
    model = build_model(arch, shape, 10, xp, getattr(xp, dtype), numpy.random.default_rng(4), activation, 0.75)
    # make thresholds and biases non-default so that they are really stored
    for name, var in model.parameters().items():
        host = to_numpy(var.value).copy()
        host += numpy.random.default_rng(len(name)).uniform(0.01, 0.1, host.shape).astype(host.dtype)
        var.value = xp.asarray(host)
    path = tmp_path / "m.npz"
    save_model(path, model)
    loaded = load_model(path, xp, getattr(xp, dtype))
    assert loaded.spec() == model.spec()
    assert loaded.metadata == json.loads(json.dumps(model.metadata))
    assert list(loaded.parameters()) == list(model.parameters())
    for name, var in model.parameters().items():
        got = loaded.parameters()[name].value
        assert got.dtype == var.value.dtype
        numpy.testing.assert_array_equal(to_numpy(got), to_numpy(var.value), err_msg=name)
    x = xp.asarray(numpy.random.default_rng(8).uniform(0, 1, (5,) + shape).astype(dtype))
    a, b = to_numpy(model(x, record=False)), to_numpy(loaded(x, record=False))
    assert a.tobytes() == b.tobytes(), "outputs after a round trip must be bit-identical"
    assert model_to_bytes(loaded)  # and the loaded model can be written again


@pytest.fixture(scope="module")
def model_bytes():
    model = build_model("mlp-4", (1, 3, 3), 3, host_xp, host_xp.float32, numpy.random.default_rng(0), "clipped_relu")
    return model_to_bytes(model)


def _assert_model_file_error(path, *fragments):
    with pytest.raises(ModelFileError) as info:
        load_model(path, host_xp, host_xp.float32)
    message = str(info.value)
    assert str(path) in message, f"the error does not name the file: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@SETTINGS
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_file(tmp_path_factory, model_bytes, cut):
    path = tmp_path_factory.mktemp("cut") / "model.npz"
    path.write_bytes(model_bytes[:int(cut * len(model_bytes))])
    _assert_model_file_error(path)


@SETTINGS
@given(position=st.floats(0.0, 1.0, exclude_max=True), value=st.integers(0, 255))
def test_corrupted_byte_gives_model_file_error_or_the_same_model(tmp_path_factory, model_bytes, position, value):
    """One changed byte: either the reader rejects the file with ModelFileError, or the byte
    was one it does not use (a timestamp, say) and the model is unchanged. Never another
    exception, never a silently different model."""
    pos = int(position * len(model_bytes))
    data = bytearray(model_bytes)
    data[pos] = value
    folder = tmp_path_factory.mktemp("flip")
    good, bad = folder / "good.npz", folder / "bad.npz"
    good.write_bytes(model_bytes)
    bad.write_bytes(bytes(data))
    try:
        loaded = load_model(bad, host_xp, host_xp.float32)
    except ModelFileError as exc:
        assert str(bad) in str(exc)
        return
    reference = load_model(good, host_xp, host_xp.float32)
    assert loaded.spec() == reference.spec()
    for name, var in reference.parameters().items():
        numpy.testing.assert_array_equal(loaded.parameters()[name].value, var.value, err_msg=name)


def _central_directory_entries(data):
    """Offsets of the central-directory file headers (signature PK\\x01\\x02) of a zip."""
    offsets, start = [], 0
    while (i := data.find(b"PK\x01\x02", start)) >= 0:
        offsets.append(i)
        start = i + 4
    return offsets


@pytest.mark.parametrize("field,offset,value", [
    ("version needed to extract", 6, 0xFF),   # zipfile: NotImplementedError('zip file version 25.5')
    ("flags: encrypted", 8, 0x01),             # zipfile: RuntimeError('... is encrypted, password required')
    ("compression method", 10, 99),            # zipfile: NotImplementedError('That compression method ...')
])
def test_corrupted_zip_header_fields(tmp_path, model_bytes, field, offset, value):
    """Header corruptions that make zipfile raise NotImplementedError / RuntimeError, not
    BadZipFile: the reader must still answer with ModelFileError naming the file."""
    entries = _central_directory_entries(model_bytes)
    assert entries, "test setup: no central directory found"
    data = bytearray(model_bytes)
    data[entries[0] + offset] = value
    path = tmp_path / "header.npz"
    path.write_bytes(bytes(data))
    try:
        load_model(path, host_xp, host_xp.float32)
    except ModelFileError as exc:
        assert str(path) in str(exc)
    except Exception as exc:  # noqa: BLE001 - the bug this test exposes
        pytest.fail(f"BUG in lipref.models.read_model_file: corrupted zip field '{field}' raised "
                    f"{type(exc).__name__}: {exc} instead of ModelFileError")
    else:
        pytest.fail(f"a file with a corrupted '{field}' loaded without error")


def test_damaged_model_description_and_parameters(tmp_path, model_bytes):
    """(Junk bytes, a plain .npz and a missing file are covered through the CLI in test_cli.)"""
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _assert_model_file_error(empty, "not a lipref model file")

    with numpy.load(io.BytesIO(model_bytes)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    doc = json.loads(arrays["__lipref__"].tobytes().decode("utf-8"))

    def write(name, arrays):
        path = tmp_path / name
        numpy.savez(path, **arrays)
        return path

    def as_doc(d):
        return numpy.frombuffer(json.dumps(d).encode("utf-8"), dtype=numpy.uint8)

    bad_utf8 = dict(arrays, __lipref__=numpy.frombuffer(b"\xff\xfe{", dtype=numpy.uint8))
    _assert_model_file_error(write("utf8.npz", bad_utf8), "corrupted model description")
    bad_json = dict(arrays, __lipref__=numpy.frombuffer(b'{"format": "lipref-model/1", ', dtype=numpy.uint8))
    _assert_model_file_error(write("json.npz", bad_json), "corrupted model description")
    _assert_model_file_error(write("format.npz", dict(arrays, __lipref__=as_doc(dict(doc, format="other/9")))),
                             "unsupported model format")
    _assert_model_file_error(write("layers.npz", dict(arrays, __lipref__=as_doc(dict(doc, layers=[{"type": "x"}])))),
                             "invalid architecture")
    missing = {k: v for k, v in arrays.items() if k != "1.weight"}
    _assert_model_file_error(write("missing.npz", missing), "missing parameters", "1.weight")
    _assert_model_file_error(write("shape.npz", dict(arrays, **{"1.weight": numpy.ones((2, 2))})), "1.weight",
                             "shape")
    nan = arrays["1.bias"].copy()
    nan[0] = numpy.nan
    _assert_model_file_error(write("nan.npz", dict(arrays, **{"1.bias": nan})), "1.bias", "NaN or inf")
    # the intact file still loads (the damaged ones above are the only difference)
    intact = tmp_path / "intact.npz"
    intact.write_bytes(model_bytes)
    assert load_model(intact, host_xp, host_xp.float32).n_classes == 3

