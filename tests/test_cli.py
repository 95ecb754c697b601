"""The CLI's contracts (JSON keys other tools rely on) and its handling of bad input: one
line on stderr naming the file or value, exit code 2, no traceback, no partial output."""
import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import array_api_compat.numpy as xp
import numpy
import pytest
from click.testing import CliRunner

from cli import main
from lipref.models import build_model, save_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "m.npz"
    save_model(path, build_model("2c2f", (1, 28, 28), 10, xp, xp.float32, numpy.random.default_rng(0)))
    return str(path)


def run(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------------- contracts

def test_bound_json_contract(model_file):
    result = run(["bound", model_file, "--data", "embedded", "--eps", "0.3", "--limit", "5", "--iters", "10",
                  "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["samples"]) == 5
    for i, s in enumerate(doc["samples"]):
        assert set(s) == {"index", "label", "prediction", "global", "local", "constant_fraction"}
        assert s["index"] == i and 0 <= s["prediction"] < 10
        assert 0 < s["local"] <= s["global"] * (1 + 1e-6)
        assert len(s["constant_fraction"]) == 3 and all(0 <= c <= 1 for c in s["constant_fraction"])


def test_threads_option_changes_no_number(model_file):
    """--threads sets how many blocks of samples run at once; the numbers stay the same."""
    docs = []
    for threads in ("1", "3"):
        result = run(["bound", model_file, "--data", "embedded", "--eps", "0.3", "--limit", "70", "--iters", "5",
                      "--threads", threads, "--json"])
        assert result.exit_code == 0, result.output
        docs.append(json.loads(result.stdout)["samples"])
    assert docs[0] == docs[1]
    bad = run(["bound", model_file, "--data", "embedded", "--eps", "0.3", "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output


def test_certify_json_contract_samples_and_plot(model_file, tmp_path):
    samples, plot = tmp_path / "samples.json", tmp_path / "curve.png"
    result = run(["certify", model_file, "--data", "embedded:test", "--eps", "0.1", "--limit", "8",
                  "--iters", "10", "--pgd-steps", "5", "--json", "--quiet", "--samples", str(samples),
                  "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for key in ("clean_accuracy", "certified_accuracy_global", "certified_accuracy_local", "pgd_accuracy", "n"):
        assert key in doc
    assert doc["n"] == 8 and doc["soundness_violations"] == []
    assert doc["certified_accuracy_local"] <= doc["clean_accuracy"]
    assert doc["pgd_accuracy"] <= doc["clean_accuracy"]
    rows = json.loads(samples.read_text())["samples"]
    assert len(rows) == 8 and all(r["radius_local"] <= 0.1 for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_certify_table_attack_and_info(model_file):
    table = run(["certify", model_file, "--eps", "0.1", "--limit", "4", "--iters", "5", "--pgd-steps", "2",
                 "--quiet"])
    assert table.exit_code == 0 and "certified accuracy, local bound" in table.stdout
    attack = run(["attack", model_file, "--eps", "0.5", "--limit", "4", "--steps", "3", "--json"])
    assert attack.exit_code == 0
    assert set(json.loads(attack.stdout)) >= {"clean_accuracy", "pgd_accuracy", "n"}
    info = run(["info", model_file, "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["layers"][0]["layer"] == "conv2d"
    listing = run(["data", "list", "--json"])
    assert listing.exit_code == 0
    assert {r["name"]: r["status"] for r in json.loads(listing.stdout)["datasets"]}["embedded"] == "ok"


def test_every_command_has_help():
    for command in (["train"], ["certify"], ["bound"], ["attack"], ["data", "list"], ["data", "verify"],
                    ["data", "download"], ["info"], ["plot"]):
        result = run(command + ["--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


# ------------------------------------------------------------------------------- bad input

def _idx_bytes(array, magic):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def _write_fashion(folder, images_raw):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images_raw))
    labels = numpy.zeros(3, dtype=numpy.uint8)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels, 0x801)))


def test_missing_data_files(model_file, tmp_path):
    result = run(["certify", model_file, "--data", "mnist", "--data-dir", str(tmp_path), "--eps", "0.1"])
    assert_one_line_error(result, str(tmp_path))


def test_bad_magic_and_truncated_idx(model_file, tmp_path):
    images = numpy.zeros((3, 28, 28), dtype=numpy.uint8)
    _write_fashion(tmp_path / "magic", _idx_bytes(images, 0x1234))
    result = run(["certify", model_file, "--data", "fashion-mnist", "--data-dir", str(tmp_path / "magic"),
                  "--eps", "0.1"])
    assert_one_line_error(result, "t10k-images-idx3-ubyte.gz", "magic")
    _write_fashion(tmp_path / "short", _idx_bytes(images, 0x803)[:-100])
    result = run(["certify", model_file, "--data", "fashion-mnist", "--data-dir", str(tmp_path / "short"),
                  "--eps", "0.1"])
    assert_one_line_error(result, "t10k-images-idx3-ubyte.gz")


def test_wrong_checksum(tmp_path):
    _write_fashion(tmp_path, _idx_bytes(numpy.zeros((3, 28, 28), dtype=numpy.uint8), 0x803))
    result = run(["data", "verify", "fashion-mnist", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "bad checksum" in result.stdout
    assert result.stderr.strip().startswith("Error: fashion-mnist")


def test_not_a_lipref_model(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file")
    assert_one_line_error(run(["certify", str(junk), "--eps", "0.1"]), str(junk))
    plain = tmp_path / "plain.npz"
    numpy.savez(plain, w=numpy.ones(3))
    assert_one_line_error(run(["bound", str(plain), "--eps", "0.1"]), str(plain), "not a lipref model")
    assert_one_line_error(run(["certify", str(tmp_path / "absent.npz"), "--eps", "0.1"]), "absent.npz")


def test_data_shape_does_not_fit_model(tmp_path, model_file):
    other = tmp_path / "rgb.npz"
    save_model(other, build_model("mlp-8", (3, 8, 8), 10, xp, xp.float32, numpy.random.default_rng(0)))
    assert_one_line_error(run(["certify", str(other), "--data", "embedded", "--eps", "0.1"]), "(3, 8, 8)",
                          "(1, 28, 28)")
    labels_file = tmp_path / "labels.npz"
    numpy.savez(labels_file, images=numpy.zeros((2, 1, 28, 28)), labels=numpy.array([3, 12]))
    assert_one_line_error(run(["certify", model_file, "--data", str(labels_file), "--eps", "0.1"]), "12")


@pytest.mark.parametrize("eps", ["-0.5", "nan"])
def test_bad_eps(model_file, eps):
    assert_one_line_error(run(["certify", model_file, "--eps", eps]), "--eps", eps)


def test_nan_in_weights(tmp_path):
    model = build_model("mlp-8", (1, 28, 28), 10, xp, xp.float32, numpy.random.default_rng(0))
    w = numpy.array(model.parameters()["1.weight"].value)
    w[2, 3] = numpy.inf
    model.parameters()["1.weight"].value = xp.asarray(w)
    path = tmp_path / "inf.npz"
    save_model(path, model)
    assert_one_line_error(run(["certify", str(path), "--eps", "0.1"]), str(path), "1.weight", "NaN or inf")


def test_nan_in_inputs_leaves_no_output(model_file, tmp_path):
    images = numpy.zeros((2, 1, 28, 28), dtype=numpy.float32)
    images[1, 0, 5, 6] = numpy.nan
    data = tmp_path / "nan.npz"
    numpy.savez(data, images=images, labels=numpy.array([1, 2]))
    out, plot = tmp_path / "s.json", tmp_path / "p.png"
    result = run(["certify", model_file, "--data", str(data), "--eps", "0.1", "--samples", str(out),
                  "--plot", str(plot)])
    assert_one_line_error(result, str(data), "NaN", "(1, 0, 5, 6)")
    assert not out.exists() and not plot.exists()
    run_dir = tmp_path / "run"
    assert_one_line_error(run(["train", "--data", str(data), "--out", str(run_dir)]), str(data))
    assert not run_dir.exists()


def test_errors_in_a_real_process_have_no_traceback(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 10)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "certify", str(junk), "--eps", "0.1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and str(junk) in proc.stderr


def test_info_names_the_blas_and_hints_at_misdetected_kernels(monkeypatch):
    """`lipref info` names NumPy's BLAS; where OpenBLAS runs its Haswell kernels on a CPU with
    AVX-512 (OpenBLAS 0.3.31 on AMD Zen 5) it says how to get the faster ones."""
    import threadpoolctl

    from lipref import backend
    out = json.loads(run(["info", "--json"]).output)
    assert out["blas"] and "unknown" not in out["blas"]
    fake = [{"user_api": "blas", "internal_api": "openblas", "version": "0.3.31", "architecture": "Haswell",
             "num_threads": 2}]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: fake)
    for has_avx512, expect_hint in ((True, True), (False, False)):
        monkeypatch.setattr(backend, "_cpu_has", lambda flag, v=has_avx512: v and flag == "avx512f")
        text, hint = backend.host_blas()
        assert text == "openblas 0.3.31 Haswell, 2 threads"
        assert (hint is not None) == expect_hint and (hint is None or "OPENBLAS_CORETYPE=Cooperlake" in hint)
    fake[0]["architecture"] = "SkylakeX"
    assert backend.host_blas()[1] is None


def test_bound_sound_mode_certificate_and_gram_limit(model_file):
    """Sound mode certifies the global norms once (and says so on stderr); with
    --gram-limit 0 it uses the polyphase bound only, never tighter than the certificate."""
    args = ["bound", model_file, "--data", "embedded", "--eps", "0.3", "--limit", "3", "--iters", "10",
            "--mode", "sound", "--json"]
    certified = run(args)
    assert certified.exit_code == 0, certified.output
    assert "global norms certified" in certified.stderr
    polyphase = run(args + ["--gram-limit", "0"])
    assert polyphase.exit_code == 0, polyphase.output
    tight = json.loads(certified.stdout)["samples"]
    loose = json.loads(polyphase.stdout)["samples"]
    for a, b in zip(tight, loose):
        assert 0 < a["global"] <= b["global"] * (1 + 1e-12)
        assert 0 < a["local"] <= a["global"] * (1 + 1e-12)


# ------------------------------------------------------------------------------- options as data

# every option of every command and the default its --help shows (None: no default shown), as
# before the options were read from the library's config dataclasses
SHARDING = {"--workers": None, "--scheduler": None, "--shard-size": None, "--shards-dir": None, "--resume": None}
OPTIONS = {
    "train": {"--out": None, "--resume": None, "--data": "embedded:train", "--data-dir": None, "--limit": None,
              "--eval-data": None, "--allow-overlap": None, "--eval-limit": 200, "--arch": "2c2f", "--activation": "relu",
              "--threshold-init": 1.0, "--epochs": 10, "--batch-size": 64, "--eps": 0.5, "--eps-eval": None,
              "--warmup": 1.0, "--ramp": 4.0, "--kappa-end": 0.0, "--lr": 0.001, "--lr-end": 0.0001,
              "--decay-start": None, "--loss": "gloro", "--bound": "local", "--sparsity": 0.0,
              "--saturation-weight": 0.1, "--iters": 2, "--eval-iters": 20, "--dtype": "float32",
              "--threads": None, "--backend": "numpy", "--seed": None, "--json": None, "--quiet": None,
              "--reference": None, "--recipe": None, "--kappa-start": 1.0, "--crop-padding": 0, "--flip": None,
              "--best-from": None, "--layer-inits": None, "--plot": None},
    "certify": {"--data": "embedded:test", "--data-dir": None, "--limit": None, "--eps": None, "--mode": "fast",
                "--iters": 100, "--pgd-steps": 100, "--pgd-restarts": 1, "--batch-size": 100, "--domain": "auto",
                "--dtype": "auto", "--gram-limit": 8192, "--threads": None, "--backend": "numpy", "--seed": None,
                "--json": None, "--samples": None, "--plot": None, "--quiet": None, "--reference": None,
                "--audit": None, **SHARDING},
    "bound": {"--data": "embedded:test", "--data-dir": None, "--limit": None, "--eps": None, "--iters": 100,
              "--mode": "fast", "--batch-size": 100, "--dtype": "auto", "--domain": "auto", "--gram-limit": 8192,
              "--threads": None, "--backend": "numpy", "--seed": None, "--json": None, "--reference": None, **SHARDING},
    "attack": {"--data": "embedded:test", "--data-dir": None, "--limit": None, "--eps": None, "--steps": 100,
               "--step-size": None, "--restarts": 1, "--batch-size": 100, "--domain": "auto", "--dtype": "auto",
               "--threads": None, "--backend": "numpy", "--seed": None, "--json": None},
    "import-torch": {"--arch": "auto", "--input-shape": "auto", "--classes": None, "--activation": "auto",
                     "--batchnorm-eps": 1e-05, "--out": None},
    "import-onnx": {"--out": None},
    "check": {"--against": "torch", "--data": "embedded:test", "--data-dir": None, "--limit": 8, "--eps": None,
              "--iters": 50, "--seed": 0, "--json": None},
}
CHOICES = {("train", "--activation"): {"relu", "clipped_relu", "maxmin"}, ("train", "--loss"): {"gloro", "bcp", "gloro-bcp"},
           ("train", "--bound"): {"local", "global"}, ("train", "--dtype"): {"float32", "float64"},
           ("certify", "--mode"): {"fast", "sound"}, ("certify", "--dtype"): {"auto", "float32", "float64"},
           ("bound", "--mode"): {"fast", "sound"}, ("train", "--backend"): {"numpy", "cupy"},
           ("import-torch", "--activation"): {"auto", "relu", "clipped_relu", "maxmin"}}


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_every_option_keeps_its_default_and_choices(command):
    import click
    params = {p.opts[0]: p for p in main.commands[command].params if p.opts[0].startswith("--")}
    assert set(params) == set(OPTIONS[command])
    shown = {name: (p.default if p.show_default else None) for name, p in params.items()}
    assert shown == OPTIONS[command]
    for (cmd, name), choices in CHOICES.items():
        if cmd == command:
            assert isinstance(params[name].type, click.Choice) and set(params[name].type.choices) == choices
    text = run([command, "--help"]).output
    for name, default in OPTIONS[command].items():
        flat = " ".join(text.split())
        assert name in text and (default is None or f"[default: {default}]" in flat or f"[default: {default};" in flat)


def test_options_come_from_the_library_configs():
    from lipref.certification import CertifyConfig
    from lipref.training import TrainConfig
    params = {p.name: p for p in main.commands["train"].params}
    assert params["epochs"].default == TrainConfig().epochs and params["n_iters"].default == TrainConfig().n_iters
    assert params["epochs"].help == setting_help(TrainConfig, "epochs")
    bound = {p.name: p for p in main.commands["bound"].params}
    assert bound["gram_limit"].default == CertifyConfig().gram_limit


def setting_help(cls, name):
    from lipref.config import setting_of
    return setting_of(cls, name).metadata["help"]


# ------------------------------------------------------------------------------- --reference

@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    result = run(["train", "--out", str(out), "--arch", "2c2f", "--limit", "64", "--eval-limit", "16",
                  "--epochs", "2", "--warmup", "0", "--ramp", "1", "--eps", "0.3", "--batch-size", "32",
                  "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reference"] is False
    return str(out / "model.npz")


def _rel(a, b):
    a, b = numpy.asarray(a, dtype=float), numpy.asarray(b, dtype=float)
    return float(numpy.max(numpy.abs(a - b) / numpy.maximum(numpy.abs(b), 1e-300)))


@pytest.mark.parametrize("mode", ["fast", "sound"])
def test_certify_reference_gives_the_same_certificates_and_bounds(trained_model, tmp_path, mode):
    docs, rows = [], []
    for flag in ([], ["--reference"]):
        samples = tmp_path / f"samples{len(flag)}.json"
        result = run(["certify", trained_model, "--data", "embedded:test", "--limit", "24", "--eps", "0.02",
                      "--iters", "20", "--pgd-steps", "3", "--mode", mode, "--seed", "7", "--gram-limit", "0", "--json",
                      "--quiet", "--samples", str(samples)] + flag)
        assert result.exit_code == 0, result.output
        docs.append(json.loads(result.stdout))
        rows.append(json.loads(samples.read_text())["samples"])
    assert docs[0]["reference"] is False and docs[1]["reference"] is True
    for key in ("certified_accuracy_global", "certified_accuracy_local", "clean_accuracy", "pgd_accuracy"):
        assert docs[0][key] == docs[1][key], key
    kernel, plain = rows
    for key in ("certified_global", "certified_local", "prediction"):
        assert [r[key] for r in kernel] == [r[key] for r in plain], key
    for key in ("global", "local", "radius_global", "radius_local"):
        assert _rel([r[key] for r in plain], [r[key] for r in kernel]) <= 1e-5, key
    assert any(r["certified_local"] for r in kernel)  # the comparison covers certificates


def test_reference_switches_the_kernels_off_inside_each_command(trained_model, tmp_path, monkeypatch):
    import lipref.certification as certification
    import lipref.training as training
    from lipref import kernels
    baseline = kernels.enabled()  # off for the whole run under LIPREF_REFERENCE=1
    seen = []

    def spy(original):
        def wrapper(*args, **kwargs):
            seen.append(kernels.enabled())
            return original(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(certification, "certify", spy(certification.certify))
    monkeypatch.setattr(certification, "bounds_per_sample", spy(certification.bounds_per_sample))
    monkeypatch.setattr(training, "train", spy(training.train))
    common = ["--data", "embedded:test", "--limit", "4", "--eps", "0.1", "--iters", "2", "--json"]
    for flag in (["--reference"], []):
        assert run(["certify", trained_model, "--pgd-steps", "0", "--quiet"] + common + flag).exit_code == 0
        bound = run(["bound", trained_model] + common + flag)
        assert bound.exit_code == 0 and json.loads(bound.stdout)["reference"] is bool(flag)
        trained = run(["train", "--out", str(tmp_path / f"run{len(flag)}"), "--arch", "mlp-4", "--limit", "8",
                       "--eval-limit", "4", "--epochs", "1", "--quiet", "--json"] + flag)
        assert trained.exit_code == 0 and json.loads(trained.stdout)["reference"] is bool(flag)
    assert seen == [False, False, False] + [baseline] * 3
    assert kernels.enabled() == baseline


def test_one_line_errors_keep_their_quotes_and_lose_a_key_errors():
    import click

    from cli import user_errors
    from lipref.errors import UserError

    class KeyUserError(UserError, KeyError):
        pass

    for exc, expected in ((UserError("onnx is not installed: pip install 'lipref[onnx]'"),
                           "Error: onnx is not installed: pip install 'lipref[onnx]'"),
                          (KeyUserError("no such key"), "Error: no such key")):
        @click.command()
        @user_errors
        def failing(exc=exc):
            raise exc
        result = CliRunner().invoke(failing, [])
        assert result.exit_code == 2 and result.output.strip() == expected, result.output
