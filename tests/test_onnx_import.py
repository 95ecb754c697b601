"""`lipref.onnx_import` (and `lipref import-onnx`): models written by torch.onnx.export (both
exporters, and the legacy one at the lowest opset read) and by onnx.helper directly, logits
checked against onnx.reference's evaluator; everything outside what lipref reads is a
one-line error naming the node."""
import re
import sys

import numpy
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'lipref[onnx]')")
import array_api_compat.numpy as xp  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from lipref.models import load_model  # noqa: E402
from lipref.onnx_import import OPSET_RANGE, OnnxImportError, import_onnx_model  # noqa: E402

RNG = numpy.random.default_rng(0)
LATEST = min(OPSET_RANGE[1], onnx.defs.onnx_opset_version())  # the highest opset this onnx can evaluate


def _logits_match(path, model, batch=3):
    """The imported model's logits equal the ONNX reference evaluator's on random inputs."""
    reference = ReferenceEvaluator(onnx.load(str(path)))
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value or batch  # a fixed batch size (the dynamo exporter's)
    x = RNG.uniform(-1, 1, (batch,) + tuple(model.input_shape)).astype(numpy.float32)
    expected = reference.run(None, {reference.input_names[0]: x})[0]
    got = numpy.asarray(model(xp.asarray(x), record=False))
    assert got.dtype == numpy.float32 and got.shape == expected.shape
    numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(numpy.max(numpy.abs(expected)))))


def _kinds(model):
    return [type(layer).__name__ for layer in model.layers]


# ---------------------------------------------------------------- written by torch

def _torch_net(kind):
    """A small conv net (k3 s1 p1, k4 s2 p1, fc), a dense net, or the conv net with the
    official clipped ReLU (thresholds [1, C, H, W] and [1, F], some negative)."""
    torch = pytest.importorskip("torch")
    from official_models import ReLUx, official_model
    torch.manual_seed(0)
    if kind == "dense":
        return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3)).eval(), (6,)
    net = official_model(((3, 8, 8), [(4, 3, 1, 1), (6, 4, 2, 1)], [12], 5), "relux" if kind == "clipped" else "relu")
    with torch.no_grad():
        for module in net:
            if isinstance(module, ReLUx):
                module.threshold.copy_(torch.randn(module.threshold.shape) * 0.5 + 0.2)
    return net.eval(), (3, 8, 8)


def _export(tmp_path, kind, exporter):
    net, shape = _torch_net(kind)
    import torch
    x = torch.rand((2,) + shape)
    path = tmp_path / f"{kind}.onnx"
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
        torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False)
    else:
        opset = OPSET_RANGE[0] if exporter == "legacy-lowest" else None
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}},
                          opset_version=opset)
    return net, path


