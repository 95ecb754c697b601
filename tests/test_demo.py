"""`lipref demo` at a tiny size, in a fresh process of the installed command: the table, strict
JSON with provenance, the plot, a rerun that resumes instead of retraining, and the one-line
note when matplotlib is missing."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--limit", "256", "--test-limit", "16"]  # 2 steps per epoch, a few seconds
NUMBERS = ("clean_accuracy", "pgd_accuracy", "certified_accuracy_local", "certified_accuracy_global",
           "median_local_over_global", "mean_constant_fraction", "best_epoch", "n")


def lipref(*args, env=None):
    """The installed `lipref` (the script beside this Python; cli.py where there is none), run fresh."""
    script = Path(sys.executable).with_name("lipref")
    command = [str(script)] if script.exists() else [sys.executable, str(ROOT / "cli.py")]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def strict_json(text):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "runs"
    proc = lipref("demo", "--out", out, *TINY, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_demo_trains_both_models_and_prints_strict_json(first_run):
    out, proc = first_run
    doc = strict_json(proc.stdout)
    assert set(doc["provenance"]) >= {"lipref_version", "command_line", "extras", "kernels"}
    assert doc["eps"] == 1.58 and doc["data"]["train_examples"] == 256 and doc["data"]["test_examples"] == 16
    assert doc["training"]["epochs"] == 2 and doc["training"]["arch"] == "mlp-256-256"
    for bound in ("global", "local"):
        model = doc["models"][bound]
        assert model["epochs_trained_now"] == 2 and model["n"] == 16, model
        assert model["model"] == str(out / bound / "best.npz") and (out / bound / "best.npz").is_file()
        for key in NUMBERS + ("train_seconds", "certify_seconds", "pgd_steps", "soundness_violations"):
            assert key in model, key
        assert 0 <= model["certified_accuracy_local"] <= model["clean_accuracy"] <= 1
        assert model["pgd_steps"] == 100 and model["pgd_accuracy"] is not None
    # each model was trained with its own bound (the run folders record it)
    for bound in ("global", "local"):
        history = json.loads((out / bound / "history.json").read_text())
        assert history["config"]["bound"] == bound and len(history["history"]) == 2
    assert doc["certified_gain"] == pytest.approx(
        doc["models"]["local"]["certified_accuracy_local"] - doc["models"]["global"]["certified_accuracy_local"])
    assert "training with the global bound" in proc.stderr and "training with the local bound" in proc.stderr


def test_demo_writes_one_plot(first_run):
    out, proc = first_run
    plot = out / "demo.png"
    assert strict_json(proc.stdout)["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_rerunning_resumes_without_retraining_and_prints_the_same_numbers_in_one_table(first_run):
    out, proc = first_run
    first = strict_json(proc.stdout)
    untouched = {b: (out / b / "checkpoint.npz").stat().st_mtime_ns for b in ("global", "local")}
    again = lipref("demo", "--out", out, *TINY, "--json")
    assert again.returncode == 0, again.stderr
    second = strict_json(again.stdout)
    for bound in ("global", "local"):
        assert second["models"][bound]["epochs_trained_now"] == 0
        assert (out / bound / "checkpoint.npz").stat().st_mtime_ns == untouched[bound]  # no epoch trained
        assert second["models"][bound]["train_seconds"] < first["models"][bound]["train_seconds"]
        for key in NUMBERS:
            assert second["models"][bound][key] == first["models"][bound][key], (bound, key)
    assert again.stderr.count("already trained") == 2
    table = lipref("demo", "--out", out, *TINY, "--quiet")
    assert table.returncode == 0 and table.stderr == "", table.stderr
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "trained with global bound" in line)
    assert "trained with local bound" in lines[header]
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[header + 2:])}
    for what, key in (("clean accuracy", "clean_accuracy"), ("certified accuracy, local bound",
                                                             "certified_accuracy_local")):
        assert rows[what][-2:] == [f"{first['models'][b][key]:.3f}" for b in ("global", "local")], rows[what]
    assert "mean constant fraction per layer" in rows and "PGD accuracy (100 steps)" in rows


def test_other_options_on_a_trained_folder_are_refused_in_one_line(first_run):
    out, _ = first_run
    proc = lipref("demo", "--out", out, "--epochs", "3", "--limit", "256", "--test-limit", "16", "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "epochs" in lines[0] and "Traceback" not in lines[0]


def test_without_matplotlib_the_demo_says_so_in_one_line(tmp_path):
    blocked = tmp_path / "blocked"
    (blocked / "matplotlib").mkdir(parents=True)
    (blocked / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    path = os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH")) if p)
    proc = lipref("demo", "--out", tmp_path / "runs", "--epochs", "1", "--limit", "32", "--test-limit", "8",
                  "--json", "--quiet", env={"PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == ["note: no plot (plots need matplotlib: pip install 'lipref[plot]')"]
    assert strict_json(proc.stdout)["plot"] is None and not (tmp_path / "runs" / "demo.png").exists()


def certification(correct, radius, pgd_broken):
    """A Certification of len(correct) samples at eps 1 with these per-sample values."""
    import numpy
    from lipref.certification import Certification
    correct, radius = numpy.asarray(correct, dtype=bool), numpy.asarray(radius, dtype=float)
    n = correct.shape[0]
    return Certification(eps=1.0, mode="fast", n_iters=1, labels=numpy.zeros(n, int), predictions=numpy.zeros(n, int),
                         correct=correct, global_bound=numpy.ones(n), local_bound=numpy.ones(n),
                         certified_global=radius >= 1, certified_local=radius >= 1, radius_global=radius,
                         radius_local=numpy.minimum(radius, 1.0), constant_fraction=numpy.zeros((n, 1)),
                         pgd_steps=1, pgd_broken=numpy.asarray(pgd_broken, dtype=bool))


def test_the_comparison_plot_draws_both_bounds_and_pgd_for_each_model(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import lipref.plots
    seen = {}
    original = lipref.plots._finish

    def capture(plt, fig, ax, result, title, path, pgd=True):
        seen["lines"] = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
        seen["crosses"] = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
        original(plt, fig, ax, result, title, path, pgd)
    monkeypatch.setattr(lipref.plots, "_finish", capture)
    results = {"a": certification([True, True, False, False], [2.0, 0.5, 0, 0], [False, True, False, False]),
               "b": certification([True, True, True, False], [2.0, 2.0, 0.5, 0], [False, False, True, False])}
    lipref.plots.plot_comparison(results, tmp_path / "both.png")
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = {k: v for k, v in seen["lines"].items() if not k.startswith("_")}
    assert sorted(lines) == ["a, global bound", "a, local bound", "b, global bound", "b, local bound"]
    # at radius 0 each curve is the model's clean accuracy; at eps, its certified accuracy
    assert lines["a, local bound"][0] == 0.5 and lines["a, local bound"][-1] == 0.25
    assert lines["b, global bound"][0] == 0.75 and lines["b, local bound"][-1] == 0.5
    assert seen["crosses"] == {"a, PGD at eps=1": [[1.0, 0.25]], "b, PGD at eps=1": [[1.0, 0.5]]}
