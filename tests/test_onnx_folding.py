"""What the imports fold (lipref/folding.py, lipref/onnx_import/folds.py), against ground
truth: BatchNorm's float64 fold is within its stated bound of the exact fold (computed in
60-digit decimals); elementwise folds are exact where stored as exact (checked in rationals)
and compute what onnx.reference's evaluator computes on the file in float64; NHWC inputs,
transposed flattens and average pools carry the constants and weights to the right place;
what cannot be folded is a one-line error naming the node."""
import re
import warnings
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'lipref[onnx]')")
import array_api_compat.numpy as xp  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from lipref.folding import FoldWarning, fold_batchnorm, rounded_folds  # noqa: E402
from lipref.onnx_import import OnnxImportError, import_onnx_model  # noqa: E402

RNG = numpy.random.default_rng(5)


# ---------------------------------------------------------------- BatchNorm: the bound against the exact fold

def _exact_fold(w, b, g, beta, m, v, eps):
    """W s and (b - m) s + beta, s = g / sqrt(v + eps), in 60-digit decimals (error ~1e-58)."""
    with localcontext() as ctx:
        ctx.prec = 60
        d = [[Decimal(float(x)) for x in numpy.ravel(a)] for a in (g, v, b, m, beta)]
        s = [gi / (vi + Decimal(eps)).sqrt() for gi, vi in zip(d[0], d[1])]
        rows = w.reshape(len(s), -1)
        weight = [[Decimal(float(x)) * si for x in row] for row, si in zip(rows, s)]
        bias = [(bi - mi) * si + be for bi, mi, si, be in zip(d[2], d[3], s, d[4])]
    return weight, bias


floats32 = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(st.integers(1, 3), st.integers(1, 4), st.sampled_from([2.0 ** -60, 1.0, 2.0 ** 60]),
       st.lists(floats32, min_size=30, max_size=30), st.sampled_from([1e-5, 1e-3, 0.0]))
def test_a_batchnorm_fold_is_within_its_stated_bound_of_the_exact_fold(out, fan, scale, values, eps):
    draw = numpy.resize(numpy.asarray(values, dtype=numpy.float32), 8 * out * fan + 8 * out)
    w = (draw[:out * fan].reshape(out, fan) * numpy.float32(scale)).astype(numpy.float32)
    b, g, beta, m = (draw[out * fan + k * out: out * fan + (k + 1) * out] for k in range(4))
    v = numpy.abs(draw[out * fan + 4 * out: out * fan + 5 * out]) + numpy.float32(0.5)
    folded_w, folded_b, bounds = fold_batchnorm(w, b, g, beta, m, v, eps)
    weight, bias = _exact_fold(w, b, g, beta, m, v, eps)
    w_error = max(abs(Decimal(float(x)) - e) for row, erow in zip(folded_w, weight) for x, e in zip(row, erow))
    b_error = max(abs(Decimal(float(x)) - e) for x, e in zip(folded_b, bias))
    assert w_error <= Decimal(bounds["max_weight_error"]) and b_error <= Decimal(bounds["max_bias_error"])
    assert bounds["max_weight_error"] <= 1e-15 * max(1.0, float(numpy.max(numpy.abs(folded_w)))) + 1e-300


# ---------------------------------------------------------------- helper-built graphs

def _init(name, a, dtype=numpy.float32):
    return numpy_helper.from_array(numpy.asarray(a, dtype=dtype), name)


def _save(tmp_path, nodes, inits, in_dims, n_out=3, elem=TensorProto.FLOAT, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, ["N", *in_dims])],
                              [helper.make_tensor_value_info("logits", elem, ["N", n_out])], inits)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _node(op, inputs, output, name, **attrs):
    return helper.make_node(op, inputs, [output], name=name, **attrs)


def _matches_reference(path, model, raw_shape, to_lipref=lambda x: x, rtol=1e-12):
    """The model's logits equal onnx.reference's on the file (in its precision) on random inputs."""
    reference = ReferenceEvaluator(onnx.load(str(path)))
    dtype = numpy.float64 if onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == 11 else numpy.float32
    x = RNG.uniform(-1, 1, (5, *raw_shape)).astype(dtype)
    expected = reference.run(None, {"x": x})[0]
    got = numpy.asarray(model(xp.asarray(to_lipref(x).astype(numpy.float64)), record=False))
    numpy.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * numpy.abs(expected).max())


