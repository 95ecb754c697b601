"""Every `--json` output of every command, run as a user runs it (the installed `lipref` in a
fresh process), read back with a strict JSON parser (no NaN, no Infinity) and checked for
lipref's provenance. The commands come from the click group, so a new command with --json
fails here until it has a run below."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import array_api_compat.numpy as xp
import click
import numpy
import pytest

import lipref
from cli import main
from lipref.models import build_model, save_model
from lipref.outputs import json_ready
from lipref.provenance import EXTRAS

ROOT = Path(__file__).resolve().parents[1]


def lipref_command():
    """The installed console script beside this Python, else `python -m cli` from the source tree."""
    script = Path(sys.executable).with_name("lipref")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cli"]


def strict_loads(text):
    """json.loads that refuses NaN, Infinity and -Infinity, as RFC 8259 parsers do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def json_commands(group, prefix=()):
    """Every (sub)command of `group` with a --json option, as a tuple of names."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from json_commands(command, prefix + (name,))
        elif any("--json" in p.opts for p in command.params):
            yield prefix + (name,)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model whose last layer has equal class rows (no class can ever overtake: radius_global
    inf), one with zero weights (local = global = 0), and data in [0, 1]."""
    folder = tmp_path_factory.mktemp("json")
    rng = numpy.random.default_rng(0)
    tied = build_model("mlp-8", (1, 2, 2), 3, xp, xp.float64, rng)
    weight = tied.layers[-1].params["weight"]
    weight.value = numpy.broadcast_to(weight.value[:1], weight.value.shape).copy()
    tied.metadata["note"] = float("nan")  # free-form metadata from a file: `info` shows it as "nan"
    save_model(folder / "tied.npz", tied)
    zero = build_model("mlp-8", (1, 2, 2), 3, xp, xp.float64, rng)
    for layer in zero.layers:
        if "weight" in layer.params:
            layer.params["weight"].value = layer.params["weight"].value * 0
    save_model(folder / "zero.npz", zero)
    numpy.savez(folder / "data.npz", images=rng.random((6, 1, 2, 2)), labels=numpy.arange(6) % 3)
    return folder


def runs(f):
    """(command, arguments) for every run checked; `f` is the files' folder."""
    model, zero, data = str(f / "tied.npz"), str(f / "zero.npz"), str(f / "data.npz")
    fast = ["--data", data, "--eps", "0.1", "--iters", "5"]
    return [
        (("certify",), ["certify", model, *fast, "--pgd-steps", "2", "--quiet", "--samples", str(f / "s.json")]),
        (("certify",), ["certify", zero, *fast, "--pgd-steps", "2", "--quiet"]),
        (("certify",), ["certify", model, *fast, "--mode", "sound", "--pgd-steps", "2", "--quiet", "--reference"]),
        (("certify",), ["certify", model, *fast, "--audit", "--pgd-steps", "2", "--quiet"]),
        (("bound",), ["bound", zero, *fast]),
        (("bound",), ["bound", model, *fast, "--mode", "sound"]),
        (("attack",), ["attack", model, "--data", data, "--eps", "0.1", "--steps", "2"]),
        (("check",), ["check", model, "--data", data, "--limit", "2", "--iters", "2", "--eps", "0.1"]),
        (("info",), ["info"]),
        (("info",), ["info", model]),
        (("data", "list"), ["data", "list"]),
        (("train",), ["train", "--out", str(f / "run"), "--arch", "mlp-8", "--epochs", "1", "--limit", "32",
                      "--eval-limit", "8", "--batch-size", "16", "--iters", "1", "--eval-iters", "1", "--warmup", "0",
                      "--ramp", "1", "--quiet"]),
        (("demo",), ["demo", "--out", str(f / "demo"), "--epochs", "1", "--limit", "32", "--test-limit", "8",
                     "--quiet", "--plot", str(f / "demo.png")]),
    ]


def test_every_json_command_has_a_run_here(tmp_path):
    assert set(json_commands(main)) == {command for command, _ in runs(tmp_path)}


def check_provenance(doc, args):
    found = doc["provenance"]
    assert found["lipref_version"] == lipref.__version__
    assert found["command_line"].startswith(("lipref ", "cli.py ")) and args[0] in found["command_line"]
    assert set(found["extras"]) == set(EXTRAS)
    kernels = found["kernels"]
    assert kernels["registered"] and all(kernels["registered"].values())
    reference_env = os.environ.get("LIPREF_REFERENCE", "") not in ("", "0")  # the subprocess inherits it
    assert kernels["enabled"] is ("--reference" not in args and not reference_env)


@pytest.mark.parametrize("index", range(len(runs(Path(".")))))
def test_json_output_is_strict_json_with_provenance(files, index):
    command, args = runs(files)[index]
    if command == ("check",) and importlib.util.find_spec("torch") is None:
        pytest.skip("lipref check needs the torch extra (pip install -e '.[torch]')")
    result = subprocess.run(lipref_command() + args + ["--json"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    doc = strict_loads(result.stdout)
    if "--samples" in args:  # per-sample rows: strict too; the tied model's global radius is inf
        sample_doc = strict_loads((files / "s.json").read_text())
        check_provenance(sample_doc, args)
        rows = sample_doc["samples"]
        assert all(r["radius_global"] == ("inf" if r["prediction"] == r["label"] else 0.0) for r in rows)
        assert any(r["radius_global"] == "inf" for r in rows)
    if args[:2] == ["certify", str(files / "zero.npz")]:  # local = global = 0: their ratio is 1, not NaN
        assert doc["median_local_over_global"] == 1.0
    if args[0] == "info" and len(args) == 2:
        assert doc["metadata"]["note"] == "nan" and doc["input_range"] is None
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    check_provenance(doc, args)


def test_infinities_are_strings_and_nan_is_a_bug():
    doc = {"radius": [float("inf"), -float("inf"), 0.5], "n": 3, "ok": True, "none": None}
    assert json_ready(doc) == {"radius": ["inf", "-inf", 0.5], "n": 3, "ok": True, "none": None}
    with pytest.raises(ValueError, match=r"NaN in lipref's output at \$\.rows\[1\]\.local"):
        json_ready({"rows": [{"local": 1.0}, {"local": float("nan")}]})
    assert json_ready({"best": float("nan")}, nan="nan") == {"best": "nan"}  # a value from a user's file
