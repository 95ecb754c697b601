"""`lipref import-onnx` / `lipref.onnx_import`: models written by torch.onnx.export (both
exporters) and by onnx.helper directly, logits checked against onnx.reference's evaluator;
everything outside what lipref reads is a one-line error naming the node."""
import numpy
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'lipref[onnx]')")
import array_api_compat.numpy as xp  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from cli import main  # noqa: E402
from lipref.models import load_model  # noqa: E402
from lipref.onnx_import import OPSET_RANGE, OnnxImportError, import_onnx_model  # noqa: E402

RNG = numpy.random.default_rng(0)


def _logits_match(path, model, batch=3):
    reference = ReferenceEvaluator(onnx.load(str(path)))
    x = RNG.uniform(-1, 1, (batch,) + tuple(model.input_shape)).astype(numpy.float32)
    expected = reference.run(None, {reference.input_names[0]: x})[0]
    got = numpy.asarray(model(xp.asarray(x.astype(numpy.float64)), record=False))
    numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(numpy.max(numpy.abs(expected))))


# ---------------------------------------------------------------- written by torch

def _torch_net(kind):
    torch = pytest.importorskip("torch")
    from official_models import ReLUx, official_model
    if kind == "conv":
        net = official_model(((1, 8, 8), [(4, 3, 1, 1), (6, 4, 2, 1)], [12], 5), "relu")
    elif kind == "dense":
        net = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    else:  # the paper's clipped ReLU, thresholds [1, C, H, W] and [1, F], some negative
        net = official_model(((3, 8, 8), [(4, 3, 1, 1), (4, 4, 2, 1)], [10], 4), "relux")
        with torch.no_grad():
            for module in net:
                if isinstance(module, ReLUx):
                    module.threshold.copy_(torch.randn(module.threshold.shape) * 0.5 + 0.3)
    return net.eval(), torch