@pytest.mark.parametrize("kind", ["conv", "dense", "clipped"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo", "legacy-lowest"])
@pytest.mark.filterwarnings("ignore")
def test_torch_exports_import_with_the_reference_evaluators_logits(tmp_path, kind, exporter):
    net, path = _export(tmp_path, kind, exporter)
    model = import_onnx_model(path)
    dense = kind == "dense"
    assert model.metadata == {"arch": "onnx", "activation": "clipped_relu" if kind == "clipped" else "relu",
                              "input_shape": [6] if dense else [3, 8, 8], "n_classes": 3 if dense else 5,
                              "threshold_init": 1.0, "imported_from": path.name,
                              "input_layout": "ND" if dense else "NCHW"}
    act = "ClippedReLU" if kind == "clipped" else "ReLU"
    if dense:
        assert _kinds(model) == ["Linear", act, "Linear"]
    else:
        assert _kinds(model) == ["Conv2d", act, "Conv2d", act, "Flatten", "Linear", act, "Linear"]
        assert [(c.kernel_size, c.stride, c.padding) for c in model.layers[:4:2]] == [(3, 1, 1), (4, 2, 1)]
    _logits_match(path, model)
    if kind == "clipped":  # the torch thresholds, their negative entries raised to 0
        params = {k: numpy.asarray(v.value) for k, v in model.parameters().items()}
        for index, module in enumerate(net):
            if hasattr(module, "threshold"):
                t = module.threshold.detach().numpy()[0]
                assert (t < 0).any() and params[f"{index}.threshold"].shape == t.shape
                numpy.testing.assert_array_equal(params[f"{index}.threshold"], numpy.maximum(t, 0))


# ---------------------------------------------------------------- written by onnx.helper

def _init(name, a, dtype=numpy.float32):
    return numpy_helper.from_array(numpy.asarray(a, dtype=dtype), name)


def _model(nodes, inits, in_shape, opset=17, n_out=3, inputs=None, out_name="logits"):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                                                                 ["N", n_out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _clip(name, x, out, opset, high=None):
    """Clip(x, 0[, high]): bounds as inputs from opset 11, attributes before."""
    if opset < 11:
        return helper.make_node("Clip", [x], [out], name=name, min=0.0, **({} if high is None else {"max": high}))
    return helper.make_node("Clip", [x, name + "_lo"] + ([] if high is None else [name + "_hi"]), [out], name=name)


def _clip_inits(name, opset, high=None):
    return [] if opset < 11 else [_init(name + "_lo", 0.0)] + ([] if high is None else [_init(name + "_hi", high)])


def _conv_chain(opset=17, extra_nodes=(), conv_attrs=None, conv_weight=(4, 2, 3, 3), tail=None):
    """Conv -> Clip(0, 0.7) -> Reshape(0, -1) via a Constant node -> Gemm(transB 1) -> Dropout
    -> Relu -> [extra] -> MatMul + Add."""
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]) | (conv_attrs or {})
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", **attrs),
        _clip("clip", "c", "r", opset, high=0.7),
        helper.make_node("Constant", [], ["shape"], name="shape",
                         value=numpy_helper.from_array(numpy.array([0, -1], dtype=numpy.int64))),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Dropout", ["h"], ["d"], name="drop"),
        helper.make_node("Relu", ["d"], ["hr"], name="relu"),
        *extra_nodes,
        *(tail or [helper.make_node("MatMul", ["hr", "w2"], ["m"], name="fc2"),
                   helper.make_node("Add", ["m", "b2"], ["logits"], name="bias2")]),
    ]
    inits = [_init("w", RNG.normal(size=conv_weight)), _init("b", RNG.normal(size=4)),
             *_clip_inits("clip", opset, 0.7), _init("w1", RNG.normal(size=(5, 64))),
             _init("b1", RNG.normal(size=(1, 5))), _init("w2", RNG.normal(size=(5, 3))),
             _init("b2", RNG.normal(size=3))]
    return _model(nodes, inits, (2, 8, 8), opset=opset)


@pytest.mark.parametrize("opset", sorted({OPSET_RANGE[0], 10, 11, 13, LATEST}))
def test_a_helper_written_conv_chain_imports_at_every_opset_and_round_trips_through_save(tmp_path, opset):
    path = _save(tmp_path, _conv_chain(opset))
    out = tmp_path / "m.npz"
    model = import_onnx_model(path, out_path=out)
    assert _kinds(model) == ["Conv2d", "ClippedReLU", "Flatten", "Linear", "ReLU", "Linear"]
    numpy.testing.assert_array_equal(numpy.asarray(model.parameters()["1.threshold"].value),
                                     numpy.full((4, 4, 4), 0.7, dtype=numpy.float32))
    _logits_match(path, model)
    loaded = load_model(out, xp, xp.float32)
    assert loaded.metadata == model.metadata and loaded.spec() == model.spec()
    for name, var in model.parameters().items():
        numpy.testing.assert_array_equal(numpy.asarray(loaded.parameters()[name].value), numpy.asarray(var.value))
    _logits_match(path, loaded)


def _dense(nodes, inits, n_in=4, opset=17):
    """A dense graph x (N, n_in) -> nodes -> logits (N, 3)."""
    return _model(nodes, inits, (n_in,), opset=opset)


