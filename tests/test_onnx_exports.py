"""Imports of real exports: Keras models written by tf2onnx (tests/exports/, made by
make_keras_onnx.py: NHWC input and its Transpose, Normalization as Sub + Mul, batch norm as
Mul + Add, the Flatten of NHWC features, shape arithmetic with Cast and Slice) and a torch
model with BatchNorm exported by both of torch's exporters. Each imports, computes the
exporter's own logits (Keras's, torch's) to rounding, and certifies from the command line:
in fast mode, and in sound mode where its folds are exact or BatchNorm-like, refused in one
line where an input normalisation folds only with rounding."""
import json
import warnings
from pathlib import Path

import numpy
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'lipref[onnx]')")
import array_api_compat.numpy as xp  # noqa: E402

from cli import main  # noqa: E402
from support import randomise_batchnorm  # noqa: E402
from lipref.folding import FoldWarning, rounded_folds  # noqa: E402
from lipref.onnx_import import import_onnx_model  # noqa: E402

EXPORTS = Path(__file__).resolve().parent / "exports"


def _logits(model, images):
    return numpy.asarray(model(xp.asarray(images.astype(model.precision)), record=False))


def _certify(model_path, data_path, mode, eps=0.02):
    args = ["certify", str(model_path), "--data", str(data_path), "--eps", str(eps), "--mode", mode,
            "--pgd-steps", "3", "--seed", "1", "--json", "--quiet"]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _data(tmp_path, images, labels):
    path = tmp_path / "data.npz"
    numpy.savez(path, images=images, labels=labels)
    return path


# ---------------------------------------------------------------- Keras (tf2onnx)

@pytest.mark.filterwarnings("ignore:.*into layer 5:lipref.folding.FoldWarning")
def test_a_keras_conv_export_reads_nhwc_folds_its_normalisation_and_batch_norms_and_computes_keras_logits():
    with pytest.warns(FoldWarning, match="folded into layer 0 with rounding: the model certified is the folded one"):
        model = import_onnx_model(EXPORTS / "keras_conv.onnx")
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten",
                                                                "Linear", "ReLU", "Linear"]
    assert model.input_shape == (2, 8, 8) and model.metadata["input_layout"] == "NHWC"
    folds = model.metadata["folds"]
    assert [(f["into_layer"], f["exact"], f["input_normalisation"]) for f in folds] == \
        [(0, True, True), (0, False, False), (5, False, False)]  # std 0.5, 0.25 fold exactly; the batch norms round
    assert rounded_folds(model.metadata) == []  # so sound mode takes it
    data = numpy.load(EXPORTS / "keras_conv.npz")
    got = _logits(model, data["images"].transpose(0, 3, 1, 2))  # NHWC -> the (N, C, H, W) lipref reads
    numpy.testing.assert_allclose(got, data["logits"], rtol=1e-5, atol=1e-5 * numpy.abs(data["logits"]).max())


def test_a_keras_conv_export_certifies_in_fast_and_sound_mode(tmp_path):
    saved = numpy.load(EXPORTS / "keras_conv.npz")
    data = _data(tmp_path, saved["images"][:6].transpose(0, 3, 1, 2), numpy.argmax(saved["logits"][:6], axis=1))
    for mode in ("fast", "sound"):
        result = _certify(EXPORTS / "keras_conv.onnx", data, mode)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["clean_accuracy"] == 1.0 and summary["soundness_violations"] == []
        assert 0 < summary["certified_accuracy_local"] < summary["pgd_accuracy"] < 1  # neither side is vacuous
        assert "folded into layer 0 with rounding" in result.stderr


def test_a_keras_normalisation_that_folds_only_with_rounding_is_certified_in_fast_mode_and_refused_in_sound(tmp_path):
    with pytest.warns(FoldWarning, match="only with rounding .* fast mode certifies and sound mode refuses"):
        model = import_onnx_model(EXPORTS / "keras_dense.onnx")
    assert [f["exact"] for f in rounded_folds(model.metadata)] == [False]
    assert model.metadata["input_layout"] == "ND"
    saved = numpy.load(EXPORTS / "keras_dense.npz")
    numpy.testing.assert_allclose(_logits(model, saved["images"]), saved["logits"], rtol=1e-5, atol=1e-5)
    data = _data(tmp_path, saved["images"][:6], numpy.argmax(saved["logits"][:6], axis=1))
    fast = _certify(EXPORTS / "keras_dense.onnx", data, "fast")
    assert fast.exit_code == 0 and json.loads(fast.stdout)["clean_accuracy"] == 1.0, fast.output
    assert "fast mode certifies and sound mode refuses" in fast.stderr
    sound = _certify(EXPORTS / "keras_dense.onnx", data, "sound")
    lines = [line for line in sound.stderr.splitlines() if line.startswith("Error")]
    assert sound.exit_code == 2 and len(lines) == 1, sound.output
    assert "keras_dense.onnx: sound mode certifies the model as its file holds it, and folding Sub" in lines[0]


def test_import_onnx_says_the_layout_and_the_folds(tmp_path):
    out = tmp_path / "k.npz"
    result = CliRunner().invoke(main, ["import-onnx", str(EXPORTS / "keras_conv.onnx"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "the file reads NHWC (N, H, W, C), the imported model (N, C, H, W)" in result.stdout
    assert "folded: Sub " in result.stdout
    info = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert json.loads(info.stdout)["metadata"]["folds"][0]["input_normalisation"] is True


# ---------------------------------------------------------------- torch with BatchNorm, both exporters

def _torch_batchnorm_net():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 6, 4, 2, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(96, 12),
                        nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 5))
    randomise_batchnorm(net, 0.5, 2.0)
    return net.eval(), torch


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_torch_model_with_batchnorm_exports_imports_and_certifies(tmp_path, dynamo):
    net, torch = _torch_batchnorm_net()
    x = torch.rand(6, 2, 8, 8)
    path = tmp_path / "bn.onnx"
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False)
    else:
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldWarning)
        model = import_onnx_model(path)
    batchnorms = [f for f in model.metadata.get("folds", []) if f["kind"] == "batchnorm"]
    # both exporters fold the conv's BatchNorms themselves (in float32); the legacy one leaves BatchNorm1d
    assert [f["into_layer"] for f in batchnorms] == ([] if dynamo else [5])
    with torch.no_grad():
        expected = net(x).numpy()
    got = _logits(model, x.numpy())
    numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * numpy.abs(expected).max())
    data = _data(tmp_path, x.numpy(), numpy.argmax(expected, axis=1))
    for mode in ("fast", "sound"):
        result = _certify(path, data, mode, eps=0.01)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["soundness_violations"] == []