def _dense_normalised(tmp_path, mean, std, dtype=numpy.float64, elem=TensorProto.DOUBLE, bits=None, name="m.onnx"):
    """(x - mean) / std -> Gemm -> Relu -> Gemm; first weights and bias multiples of 2^-bits (None: any)."""
    def first(shape):
        a = RNG.normal(size=shape)
        return a if bits is None else numpy.round(a * 2 ** bits) / 2 ** bits
    nodes = [_node("Sub", ["x", "mean"], "c", "sub"), _node("Div", ["c", "std"], "n", "div"),
             _node("Gemm", ["n", "w", "b"], "h", "fc", transB=1), _node("Relu", ["h"], "r", "relu"),
             _node("Gemm", ["r", "w2", "b2"], "logits", "out", transB=1)]
    inits = [_init("mean", mean, dtype), _init("std", std, dtype), _init("w", first((6, 4)), dtype),
             _init("b", first(6), dtype), _init("w2", RNG.normal(size=(3, 6)), dtype),
             _init("b2", RNG.normal(size=3), dtype)]
    return _save(tmp_path, nodes, inits, (4,), elem=elem, name=name)


def test_a_normalisation_that_folds_exactly_keeps_float32_and_the_exact_values(tmp_path):
    mean, std = [0.5, 0.25, -1.0, 0.0], [0.5, 2.0, 0.25, 1.0]
    path = _dense_normalised(tmp_path, mean, std, numpy.float32, TensorProto.FLOAT, bits=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FoldWarning)  # an exact fold says nothing
        model = import_onnx_model(path)
    assert model.precision == "float32" and model.metadata["folds"][0]["exact"]  # float32 holds the fold
    wide = import_onnx_model(_dense_normalised(tmp_path, mean, std, numpy.float32, TensorProto.FLOAT, name="w.onnx"))
    assert wide.precision == "float64" and wide.metadata["folds"][0]["exact"]  # the bias's sum needs float64
    w, b = (numpy.asarray(model.parameters()[k].value) for k in ("0.weight", "0.bias"))
    file_w, file_b = (numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer[2:4])
    exact_w = [[Fraction(float(x)) / Fraction(s) for x, s in zip(row, std)] for row in file_w]
    exact_b = [Fraction(float(bi)) - sum(wij * Fraction(m) for wij, m in zip(row, mean))
               for bi, row in zip(file_b, exact_w)]
    assert [[Fraction(float(x)) for x in row] for row in w] == exact_w
    assert [Fraction(float(x)) for x in b] == exact_b
    _matches_reference(path, model, (4,), rtol=1e-6)


@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=4, max_size=4),
       st.lists(st.floats(0.01, 3), min_size=4, max_size=4))
def test_a_normalisation_folds_to_the_files_function_correctly_rounded_and_says_when_it_rounds(mean, std):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as folder:
        path = _dense_normalised(Path(folder), mean, std)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = import_onnx_model(path)
        fold = model.metadata["folds"][0]
        assert fold["input_normalisation"] and bool(rounded_folds(model.metadata)) == (not fold["exact"])
        assert (not fold["exact"]) == any(issubclass(w.category, FoldWarning) for w in caught)
        _matches_reference(path, model, (4,))


def test_a_shift_before_a_padded_conv_is_refused_and_a_scale_is_folded(tmp_path):
    def conv_graph(ops, name):
        nodes = [*ops, _node("Conv", ["n", "w", "b"], "c", "conv", pads=[1, 1, 1, 1]),
                 _node("Flatten", ["c"], "f", "flat"), _node("Gemm", ["f", "w2"], "logits", "out", transB=1)]
        inits = [_init("mean", RNG.normal(size=(1, 2, 1, 1))), _init("std", [[[[0.5]], [[4.0]]]]),
                 _init("w", RNG.normal(size=(3, 2, 3, 3))), _init("b", RNG.normal(size=3)),
                 _init("w2", RNG.normal(size=(3, 3 * 5 * 5)))]
        return _save(tmp_path, nodes, inits, (2, 5, 5), name=name)
    shifted = conv_graph([_node("Sub", ["x", "mean"], "s", "sub"), _node("Div", ["s", "std"], "n", "div")], "a.onnx")
    with pytest.raises(OnnxImportError, match=re.escape("node conv (Conv): Sub sub, Div div shifts the inputs of a "
                                                        "conv with padding 1: its padded zeros")):
        import_onnx_model(shifted)
    scaled = conv_graph([_node("Div", ["x", "std"], "n", "div")], "b.onnx")
    model = import_onnx_model(scaled)
    assert model.precision == "float32" and model.metadata["folds"][0]["exact"]
    _matches_reference(scaled, model, (2, 5, 5), rtol=1e-6)


