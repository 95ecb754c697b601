"""The CLI given hostile or mismatched files: data and model files whose declared sizes are
lies (one line, exit 2, never a MemoryError), data outside the range the model expects
(refused, or a warning where the model does not say), and what `lipref info` reports."""
import io
import zipfile

import array_api_compat.numpy as xp
import numpy
import pytest
from click.testing import CliRunner

import lipref
from cli import main
from lipref import kernels
from lipref.models import build_model, model_to_bytes, save_model
from lipref.provenance import provenance


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def small_model(path, **metadata):
    model = build_model("mlp-8", (1, 2, 2), 3, xp, xp.float32, numpy.random.default_rng(0))
    model.metadata.update(metadata)
    save_model(path, model)
    return str(path)


def pixels(path, high=255):
    """Pixels as stored (0..high), as an .npz of unsigned integer images."""
    rng = numpy.random.default_rng(1)
    images = rng.integers(0, high + 1, size=(6, 1, 2, 2), dtype=numpy.uint8 if high < 256 else numpy.uint16)
    images[0, 0, 0, 0], images[0, 0, 0, 1] = 0, high
    numpy.savez(path, images=images, labels=numpy.arange(6) % 3)
    return str(path)


def forged_npy(shape, dtype):
    header = numpy.lib.format.header_data_from_array_1_0(numpy.zeros(1, dtype=dtype))
    header["shape"] = shape
    buf = io.BytesIO()
    numpy.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + bytes(64)


# ------------------------------------------------------------------------ declared sizes

def test_data_file_declaring_terabytes_is_one_line(tmp_path):
    model, data = small_model(tmp_path / "m.npz"), tmp_path / "huge.npz"
    labels = io.BytesIO()
    numpy.save(labels, numpy.zeros(2, dtype=numpy.int64))
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("images.npy", forged_npy((2 ** 40, 1, 1, 4), numpy.uint8))
        archive.writestr("labels.npy", labels.getvalue())
    for command in (["certify", model, "--eps", "0.1"], ["bound", model, "--eps", "0.1"],
                    ["attack", model, "--eps", "0.1"]):
        assert_one_line_error(run(command + ["--data", str(data)]), str(data), "member images.npy",
                              "(1099511627776, 1, 1, 4)", "holds 64 bytes")


def test_model_file_declaring_terabytes_is_one_line(tmp_path):
    path = tmp_path / "forged.npz"
    good = build_model("mlp-8", (1, 2, 2), 3, xp, xp.float32, numpy.random.default_rng(0))
    with zipfile.ZipFile(io.BytesIO(model_to_bytes(good))) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            forged = forged_npy((2 ** 38, 4), numpy.float32) if name == "1.weight.npy" else source.read(name)
            target.writestr(name, forged)
    assert_one_line_error(run(["info", str(path)]), str(path), "member 1.weight.npy", "(274877906944, 4)")


# ---------------------------------------------------------------------------- data ranges

def test_pixels_for_a_model_trained_on_unit_range_are_refused(tmp_path):
    model = small_model(tmp_path / "m.npz", data="fashion-mnist")
    data = pixels(tmp_path / "u8.npz")
    for command in (["certify", "--iters", "2", "--pgd-steps", "1", "--quiet"], ["bound", "--iters", "2"],
                    ["attack", "--steps", "1"]):
        result = run([command[0], model, "--data", data, "--eps", "0.1", *command[1:]])
        assert_one_line_error(result, data, "0..255", "[0, 1]", "fashion-mnist", "/ 255", "--domain none")
    accepted = run(["certify", model, "--data", data, "--eps", "0.1", "--iters", "2", "--pgd-steps", "1", "--quiet",
                    "--domain", "none"])
    assert accepted.exit_code == 0 and accepted.stderr == "", accepted.output
    scaled = tmp_path / "scaled.npz"
    with numpy.load(data) as npz:
        numpy.savez(scaled, images=npz["images"] / 255.0, labels=npz["labels"])
    result = run(["certify", model, "--data", str(scaled), "--eps", "0.1", "--iters", "2", "--pgd-steps", "1",
                  "--quiet", "--json"])
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_a_recorded_input_range_is_the_domain(tmp_path):
    model = small_model(tmp_path / "m.npz", input_range=[0, 255])
    result = run(["certify", model, "--data", pixels(tmp_path / "u8.npz"), "--eps", "0.5", "--iters", "2",
                  "--pgd-steps", "1", "--quiet", "--json"])
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert '"domain": [\n    0.0,\n    255.0\n  ]' in result.stdout
    over = run(["attack", model, "--data", pixels(tmp_path / "u16.npz", high=300), "--eps", "0.5", "--steps", "1"])
    assert_one_line_error(over, "0..300", "[0, 255]", "recorded in the model file")


def test_pixels_for_a_model_that_does_not_say_get_a_warning(tmp_path):
    model, data = small_model(tmp_path / "m.npz"), pixels(tmp_path / "u8.npz")
    result = run(["bound", model, "--data", data, "--eps", "0.1", "--iters", "2", "--json"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and data in warnings[0] and "0..255" in warnings[0] and "255" in warnings[0]
    assert "Traceback" not in result.stderr
    quiet = run(["bound", model, "--data", data, "--eps", "0.1", "--iters", "2", "--domain", "0,255"])
    assert quiet.exit_code == 0 and "Warning" not in quiet.stderr
    outside = run(["bound", model, "--data", data, "--eps", "0.1", "--iters", "2", "--domain", "0,1"])
    assert_one_line_error(outside, data, "outside the domain [0, 1]", "0..255")


# ---------------------------------------------------------------------------------- info

def test_info_names_the_kernels_and_extras():
    text = run(["info"]).stdout
    state = "on" if kernels.enabled() else "off"  # off with LIPREF_REFERENCE=1
    assert f"kernels: {state}" in text and "linear: lipref.kernels.dense" in text and "extras: " in text
    assert f"lipref: {lipref.__version__}" in text
    with kernels.reference_only():
        assert "kernels: off" in run(["info"]).stdout


@pytest.mark.parametrize("recorded", [True, False])
def test_info_model_prints_its_provenance(tmp_path, recorded):
    metadata = {"provenance": provenance(["lipref", "train", "--out", "r"])} if recorded else {}
    model = small_model(tmp_path / "m.npz", data="mnist", **metadata)
    text = run(["info", model]).stdout
    assert "inputs: [0, 1] (the model was trained on mnist" in text
    if recorded:
        assert "written by lipref " in text and "command: lipref train --out r" in text
    else:
        assert "provenance: not recorded in the file" in text


def test_bound_table_of_a_zero_network(tmp_path):
    path = tmp_path / "zero.npz"
    model = build_model("mlp-8", (1, 2, 2), 3, xp, xp.float64, numpy.random.default_rng(0))
    for layer in model.layers:
        if "weight" in layer.params:
            layer.params["weight"].value = layer.params["weight"].value * 0
    save_model(path, model)
    data = tmp_path / "d.npz"
    numpy.savez(data, images=numpy.full((2, 1, 2, 2), 0.5), labels=numpy.array([0, 1]))
    result = run(["bound", str(path), "--data", str(data), "--eps", "0.1", "--iters", "2"])
    assert result.exit_code == 0, result.output
    assert [line.split()[5] for line in result.stdout.splitlines()[2:]] == ["1.000", "1.000"]  # local/global
