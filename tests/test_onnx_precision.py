"""The model certified is the model in the ONNX file: DOUBLE initializers stay float64 (on
NumPy and array-api-strict), sound mode certifies the file's model, and no eps at which the
file's own model (onnx.reference's evaluator, in float64) changes class is ever certified.

The models are built so that float32 rounding matters (tests/rounding_models.py): rounded
to float32 they predict class 0 everywhere, while the file's model changes class at a finite
distance."""
import json
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'lipref[onnx]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from rounding_models import nearest_counterexample, rounding_sensitive_weights  # noqa: E402

from lipref.certification import CertifyConfig, certify  # noqa: E402
from lipref.importing import load_any_model  # noqa: E402
from lipref.models import load_model  # noqa: E402
from lipref.onnx_import import import_onnx_model  # noqa: E402

LIPREF = str(Path(sys.executable).with_name("lipref"))


def _graph(nodes, inits, in_dims, n_out, elem=TensorProto.DOUBLE):
    inputs = [helper.make_tensor_value_info("x", elem, ["N", *in_dims])]
    outputs = [helper.make_tensor_value_info("logits", elem, ["N", n_out])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def minimal_model():
    """The issue's case: Flatten -> Gemm, W = [[1 + 2^-30, 0], [1, 0]], b = [2^-35, 0] (DOUBLE),
    input (N, 1, 1, 2): margin 2^-35 - 2^-30 x0 for class 0, certified radius 2^-5 at x = 0."""
    w = numpy.array([[1 + 2.0 ** -30, 0.0], [1.0, 0.0]])
    b = numpy.array([2.0 ** -35, 0.0])
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    return _graph(nodes, {"w": w, "b": b}, (1, 1, 2), 2)


def _run_reference(model, x):
    reference = ReferenceEvaluator(model)
    return reference.run(None, {"x": x})[0]


def test_the_minimal_float64_model_keeps_its_values_and_is_not_certified_where_it_changes_class(tmp_path, xp):
    path = tmp_path / "minimal.onnx"
    onnx.save(minimal_model(), str(path))
    x = numpy.zeros((1, 1, 1, 2))
    counterexample = numpy.array([[[[-1.5, 0.0]]]])  # at distance 1.5 < 2
    assert numpy.argmax(_run_reference(minimal_model(), x)) == 0
    assert numpy.argmax(_run_reference(minimal_model(), counterexample)) == 1
    model = load_any_model(path, xp, xp.float64)  # what sound mode computes in
    values = {k: numpy.asarray(v.value) for k, v in model.parameters().items()}
    assert values["1.weight"][0, 0] == 1 + 2.0 ** -30 and values["1.bias"][0] == 2.0 ** -35
    at_2 = certify(model, x, numpy.array([0]), 2.0, CertifyConfig(mode="sound", n_iters=5, pgd_steps=0), seed=0)
    assert not at_2.certified_local[0] and not at_2.certified_global[0]
    within = certify(model, x, numpy.array([0]), 0.03, CertifyConfig(mode="sound", n_iters=5, pgd_steps=0), seed=0)  # below the radius 2^-5
    assert within.certified_local[0], "the exact model is certified inside its radius: the test can fail"
    native = load_any_model(path, xp)  # no dtype: the file's precision
    assert native.precision == "float64" and numpy.asarray(native.parameters()["1.weight"].value).dtype == "float64"


def _cli(*args):
    return subprocess.run([LIPREF, *args], capture_output=True, text=True, timeout=300)


def test_certify_on_the_minimal_file_sound_and_fast_and_the_rounded_model_said_so(tmp_path):
    path, data = tmp_path / "minimal.onnx", tmp_path / "data.npz"
    onnx.save(minimal_model(), str(path))
    numpy.savez(data, images=numpy.zeros((1, 1, 1, 2)), labels=numpy.array([0]))
    common = [str(path), "--data", str(data), "--eps", "2", "--pgd-steps", "0", "--quiet", "--json"]
    for extra in (["--mode", "sound", "--seed", "1"], []):
        run = _cli("certify", *common, *extra)
        doc = json.loads(run.stdout)
        assert run.returncode == 0 and doc["certified_accuracy_local"] == 0.0, run.stderr
        assert doc["dtype"] == "float64" and doc["model_rounded"] is False and run.stderr == ""
    rounded = _cli("certify", *common, "--dtype", "float32")
    doc = json.loads(rounded.stdout)
    assert doc["dtype"] == "float32" and doc["model_rounded"] is True and doc["certified_accuracy_local"] == 1.0
    lines = rounded.stderr.strip().splitlines()
    assert len(lines) == 1 and "the model certified is the rounded one, not the file's" in lines[0]
    assert "1.weight" in lines[0]
    refused = _cli("certify", *common, "--mode", "sound", "--dtype", "float32")
    assert refused.returncode == 2 and "cannot be sound" in refused.stderr


def random_float64_model(seed):
    """Gemm -> Relu -> Gemm on (N, 5) inputs, DOUBLE, with rounding_models' weights."""
    w1, b1, w2, b2 = rounding_sensitive_weights(seed)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1)]
    return _graph(nodes, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, (5,), 3)