def test_min_then_relu_clip_or_max_is_a_per_neuron_clipped_relu_negative_thresholds_raised_to_0(tmp_path):
    t1, t2 = RNG.normal(size=(1, 6)), RNG.normal(size=(6,))
    t1[0, :2], t2[:2] = -0.5, -1.0
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Min", ["t1", "h"], ["m"], name="min"),  # the constant first: Min commutes
             helper.make_node("Relu", ["m"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w1"], ["h1"], name="fc1", transB=0),  # no bias, weight (in, out)
             helper.make_node("Min", ["h1", "t2"], ["m1"], name="min1"),
             helper.make_node("Max", ["m1", "zero"], ["r1"], name="max1"),
             helper.make_node("Gemm", ["r1", "w2"], ["h2"], name="fc2", transB=1),
             helper.make_node("Min", ["h2", "t3"], ["m2"], name="min2"),  # a scalar T, then Clip(0, 0.4)
             _clip("clip", "m2", "r2", 17, high=0.4),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["logits"], name="out", transB=1)]
    inits = [_init("w", RNG.normal(size=(6, 4))), _init("b", RNG.normal(size=6)), _init("t1", t1),
             _init("w1", RNG.normal(size=(6, 6))), _init("t2", t2), _init("zero", 0.0),
             _init("w2", RNG.normal(size=(6, 6))), _init("t3", 0.9), *_clip_inits("clip", 17, 0.4),
             _init("w3", RNG.normal(size=(3, 6))), _init("b3", 0.25)]  # a scalar Gemm bias
    path = _save(tmp_path, _dense(nodes, inits))
    model = import_onnx_model(path)
    assert _kinds(model) == ["Linear", "ClippedReLU"] * 3 + ["Linear"]
    params = {k: numpy.asarray(v.value) for k, v in model.parameters().items()}
    numpy.testing.assert_array_equal(params["1.threshold"], numpy.maximum(t1[0], 0).astype(numpy.float32))
    numpy.testing.assert_array_equal(params["3.threshold"], numpy.maximum(t2, 0).astype(numpy.float32))
    numpy.testing.assert_array_equal(params["5.threshold"], numpy.full(6, 0.4, dtype=numpy.float32))
    numpy.testing.assert_array_equal(params["6.bias"], numpy.full(3, 0.25, dtype=numpy.float32))
    _logits_match(path, model, batch=50)


def test_the_official_clipped_relu_on_conv_features_and_a_per_channel_add(tmp_path):
    t = RNG.normal(size=(1, 3, 6, 6))
    t[0, 0, :2] = -0.3
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", auto_pad="VALID"),  # no bias, 8 -> 6
             helper.make_node("Add", ["c", "cb"], ["cc"], name="conv_bias"),
             helper.make_node("Min", ["cc", "t"], ["m"], name="min"),
             _clip("relu", "m", "r", 17),  # Clip(min 0) without max
             helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1),
             helper.make_node("MatMul", ["f", "w1"], ["h"], name="fc"),
             helper.make_node("Identity", ["h"], ["logits"], name="id")]
    inits = [_init("w", RNG.normal(size=(3, 2, 3, 3))), _init("cb", RNG.normal(size=(1, 3, 1, 1))), _init("t", t),
             *_clip_inits("relu", 17), _init("w1", RNG.normal(size=(108, 3)))]
    path = _save(tmp_path, _model(nodes, inits, (2, 8, 8)))
    model = import_onnx_model(path)
    assert _kinds(model) == ["Conv2d", "ClippedReLU", "Flatten", "Linear"] and model.layers[0].padding == 0
    numpy.testing.assert_array_equal(numpy.asarray(model.parameters()["1.threshold"].value),
                                     numpy.maximum(t[0], 0).astype(numpy.float32))
    _logits_match(path, model, batch=20)