def test_an_nhwc_input_a_transposed_flatten_and_a_pool_carry_constants_and_columns(tmp_path):
    """Sub / Mul in NHWC before the input Transpose (0, 3, 1, 2), an AveragePool between them
    and the conv, and a flatten of features transposed back to NHWC (Keras's)."""
    nodes = [_node("Sub", ["x", "mean"], "s", "sub"), _node("Mul", ["s", "inv"], "n", "mul"),
             _node("Transpose", ["n"], "t", "to_nchw", perm=[0, 3, 1, 2]),
             _node("AveragePool", ["t"], "p", "pool", kernel_shape=[2, 2], strides=[2, 2]),
             _node("Conv", ["p", "w", "b"], "c", "conv"), _node("Relu", ["c"], "r", "relu"),
             _node("Transpose", ["r"], "back", "to_nhwc", perm=[0, 2, 3, 1]),
             _node("Shape", ["back"], "shape", "shape"), _node("Gather", ["shape", "zero"], "n0", "batch"),
             _node("Unsqueeze", ["n0", "axes"], "n1", "unsq"),
             _node("Concat", ["n1", "minus1"], "target", "cat", axis=0),
             _node("Reshape", ["back", "target"], "f", "flat"), _node("MatMul", ["f", "w2"], "m", "fc"),
             _node("Add", ["m", "b2"], "logits", "bias")]
    inits = [_init("mean", [[[[0.25, -0.5]]]]), _init("inv", [2.0, 0.5]), _init("w", RNG.normal(size=(3, 2, 2, 2))),
             _init("b", RNG.normal(size=3)), _init("zero", 0, numpy.int64), _init("axes", [0], numpy.int64),
             _init("minus1", [-1], numpy.int64), _init("w2", RNG.normal(size=(3 * 5 * 5, 3))),
             _init("b2", RNG.normal(size=3))]
    path = _save(tmp_path, nodes, inits, (12, 12, 2))
    model = import_onnx_model(path)
    assert model.input_shape == (2, 12, 12) and model.metadata["input_layout"] == "NHWC"
    assert [type(layer).__name__ for layer in model.layers] == ["AvgPool2d", "Conv2d", "ReLU", "Flatten", "Linear"]
    assert model.metadata["folds"][0]["exact"] and model.metadata["folds"][0]["into_layer"] == 1
    _matches_reference(path, model, (12, 12, 2), to_lipref=lambda x: x.transpose(0, 3, 1, 2), rtol=1e-5)


def test_onnx_batchnormalization_after_a_gemm_is_folded_and_computes_the_files_function(tmp_path):
    nodes = [_node("Gemm", ["x", "w", "b"], "h", "fc", transB=1),
             _node("BatchNormalization", ["h", "g", "beta", "m", "v"], "n", "bn", epsilon=1e-3),
             _node("Relu", ["n"], "r", "relu"), _node("Gemm", ["r", "w2"], "logits", "out", transB=1)]
    inits = [_init("w", RNG.normal(size=(5, 4))), _init("b", RNG.normal(size=5)), _init("g", RNG.normal(size=5)),
             _init("beta", RNG.normal(size=5)), _init("m", RNG.normal(size=5)), _init("v", RNG.uniform(0.1, 2, 5)),
             _init("w2", RNG.normal(size=(3, 5)))]
    path = _save(tmp_path, nodes, inits, (4,))
    with pytest.warns(FoldWarning, match="BatchNormalization bn folded into layer 0 in float64"):
        model = import_onnx_model(path)
    fold = model.metadata["folds"][0]
    assert model.precision == "float64" and fold["kind"] == "batchnorm" and 0 < fold["max_weight_error"] < 1e-14
    assert fold["epsilon"] == float(numpy.float32(1e-3))  # ONNX's attribute, a float32 number
    assert rounded_folds(model.metadata) == []  # sound mode certifies the folded model
    _matches_reference(path, model, (4,), rtol=1e-6)


def _bn_after(first, attrs=None, var=(1.0, 1.0)):
    nodes = [first, _node("BatchNormalization", ["h", "g", "g", "g", "v"], "n", "bn", **(attrs or {})),
             _node("Gemm", ["n", "w2"], "logits", "out", transB=1)]
    inits = [_init("w", numpy.ones((2, 4))), _init("g", numpy.ones(2)), _init("v", var),
             _init("w2", numpy.ones((3, 2)))]
    return nodes, inits


