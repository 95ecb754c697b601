"""Hostile ONNX files (built with onnx.helper): each one is one line on stderr and exit code 2
from `lipref import-onnx` in a fresh process, never a traceback; a constant that declares 2^40
entries is refused before anything is allocated. And a model whose input is (N, D) is
certified on (N, D) data, or told exactly which layout to give."""
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'lipref[onnx]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lipref.onnx_import import OnnxImportError, import_onnx_model  # noqa: E402

LIPREF = str(Path(sys.executable).with_name("lipref"))


def _model(nodes, inits, in_dims=(4,)):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_dims])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _w(name="w", shape=(3, 4)):
    return numpy_helper.from_array(numpy.ones(shape, numpy.float32), name)


def _gemm(inputs=("f", "w"), out="logits", name="fc"):
    return helper.make_node("Gemm", list(inputs), [out], name=name, transB=1)


def _short_raw():
    w = _w()
    w.raw_data = w.raw_data[:20]
    return w


def _declares_2_40():
    return onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2 ** 20, 2 ** 20], raw_data=b"\0" * 16)


def _clip_then_gemm(clip, inits=()):
    return _model([_gemm(("x", "w"), "h", "fc1"), clip, _gemm(("r", "w3"), "logits", "fc2")],
                  [_w(), _w("w3", (3, 3)), *inits])


HOSTILE = {  # name: (the model, what the one line says)
    "gemm without its weight": (lambda: _model([_gemm(("x",))], [_w()]), "node fc (Gemm): needs 2 inputs, has 1"),
    "conv without its weight": (lambda: _model([helper.make_node("Conv", ["x"], ["c"], name="conv"),
                                                helper.make_node("Flatten", ["c"], ["f"]), _gemm()], [_w()],
                                               (1, 2, 2)), "node conv (Conv): needs 2 inputs, has 1"),
    "reshape without its shape": (lambda: _model([helper.make_node("Reshape", ["x"], ["f"], name="flat"), _gemm()],
                                                 [_w()], (1, 2, 2)), "node flat (Reshape): needs 2 inputs, has 1"),
    "gemm with an empty weight name": (lambda: _model([_gemm(("x", ""))], [_w()]),
                                       "node fc (Gemm): needs 2 inputs, has 1"),
    "a node with no outputs": (lambda: _model([helper.make_node("Relu", ["x"], [], name="loose"), _gemm(("x", "w"))],
                                              [_w()]), "node loose (Relu): the node has no output"),
    "clip min as a string attribute": (lambda: _clip_then_gemm(helper.make_node("Clip", ["h"], ["r"], name="clip",
                                                                                min="zero")),
                                       "node clip (Clip): attribute min must be a number, got 'zero'"),
    "clip max as a string tensor": (lambda: _clip_then_gemm(
        helper.make_node("Clip", ["h", "lo", "hi"], ["r"], name="clip"),
        [numpy_helper.from_array(numpy.float32(0), "lo"), helper.make_tensor("hi", TensorProto.STRING, [], [b"6"])]),
        "initializer hi has element type STRING; lipref reads numeric constants"),
    "raw data shorter than its dims": (lambda: _model([_gemm(("x", "w"))], [_short_raw()]),
                                       "initializer w declares shape [3, 4] (48 bytes) but stores 20 bytes"),
    "typed data shorter than its dims": (lambda: _model([_gemm(("x", "w"))], [onnx.TensorProto(
        name="w", data_type=TensorProto.FLOAT, dims=[3, 4], float_data=[1.0] * 5)]),
        "initializer w declares shape [3, 4] (12 values) but stores 5 values"),
    "declares 2^40 entries": (lambda: _model([_gemm(("x", "w"))], [_declares_2_40()]),
                              "initializer w declares shape [1048576, 1048576] (4398046511104 bytes) but stores 16"),
    "constant node with a short tensor": (lambda: _model(
        [helper.make_node("Constant", [], ["w"], name="const", value=_short_raw()), _gemm(("x", "w"))], []),
        "node const (Constant): tensor declares shape [3, 4] (48 bytes) but stores 20 bytes"),
    "strides as a float": (lambda: _model([helper.make_node("Conv", ["x", "k"], ["c"], name="conv", strides=2.0),
                                           helper.make_node("Flatten", ["c"], ["f"]), _gemm()],
                                          [_w(), _w("k", (1, 1, 1, 1))], (1, 2, 2)),
                           "node conv (Conv): attribute strides must be a list of integers, got '2.0'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_file_is_one_line_and_exit_2_from_import_onnx(tmp_path, case):
    make, message = HOSTILE[case]
    path = tmp_path / "hostile.onnx"
    onnx.save(make(), str(path))
    run = subprocess.run([LIPREF, "import-onnx", str(path), "--out", str(tmp_path / "m.npz")], capture_output=True,
                         text=True, timeout=120)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"Error: {path}: ") and message in lines[0], lines[0]
    assert not (tmp_path / "m.npz").exists()


def test_2_to_the_40_entries_are_refused_before_anything_is_allocated(tmp_path):
    path = tmp_path / "huge.onnx"
    onnx.save(_model([_gemm(("x", "w"))], [_declares_2_40()]), str(path))
    tracemalloc.start()
    try:
        with pytest.raises(OnnxImportError, match="declares shape"):
            import_onnx_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20, f"{peak} bytes allocated for a refused file"


# ---------------------------------------------------------------- models that read vectors (N, D)

def _vector_model(path):
    rng = numpy.random.default_rng(0)
    onnx.save(_model([_gemm(("x", "w", "b"), "h", "fc1"), helper.make_node("Relu", ["h"], ["r"]),
                      _gemm(("r", "w2"), "logits", "fc2")],
                     [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(numpy.float32), "w"),
                      numpy_helper.from_array(numpy.zeros(6, numpy.float32), "b"),
                      numpy_helper.from_array(rng.normal(size=(3, 6)).astype(numpy.float32), "w2")]), str(path))


def test_an_n_by_d_model_is_certified_on_n_by_d_data(tmp_path):
    _vector_model(tmp_path / "vec.onnx")
    data = tmp_path / "vec.npz"
    numpy.savez(data, images=numpy.random.default_rng(1).uniform(0, 1, (6, 4)).astype(numpy.float32),
                labels=numpy.array([0, 1, 2, 0, 1, 2]))
    run = subprocess.run([LIPREF, "certify", str(tmp_path / "vec.onnx"), "--data", str(data), "--eps", "0.01",
                          "--pgd-steps", "2", "--quiet", "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["n"] == 6 and doc["dtype"] == "float32" and doc["soundness_violations"] == []


def test_image_data_for_an_n_by_d_model_is_told_the_layout_to_give(tmp_path):
    _vector_model(tmp_path / "vec.onnx")
    data = tmp_path / "img.npz"
    numpy.savez(data, images=numpy.zeros((2, 1, 2, 2), numpy.float32), labels=numpy.array([0, 1]))
    run = subprocess.run([LIPREF, "certify", str(tmp_path / "vec.onnx"), "--data", str(data), "--eps", "0.01",
                          "--quiet"], capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert "the model reads vectors: give a data .npz with images of shape (N, 4)" in lines[0]