def test_reshape_to_minus_one_features_a_fixed_batch_size_and_constant_nodes(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["f"], name="flat"),
             helper.make_node("Constant", [], ["w"], name="weight", value=_init("w", RNG.normal(size=(3, 12)))),
             helper.make_node("Constant", [], ["b"], name="bias", value_floats=[0.5, -1.0, 2.0]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], name="fc", transB=1)]
    inits = [_init("shape", [-1, 12], numpy.int64)]
    fixed = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 2, 2])]
    path = _save(tmp_path, _model(nodes, inits, (3, 2, 2), inputs=fixed))
    model = import_onnx_model(path)
    assert _kinds(model) == ["Flatten", "Linear"] and model.input_shape == (3, 2, 2)
    numpy.testing.assert_array_equal(numpy.asarray(model.parameters()["1.bias"].value), [0.5, -1.0, 2.0])
    _logits_match(path, model)


# ---------------------------------------------------------------- what lipref does not read

def _node(op, inputs, output, name, **attrs):
    return helper.make_node(op, inputs, [output], name=name, **attrs)


def _one_layer_then(node, inits=()):
    """Gemm -> `node` (on "h", giving "logits")."""
    return _dense([_node("Gemm", ["x", "w", "b"], "h", "fc", transB=1), node],
                  [_init("w", RNG.normal(size=(3, 4))), _init("b", numpy.zeros(3)), *inits])


def _two_inputs():
    model = _dense([_node("Add", ["x", "y"], "s", "sum"), _node("Gemm", ["s", "w"], "logits", "fc", transB=1)],
                   [_init("w", RNG.normal(size=(3, 4)))])
    model.graph.input.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]))
    return model


def _residual():
    return _dense([_node("Gemm", ["x", "w", "b"], "h", "fc", transB=1), _node("Relu", ["h"], "r", "relu"),
                   _node("Add", ["r", "h"], "s", "skip"), _node("Gemm", ["s", "w2"], "logits", "out", transB=1)],
                  [_init("w", RNG.normal(size=(4, 4))), _init("b", numpy.zeros(4)), _init("w2", RNG.normal(size=(3, 4)))])


def _nan_weight():
    model = _conv_chain()
    w = numpy_helper.to_array(model.graph.initializer[4]).copy()
    w[0, 0] = numpy.nan
    model.graph.initializer[4].CopyFrom(_init("w1", w))
    return model