@pytest.mark.parametrize("kind", ["conv", "dense", "clipped"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript exporter", "dynamo exporter"])
@pytest.mark.filterwarnings("ignore")
def test_torch_exports_import_with_the_reference_evaluators_logits(tmp_path, kind, dynamo):
    net, torch = _torch_net(kind)
    x = torch.rand((2,) + ((6,) if kind == "dense" else (1 if kind == "conv" else 3, 8, 8)))
    path = tmp_path / f"{kind}.onnx"
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False)
    else:
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    model = import_onnx_model(path)
    expected_activation = "clipped_relu" if kind == "clipped" else "relu"
    assert model.metadata["activation"] == expected_activation
    _logits_match(path, model, batch=2)
    if kind == "clipped":
        thresholds = [numpy.asarray(v.value) for k, v in model.parameters().items() if k.endswith("threshold")]
        assert thresholds and all(numpy.all(t >= 0) for t in thresholds)  # negative ones raised to 0


# ---------------------------------------------------------------- written by onnx.helper

def _init(name, a):
    return numpy_helper.from_array(numpy.asarray(a, dtype=numpy.float32), name)


def _model(nodes, inits, in_shape, out_name="logits", opset=17, n_out=3):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", n_out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _conv_gemm_clip(opset=17, extra_nodes=(), conv_attrs=None):
    """Conv -> Clip(0, 0.7) -> Reshape(0, -1) via a Constant node -> Gemm(transB) -> Relu ->
    MatMul + Add."""
    w, b = RNG.normal(size=(4, 2, 3, 3)), RNG.normal(size=4)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]) | (conv_attrs or {})
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", **attrs),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="clip"),
        helper.make_node("Constant", [], ["shape"], name="shape",
                         value=numpy_helper.from_array(numpy.array([0, -1], dtype=numpy.int64))),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        *extra_nodes,
        helper.make_node("MatMul", ["hr", "w2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "b2"], ["logits"], name="bias2"),
    ]
    inits = [_init("w", w), _init("b", b), _init("lo", 0.0), _init("hi", 0.7), _init("w1", RNG.normal(size=(5, 64))),
             _init("b1", RNG.normal(size=5)), _init("w2", RNG.normal(size=(5, 3))), _init("b2", RNG.normal(size=3))]
    return _model(nodes, inits, (2, 8, 8), opset=opset)


def test_a_helper_written_model_imports_and_round_trips_through_a_file(tmp_path):
    path = _save(tmp_path, _conv_gemm_clip())
    out = tmp_path / "m.npz"
    result = CliRunner().invoke(main, ["import-onnx", str(path), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = load_model(out, xp, xp.float64)
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2d", "ClippedReLU", "Flatten", "Linear", "ReLU",
                                                                "Linear"]
    _logits_match(path, model)
    _logits_match(path, import_onnx_model(path))


def test_min_then_relu_is_a_per_neuron_clipped_relu(tmp_path):
    t = RNG.normal(size=(1, 6))
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Min", ["h", "t"], ["m"], name="min"),
             helper.make_node("Relu", ["m"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="out", transB=1)]
    inits = [_init("w", RNG.normal(size=(6, 4))), _init("b", RNG.normal(size=6)), _init("t", t),
             _init("w2", RNG.normal(size=(3, 6))), _init("b2", RNG.normal(size=3))]
    path = _save(tmp_path, _model(nodes, inits, (4,)))
    model = import_onnx_model(path)
    numpy.testing.assert_allclose(numpy.asarray(model.parameters()["1.threshold"].value),
                                  numpy.maximum(t[0], 0).astype(numpy.float32))
    _logits_match(path, model, batch=20)


@pytest.mark.parametrize("change, message", [
    (lambda: _conv_gemm_clip(extra_nodes=[helper.make_node("Sigmoid", ["hr"], ["hr"], name="squash")]),
     "node squash (Sigmoid): op type not supported"),
    (lambda: _conv_gemm_clip(conv_attrs={"group": 2}), "node conv (Conv): group 2"),
    (lambda: _conv_gemm_clip(conv_attrs={"dilations": [2, 2]}), "node conv (Conv): group 1, dilations [2, 2]"),
    (lambda: _conv_gemm_clip(opset=OPSET_RANGE[0] - 1), f"opset {OPSET_RANGE[0] - 1}"),
])
def test_what_lipref_does_not_read_is_a_one_line_error_naming_the_node(tmp_path, change, message):
    path = _save(tmp_path, change())
    with pytest.raises(OnnxImportError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
                       .replace("]", r"\]")):
        import_onnx_model(path)
    result = CliRunner().invoke(main, ["import-onnx", str(path), "--out", str(tmp_path / "o.npz")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output


def test_a_graph_that_does_not_end_in_a_linear_layer_is_an_error(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Relu", ["h"], ["logits"], name="relu")]
    path = _save(tmp_path, _model(nodes, [_init("w", RNG.normal(size=(3, 4))), _init("b", numpy.zeros(3))], (4,)))
    with pytest.raises(OnnxImportError, match="last layer must be linear"):
        import_onnx_model(path)


def test_missing_and_unreadable_files_are_errors(tmp_path):
    with pytest.raises(OnnxImportError, match="no such ONNX file"):
        import_onnx_model(tmp_path / "nothing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(OnnxImportError, match="not a readable ONNX model"):
        import_onnx_model(junk)


def test_certify_takes_an_onnx_file(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "w", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="out", transB=1)]
    inits = [_init("w", RNG.normal(size=(16, 784)) / 28), _init("b", numpy.zeros(16)),
             _init("w2", RNG.normal(size=(10, 16))), _init("b2", numpy.zeros(10))]
    path = _save(tmp_path, _model(nodes, inits, (1, 28, 28), n_out=10))
    result = CliRunner().invoke(main, ["certify", str(path), "--limit", "8", "--eps", "0.1", "--pgd-steps", "2",
                                       "--quiet", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