@pytest.mark.parametrize("seed", range(3))
def test_random_float64_models_are_never_certified_beyond_a_counterexample_of_the_file(tmp_path, xp, seed):
    proto = random_float64_model(seed)
    path = tmp_path / "random.onnx"
    onnx.save(proto, str(path))
    x = numpy.zeros((1, 5))
    assert numpy.argmax(_run_reference(proto, x)) == 0
    found = nearest_counterexample(lambda p: _run_reference(proto, p), x, 0, numpy.random.default_rng(seed))
    logits = _run_reference(proto, found)[0]
    assert numpy.argmax(logits) != 0 and logits.max() - logits[0] > 0  # the file's own model, in float64
    distance = float(numpy.linalg.norm(found - x))
    model = load_any_model(path, xp, xp.float64)
    result = certify(model, x, numpy.array([0]), distance * 1.001, CertifyConfig(mode="sound", n_iters=10, pgd_steps=0), seed=seed)
    assert not result.certified_local[0] and not result.certified_global[0]


def test_float32_graph_with_an_add_whose_sum_needs_float64_keeps_the_exact_sum(tmp_path):
    """b = 1 and c = 2^-30 are float32 numbers; b + c is not, so the model is float64."""
    w = numpy.eye(2, dtype=numpy.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
             helper.make_node("Add", ["h", "c"], ["logits"])]
    proto = _graph(nodes, {"w": w, "b": numpy.ones(2, numpy.float32), "c": numpy.float32([2.0 ** -30, 0])}, (2,), 2,
                   TensorProto.FLOAT)
    onnx.save(proto, str(tmp_path / "add.onnx"))
    model = import_onnx_model(tmp_path / "add.onnx", out_path=tmp_path / "add.npz")
    assert model.precision == "float64"
    numpy.testing.assert_array_equal(numpy.asarray(model.parameters()["0.bias"].value), [1 + 2.0 ** -30, 1.0])
    assert numpy.asarray(model.parameters()["0.weight"].value).dtype == numpy.float64  # one precision per model


def test_import_onnx_writes_float64_and_the_npz_round_trips_bit_for_bit(tmp_path, xp):
    proto = random_float64_model(7)
    onnx.save(proto, str(tmp_path / "r.onnx"))
    run = _cli("import-onnx", str(tmp_path / "r.onnx"), "--out", str(tmp_path / "r.npz"))
    assert run.returncode == 0 and "float64" in run.stdout, run.stderr
    loaded = load_model(tmp_path / "r.npz", xp)
    files = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    values = {k: numpy.asarray(v.value) for k, v in loaded.parameters().items()}
    assert all(v.dtype == numpy.float64 for v in values.values()) and loaded.precision == "float64"
    numpy.testing.assert_array_equal(values["0.weight"], files["w1"])
    numpy.testing.assert_array_equal(values["2.weight"], files["w2"])
    numpy.testing.assert_array_equal(values["2.bias"], files["b2"])