CANNOT_FOLD = {
    "bn training": (_bn_after(_node("Gemm", ["x", "w"], "h", "fc", transB=1), {"training_mode": 1}),
                    "node bn (BatchNormalization): lipref folds BatchNormalization in inference mode"),
    "bn after relu": (([_node("Gemm", ["x", "w"], "g0", "fc", transB=1), _node("Relu", ["g0"], "h", "relu"),
                        *_bn_after(None)[0][1:]], _bn_after(None)[1]),
                      "node bn (BatchNormalization): lipref folds BatchNormalization only right after a Conv"),
    "bn negative variance": (_bn_after(_node("Gemm", ["x", "w"], "h", "fc", transB=1), var=(1.0, -2.0)),
                             "node bn (BatchNormalization): var + eps is not positive"),
    "divide by the data": (([_node("Div", ["one", "x"], "d", "inv"), _node("Gemm", ["d", "w"], "logits", "fc",
                                                                          transB=1)],
                            [_init("one", 1.0), _init("w", numpy.ones((3, 4)))]),
                           "node inv (Div): c / x is not affine in x"),
    "normalisation before relu": (([_node("Mul", ["x", "two"], "d", "mul"), _node("Relu", ["d"], "r", "relu"),
                                    _node("Gemm", ["r", "w"], "logits", "fc", transB=1)],
                                   [_init("two", 2.0), _init("w", numpy.ones((3, 4)))]),
                                  "node relu (Relu): Mul mul before this node: lipref folds constants"),
    "narrowing cast": (([_node("Cast", ["x"], "c", "cast", to=TensorProto.FLOAT16),
                         _node("Gemm", ["c", "w"], "logits", "fc", transB=1)], [_init("w", numpy.ones((3, 4)))]),
                       "node cast (Cast): a Cast of the data from type 1 to 10"),
}


@pytest.mark.parametrize("case", list(CANNOT_FOLD))
def test_what_cannot_be_folded_is_a_one_line_error_naming_the_node(tmp_path, case):
    (nodes, inits), message = CANNOT_FOLD[case]
    path = _save(tmp_path, nodes, inits, (4,))
    with pytest.raises(OnnxImportError, match=re.escape(message)) as info:
        import_onnx_model(path)
    assert "\n" not in str(info.value)


def test_a_cast_to_the_same_or_a_wider_float_is_read_as_nothing(tmp_path):
    nodes = [_node("Cast", ["x"], "c", "same", to=TensorProto.FLOAT), _node("Cast", ["c"], "d", "wider",
                                                                           to=TensorProto.DOUBLE),
             _node("Identity", ["d"], "i", "id"), _node("Gemm", ["i", "w"], "logits", "fc", transB=1)]
    path = _save(tmp_path, nodes, [_init("w", RNG.normal(size=(3, 4)), numpy.float64)], (4,))
    model = import_onnx_model(path)
    assert [type(layer).__name__ for layer in model.layers] == ["Linear"] and "folds" not in model.metadata


# ---------------------------------------------------------------- the vectorised exact products against Fractions

finite64 = st.floats(allow_nan=False, allow_infinity=False)
factors = st.one_of(
    finite64.filter(lambda v: v != 0).map(Fraction),  # a float64: one IEEE product
    st.floats(1e-3, 1e3).map(lambda v: 1 / Fraction(v)),  # 1 / std: one product and one division
    st.floats(0.5, 1e3, width=32).map(lambda v: Fraction(float(numpy.float32(1 / 255))) * Fraction(v)),  # neither
    st.sampled_from([Fraction(2), Fraction(1, 3), Fraction(3, 2 ** 1000), Fraction(2 ** 1000, 3), Fraction(-7, 5)]))


@given(st.lists(finite64, min_size=1, max_size=12), factors, st.booleans())
def test_scaled_is_scaled_plain_value_for_value(values, factor, single):
    """exact.scaled returns what the Fraction definition returns: the same correctly rounded
    products, the same exactness, the same refusal of an overflow."""
    from lipref.exact import scaled, scaled_plain
    with numpy.errstate(over="ignore"):
        a = numpy.asarray(values, dtype=numpy.float32 if single else numpy.float64)
    a = a[numpy.isfinite(a)]
    fast, plain = scaled(a, factor), scaled_plain(a, factor)
    assert (fast is None) == (plain is None)
    if plain is not None:
        numpy.testing.assert_array_equal(fast[0], plain[0])
        assert fast[1] == plain[1]


def test_exact_row_sums_are_the_exact_sums():
    from lipref.exact import exact_row_sums
    rows = numpy.array([[1e300, 1.0, -1e300, 2.0 ** -1074], [0.1, 0.2, 0.3, -0.6]])
    assert exact_row_sums(rows) == [Fraction(1) + Fraction(2.0 ** -1074), sum(map(Fraction, rows[1]))]
    single = rows[1].astype(numpy.float32)
    assert exact_row_sums(single[None]) == [sum(Fraction(float(v)) for v in single)]