ERRORS = {
    "sigmoid": (lambda: _conv_chain(extra_nodes=[_node("Sigmoid", ["hr"], "hr2", "squash")], tail=[
        _node("MatMul", ["hr2", "w2"], "m", "fc2"), _node("Add", ["m", "b2"], "logits", "bias2")]),
        "node squash (Sigmoid): op type not supported"),
    "group": (lambda: _conv_chain(conv_attrs={"group": 2}, conv_weight=(4, 1, 3, 3)), "node conv (Conv): group 2"),
    "dilation": (lambda: _conv_chain(conv_attrs={"dilations": [2, 2]}), "node conv (Conv): group 1, dilations [2, 2]"),
    "rectangular kernel": (lambda: _conv_chain(conv_attrs={"pads": [1, 0, 1, 0]}), "node conv (Conv): kernel [3, 3], "
                           "strides [2, 2], pads [1, 0, 1, 0]: lipref reads square kernels"),
    "auto_pad same": (lambda: _conv_chain(conv_attrs={"auto_pad": "SAME_UPPER", "pads": None}),
                      "node conv (Conv): auto_pad SAME_UPPER"),
    "opset too low": (lambda: _conv_chain(opset=OPSET_RANGE[0] - 1), f"default-domain opset {OPSET_RANGE[0] - 1}; "
                      f"lipref reads opsets {OPSET_RANGE[0]} to {OPSET_RANGE[1]}"),
    "opset too high": (lambda: _conv_chain(opset=OPSET_RANGE[1] + 1), f"default-domain opset {OPSET_RANGE[1] + 1};"),
    "ends in relu": (lambda: _one_layer_then(_node("Relu", ["h"], "logits", "last_relu")),
                     "the graph ends with node last_relu (Relu); lipref needs the logits computed by a linear layer"),
    "softmax": (lambda: _one_layer_then(_node("Softmax", ["h"], "logits", "probs")),
                "node probs (Softmax): op type not supported (export the logits without it)"),
    "batchnorm": (lambda: _dense([_node("BatchNormalization", ["x", "s", "s", "s", "s"], "logits", "bn")],
                                 [_init("s", numpy.ones(4))]), "node bn (BatchNormalization): lipref folds BatchNormalization only right "
                  "after a Conv, Gemm or MatMul"),
    "unnamed node": (lambda: _one_layer_then(helper.make_node("Tanh", ["h"], ["logits"])), "node #1 (Tanh)"),
    "other domain": (lambda: _one_layer_then(helper.make_node("Relu", ["h"], ["logits"], name="r", domain="my.ops")),
                     "node r (Relu): op of domain my.ops not supported"),
    "branch": (_residual, "node skip (Add): not on the chain"),
    "two inputs": (_two_inputs, "the graph must have one input, found 2 (x, y)"),
    "gemm alpha": (lambda: _dense([_node("Gemm", ["x", "w"], "logits", "fc", transB=1, alpha=2.0)],
                                  [_init("w", numpy.ones((3, 4)))]), "node fc (Gemm): alpha 2.0, beta 1.0, transA 0"),
    "weight on the left": (lambda: _dense([_node("MatMul", ["w", "x"], "logits", "fc")], [_init("w", numpy.ones((3, 3)))],
                                          n_in=3), "node fc (MatMul): not on the chain"),
    "flatten axis": (lambda: _dense([_node("Flatten", ["x"], "f", "flat", axis=0), _node("Gemm", ["f", "w"], "logits",
                     "fc", transB=1)], [_init("w", numpy.ones((3, 4)))]), "node flat (Flatten): axis 0"),
    "reshape": (lambda: _model([_node("Reshape", ["x", "s"], "f", "flat"), _node("Gemm", ["f", "w"], "logits", "fc")],
                               [_init("s", [0, 2, -1], numpy.int64), _init("w", numpy.ones((8, 3)))], (2, 2, 2)),
                "node flat (Reshape): target shape [0, 2, -1]: lipref reads Reshape to (N, -1) only"),
    "clip min": (lambda: _one_layer_then(_node("Clip", ["h"], "logits", "clip", min=-1.0)), "node clip (Clip): Clip "
                 "with min -1.0", ),
    "clip max negative": (lambda: _one_layer_then(_node("Clip", ["h", "lo", "hi"], "logits", "clip"),
                                                  [_init("lo", 0.0), _init("hi", -0.5)]),
                          "node clip (Clip): Clip with max -0.5"),
    "min without relu": (lambda: _one_layer_then(_node("Min", ["h", "t"], "logits", "min"), [_init("t", 1.0)]),
                         "the graph's one output must be the logits of its last layer"),
    "min then gemm": (lambda: _dense([_node("Min", ["x", "t"], "m", "min"), _node("Gemm", ["m", "w"], "logits", "fc",
                                      transB=1)], [_init("t", 1.0), _init("w", numpy.ones((3, 4)))]),
                      r"node fc (Gemm): a Min(x, T) must be followed by Relu, Clip(min 0) or Max(., 0)"),
    "max not zero": (lambda: _one_layer_then(_node("Max", ["h", "c"], "logits", "max"), [_init("c", 0.5)]),
                     "node max (Max): lipref reads Max only as Max(x, 0)"),
    "weight shape": (lambda: _dense([_node("Gemm", ["x", "w"], "logits", "fc", transB=1)], [_init("w", numpy.ones((3,
                     5)))]), r"node fc (Gemm): weight (out, in) (3, 5) does not fit its input (4,)"),
    "nan weight": (_nan_weight, "node fc1 (Gemm): weight w1 contains NaN or inf"),
    "bias sum overflows": (lambda: _dense([_node("Gemm", ["x", "w", "b"], "h", "fc", transB=1),
                                           _node("Add", ["h", "c"], "logits", "add")],
                                          [_init("w", numpy.ones((3, 4)), numpy.float64),
                                           _init("b", numpy.full(3, 1e308), numpy.float64),
                                           _init("c", 1e308, numpy.float64)]),
                           "node add (Add): Add add folded into layer 0 gives values beyond float64"),
    "string constant": (lambda: _dense([helper.make_node("Constant", [], ["s"], name="text", value_string="hi"),
                                        _node("Gemm", ["x", "w"], "logits", "fc", transB=1)],
                                       [_init("w", numpy.ones((3, 4)))]), "node text (Constant): attribute value_string"),
    "bad gather": (lambda: _model([_node("Shape", ["x"], "s", "shape"), _node("Gather", ["s", "i"], "g", "gather"),
                                   _node("Flatten", ["x"], "f", "flat"), _node("Gemm", ["f", "w"], "logits", "fc",
                                   transB=1)], [_init("i", 7, numpy.int64), _init("w", numpy.ones((3, 8)))], (2, 2, 2)),
                   "node gather (Gather): constant arithmetic lipref cannot evaluate (IndexError"),
    "training dropout": (lambda: _one_layer_then(_node("Dropout", ["h", "ratio", "train"], "logits", "drop"),
                                                 [_init("ratio", 0.5), _init("train", True, numpy.bool_)]),
                         "node drop (Dropout): training_mode is true"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_what_lipref_does_not_read_is_a_one_line_error_naming_the_node(tmp_path, case):
    make, message = ERRORS[case]
    path = _save(tmp_path, make())
    with pytest.raises(OnnxImportError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)) as info:
        import_onnx_model(path)
    assert "\n" not in str(info.value)


def test_missing_and_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(OnnxImportError, match="nothing.onnx: no such ONNX file"):
        import_onnx_model(tmp_path / "nothing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a protobuf at all\n" * 10)
    with pytest.raises(OnnxImportError, match="junk.onnx: not a readable ONNX model") as info:
        import_onnx_model(junk)
    assert "\n" not in str(info.value)
    (tmp_path / "empty.onnx").write_bytes(b"")  # parses as an empty ModelProto
    with pytest.raises(OnnxImportError, match="empty.onnx: not an ONNX model"):
        import_onnx_model(tmp_path / "empty.onnx")


def test_without_onnx_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    from lipref.onnx_import import ONNX_MISSING, OnnxNotInstalled
    path = _save(tmp_path, _conv_chain())
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(OnnxNotInstalled, match=re.escape(ONNX_MISSING)):
        import_onnx_model(path)


# ---------------------------------------------------------------- the command line

def test_import_onnx_and_certify_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from cli import main
    path = _save(tmp_path, _model([_node("Flatten", ["x"], "f", "flat", axis=1),
                                   _node("Gemm", ["f", "w", "b"], "h", "fc", transB=1), _node("Relu", ["h"], "r", "relu"),
                                   _node("Gemm", ["r", "w2", "b2"], "logits", "out", transB=1)],
                                  [_init("w", RNG.normal(size=(16, 784)) / 28), _init("b", numpy.zeros(16)),
                                   _init("w2", RNG.normal(size=(10, 16))), _init("b2", numpy.zeros(10))],
                                  (1, 28, 28), n_out=10))
    out = tmp_path / "m.npz"
    result = CliRunner().invoke(main, ["import-onnx", str(path), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and out.exists(), result.output
    result = CliRunner().invoke(main, ["certify", str(path), "--limit", "8", "--eps", "0.1", "--pgd-steps", "2",
                                       "--quiet", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    bad = _save(tmp_path, _one_layer_then(_node("Sigmoid", ["h"], "logits", "squash")), "bad.onnx")
    result = CliRunner().invoke(main, ["import-onnx", str(bad), "--out", str(tmp_path / "o.npz")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "squash (Sigmoid)" in lines[0], result.output
