"""Every script in bench/ runs, once, at smoke size (tiny inputs, one repeat) in a subprocess,
exits 0 and writes well-formed strict JSON with the keys it promises; every case of
bench/suite.py runs for lipref and for torch, and where both sides compute the same number
(a norm, a radius, a loss) they agree. The scripts and cases are read off bench/ itself, so
a new one without a smoke run here fails `test_every_bench_script_has_a_smoke_test`.

The runs start together on first use, a few at a time (`smoke_runs`), so the file takes
about as long as its slowest run. bench/study.py's and bench/study_report.py's smoke runs are
in tests/test_study.py (their --quick mode).
"""
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench import suite  # noqa: E402

# script -> the test that runs it at smoke size
SMOKE_TESTS = {
    "suite.py": "test_every_suite_case_runs_on_both_sides_and_they_agree",
    "run_all.py": "test_run_all_prints_the_table_writes_the_results_and_fills_the_markdown",
    "bench_conv.py": "test_bench_conv_checks_every_layer_against_torch",
    "bench_local_bound.py": "test_bench_local_bound_agrees_with_torch",
    "ab_taps.py": "test_ab_taps_times_both_forms_of_every_case",
    "bench_sound_certify.py": "test_bench_sound_certify_bounds_lie_above_the_estimates",
    "bench_distributed.py": "test_bench_distributed_shards_agree_with_one_process",
    "gpu.py": "test_gpu_script_runs_its_steps_on_the_cpu",
    "bench_ball_box.py": "test_bench_ball_box_times_both_multipliers",
    "study.py": "tests/test_study.py::test_the_study_pipeline_records_every_seed_and_keeps_the_hand_written_text",
    "study_report.py": "tests/test_study.py::test_the_conv_study_records_layers_per_epoch_resumes_and_keeps_mlp",
}
# modules without a command of their own -> the script whose smoke run imports them
LIBRARIES = {"__init__.py": None, "common.py": "run_all.py", "cases.py": "suite.py", "bound_cases.py": "suite.py",
             "official_step.py": "suite.py", "study_settings.py": "study.py", "study_layers.py": "study.py"}
# what each suite case's result holds beyond "seconds"
CASE_KEYS = {"matmul": {"n", "gflops"}, "conv_4c3f_mnist": {"batch", "gflops", "layers"},
             "conv_4c3f_cifar": {"batch", "gflops", "layers"}, "conv_6c2f_cifar": {"batch", "gflops", "layers"},
             "linear_4c3f_mnist": {"batch", "gflops"}, "global_bound_4c3f": {"n_iters", "global_lipschitz"},
             "local_bound_4c3f": {"batch", "n_iters", "median_radius"},
             "train_step_4c3f": {"batch", "n_iters", "loss", "first_loss"},
             "train_step_4c3f_bcp": {"batch", "n_iters", "loss", "first_loss"},
             "official_step_4c3f": {"batch", "n_iters", "loss", "first_loss", "structure"},
             "sound_certify_4c3f": {"arch", "batch", "median_lipschitz", "certified"}}
# the number both sides compute (float32, the same start vectors), for the cases that have one
AGREED = {"global_bound_4c3f": "global_lipschitz", "local_bound_4c3f": "median_radius",
          "train_step_4c3f": "first_loss", "train_step_4c3f_bcp": "first_loss"}
GPU_SMOKE_CASES = ("matmul",)
TIMEOUT_S = 300


def strict_json(text):
    """json.loads that refuses NaN and Infinity (not JSON)."""
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _commands(tmp):
    """{run name: argv} of every smoke run, the slowest first."""
    py = [sys.executable]
    markdown = tmp / "BENCH.md"
    markdown.write_text("# Bench\n\nkept before\n\n<!-- table start -->\nold table\n<!-- table end -->\n\nkept after\n")
    runs = {
        "bench_distributed": py + [str(BENCH / "bench_distributed.py"), "--smoke", "--work", str(tmp / "distributed"),
                                   "--json", str(tmp / "distributed.json")],
        "gpu": py + [str(BENCH / "gpu.py"), "--backend", "numpy", "--smoke", "--cases", ",".join(GPU_SMOKE_CASES),
                     "--tests", "tests/test_rounding.py", "tests/test_masks.py", "--out", str(tmp / "gpu.json")],
        "run_all": py + [str(BENCH / "run_all.py"), "--smoke", "--cases", "matmul,global_bound_4c3f", "--out",
                         str(tmp / "run_all.json"), "--markdown", str(markdown)],
        "bench_conv": py + [str(BENCH / "bench_conv.py"), "--smoke", "--json", str(tmp / "conv.json")],
        "bench_local_bound": py + [str(BENCH / "bench_local_bound.py"), "--smoke", "--json",
                                   str(tmp / "local_bound.json")],
        "ab_taps": py + [str(BENCH / "ab_taps.py"), "--smoke", "--json", str(tmp / "ab_taps.json")],
        "bench_sound_certify": py + [str(BENCH / "bench_sound_certify.py"), "--smoke", "--json",
                                     str(tmp / "sound.json")],
        "bench_ball_box": py + [str(BENCH / "bench_ball_box.py"), "--smoke", "--json", str(tmp / "ball_box.json")],
    }
    for impl in ("lipref", "torch"):  # every case in one process per side (run_all.py runs one per process)
        runs[f"suite {impl}"] = py + [str(BENCH / "suite.py"), ",".join(suite.CASES), impl, "--smoke"]
    return runs


class SmokeRuns:
    """Every smoke run, started at once in a pool of a few processes (each a subprocess of
    its own); `get(name)` waits for one and returns its CompletedProcess."""

    def __init__(self, tmp, workers=3):
        self.tmp = tmp
        self.pool = ThreadPoolExecutor(max_workers=workers)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.futures = {name: self.pool.submit(subprocess.run, argv, cwd=ROOT, env=env, capture_output=True,
                                               text=True, timeout=TIMEOUT_S)
                        for name, argv in _commands(tmp).items()}

    def get(self, name):
        done = self.futures[name].result()
        assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done

    def close(self):
        for future in self.futures.values():
            future.cancel()
        self.pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    runs = SmokeRuns(tmp_path_factory.mktemp("bench"))
    yield runs
    runs.close()


def _finite_positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# ------------------------------------------------------------------------------ enumeration

def test_every_bench_script_has_a_smoke_test():
    found = {p.name for p in BENCH.glob("*.py")}
    assert found == set(SMOKE_TESTS) | set(LIBRARIES), "a bench/ file without a smoke test: add it to SMOKE_TESTS"
    for name in found:  # a script has a command, a library module none
        assert ('__name__ == "__main__"' in (BENCH / name).read_text()) == (name in SMOKE_TESTS), name
    for name, test in SMOKE_TESTS.items():
        path, _, function = test.rpartition("::")
        source = (ROOT / path).read_text() if path else Path(__file__).read_text()
        assert f"def {function}(" in source, f"{name}'s smoke test {test} does not exist"
    assert all(user in SMOKE_TESTS for user in LIBRARIES.values() if user)


def test_every_suite_case_has_a_function_and_declared_keys():
    from bench import bound_cases, cases
    assert set(CASE_KEYS) == set(suite.CASES), "a suite case without a smoke check: add it to CASE_KEYS"
    for case in suite.CASES:
        assert hasattr(cases, f"case_{case}") != hasattr(bound_cases, f"case_{case}"), case
    assert set(suite.TABLE_CASES) <= set(suite.CASES) and set(suite.SMOKE) == set(suite.PAPER)
    from bench.gpu import GPU_CASES
    assert set(GPU_CASES) <= set(suite.CASES)


# ------------------------------------------------------------------------------ suite and run_all

@pytest.mark.parametrize("case", suite.CASES)
def test_every_suite_case_runs_on_both_sides_and_they_agree(smoke_runs, case):
    results = {}
    for impl in ("lipref", "torch"):
        lines = [strict_json(line) for line in smoke_runs.get(f"suite {impl}").stdout.strip().splitlines()]
        assert [r["case"] for r in lines] == list(suite.CASES)
        results[impl] = r = lines[suite.CASES.index(case)]
        assert {"case", "impl", "backend", "seconds", "peak_rss_mib", "smoke"} | CASE_KEYS[case] <= set(r)
        assert (r["case"], r["impl"], r["backend"], r["smoke"]) == (case, impl, "numpy", True)
        assert _finite_positive(r["seconds"]) and _finite_positive(r["peak_rss_mib"])
    lipref, torch = results["lipref"], results["torch"]
    if case in AGREED:
        key = AGREED[case]
        assert lipref[key] == pytest.approx(torch[key], rel=1e-5)
    if case == "sound_certify_4c3f":  # upper bounds against power-iteration estimates of the same norms
        assert lipref["median_lipschitz"] >= torch["median_lipschitz"] > 0
        assert lipref["lanczos_steps"] > 0 and torch["pi_iters"] > 0 and lipref["setup_seconds"] >= 0
    if case.startswith("conv"):
        arch, shape = ("6c2f", (3, 32, 32)) if "6c2f" in case else ("4c3f", (3, 32, 32) if "cifar" in case
                                                                     else (1, 28, 28))
        from bench.cases import conv_shapes
        assert len(lipref["layers"]) == len(torch["layers"]) == len(list(conv_shapes(arch, shape)))


def test_run_all_prints_the_table_writes_the_results_and_fills_the_markdown(smoke_runs):
    out = smoke_runs.get("run_all").stdout
    assert "| case | lipref s | torch s | lipref/torch |" in out
    for case in ("matmul", "global_bound_4c3f"):
        assert f"| {case} | " in out
    doc = strict_json((smoke_runs.tmp / "run_all.json").read_text())
    assert {"meta", "rows", "provenance"} <= set(doc) and doc["meta"]["smoke"] is True
    assert [r["case"] for r in doc["rows"]] == ["matmul", "global_bound_4c3f"]
    for row in doc["rows"]:
        assert _finite_positive(row["ratio"]) and row["lipref"]["impl"] == "lipref" and row["torch"]["impl"] == "torch"
    text = (smoke_runs.tmp / "BENCH.md").read_text()
    assert "kept before" in text and "kept after" in text and "old table" not in text
    assert "| global_bound_4c3f | " in text.split("<!-- table start -->")[1].split("<!-- table end -->")[0]


# ------------------------------------------------------------------------------ the other scripts

def test_bench_conv_checks_every_layer_against_torch(smoke_runs):
    out = smoke_runs.get("bench_conv").stdout  # --smoke implies --check: a mismatch exits non-zero
    assert "lipref pieces" in out
    doc = strict_json((smoke_runs.tmp / "conv.json").read_text())
    assert {"environment", "layers", "provenance"} <= set(doc) and doc["environment"]["smoke"] is True
    assert len(doc["layers"]) == 8  # 4c3f's four conv layers on MNIST and on CIFAR shapes
    for layer in doc["layers"]:
        assert _finite_positive(layer["lipref_s"]) and _finite_positive(layer["torch_s"]) and layer["lipref_pieces_ms"]


def test_bench_local_bound_agrees_with_torch(smoke_runs):
    smoke_runs.get("bench_local_bound")
    doc = strict_json((smoke_runs.tmp / "local_bound.json").read_text())
    assert {"results", "batch", "threads", "provenance"} <= set(doc) and doc["smoke"] is True
    assert {(r["mode"], r["n_iters"]) for r in doc["results"]} == {("values", 1), ("grad", 1)}
    for row in doc["results"]:
        assert row["rel_diff"] < 1e-4 and _finite_positive(row["ratio"])


def test_ab_taps_times_both_forms_of_every_case(smoke_runs):
    smoke_runs.get("ab_taps")
    doc = strict_json((smoke_runs.tmp / "ab_taps.json").read_text())
    assert {"results", "rounds", "compare", "provenance"} <= set(doc) and doc["smoke"] is True
    assert doc["compare"] == "taps" and len(doc["results"]) == 8 + 2  # 8 conv layers, the local bound, the train step
    for row in doc["results"]:
        assert (row["a"], row["b"]) == ("taps", "im2col")
        assert _finite_positive(row["a_s"]) and _finite_positive(row["b_s"])


def test_ab_taps_other_comparisons_switch_winograd_and_the_blocks():
    """--compare winograd and --compare blocks reach what they compare."""
    from bench.ab_taps import _settings
    from lipref.kernels import conv_blocks as KB
    from lipref.kernels import winograd as W
    x, w = (__import__("numpy").zeros(shape, dtype="float32") for shape in ((2, 32, 8, 8), (32, 32, 3, 3)))
    on, off = _settings("winograd").values()
    try:
        off()
        assert not W._forward_applies(x, w, None, 1, 1)
    finally:
        on()
    assert W._forward_applies(x, w, None, 1, 1)
    threaded, serial = _settings("blocks").values()
    try:
        serial()
        assert KB.COLUMN_BLOCK == 2 ** 21 and len(KB.blocks_of(128, 1000)) == 1 and W.map_blocks is KB.map_blocks
    finally:
        threaded()
    assert KB.map_blocks.__module__ == KB.__name__ and W.map_blocks is KB.map_blocks


def test_ab_taps_switches_the_kernels_form():
    """The A/B compares two programs only if the switch reaches the kernels' choice."""
    from bench.ab_taps import form_switch
    from lipref.kernels import conv as K
    from lipref.kernels import conv_grads as G
    set_form = form_switch()
    w = __import__("numpy").zeros((32, 32, 3, 3), dtype="float32")
    try:
        set_form("im2col")
        assert K._conv_form((4, 4), 2, 32, 32) == "im2col" and G._input_grad_method(w, 1, 1) != "row taps"
    finally:
        set_form("taps")
    assert K._conv_form((4, 4), 2, 32, 32) == "taps" and G._input_grad_method(w, 1, 1) == "row taps"


def test_bench_sound_certify_bounds_lie_above_the_estimates(smoke_runs):
    smoke_runs.get("bench_sound_certify")
    doc = strict_json((smoke_runs.tmp / "sound.json").read_text())
    assert {"sound_seconds_per_sample", "pi2000_seconds_per_sample", "per_layer", "sweep", "provenance"} <= set(doc)
    assert doc["smoke"] is True and doc["n_sound"] == 4 and len(doc["sweep"]) == 1
    assert doc["bound_ratio_sound_over_pi2000"]["min"] >= 1.0  # upper bounds against estimates of the same norms
    assert doc["global_bound_sound"] >= doc["global_bound_pi2000"] > 0


def test_bench_distributed_shards_agree_with_one_process(smoke_runs):
    smoke_runs.get("bench_distributed")  # exits non-zero when the shards' samples differ
    doc = strict_json((smoke_runs.tmp / "distributed.json").read_text())
    assert doc["samples_identical"] is True and doc["smoke"] is True
    assert doc["in_process"]["shards"] == 2 and _finite_positive(doc["single_process_seconds"])
    assert {"sharded_seconds", "speedup", "in_process", "provenance"} <= set(doc)


# ------------------------------------------------------------------------------ the GPU script

def test_gpu_script_runs_its_steps_on_the_cpu(smoke_runs):
    """bench/gpu.py with --backend numpy: the same steps and files as on a GPU."""
    out = smoke_runs.get("gpu").stdout
    doc = strict_json((smoke_runs.tmp / "gpu.json").read_text())
    assert {"device", "tests", "benchmarks", "provenance", "complete"} <= set(doc)
    assert doc["complete"] is True and doc["device"]["backend"] == "numpy"
    tests = doc["tests"]
    assert tests["status"] == "passed" and tests["passed"] > 0 and tests["failed"] == 0
    assert "LIPREF_TEST_BACKENDS=numpy" in tests["command"] and "-k numpy" in tests["command"]
    rows = doc["benchmarks"]["rows"]
    assert [r["case"] for r in rows] == list(GPU_SMOKE_CASES) and not doc["benchmarks"]["errors"]
    for row in rows:
        assert row["lipref"]["backend"] == row["torch"]["backend"] == "numpy" and _finite_positive(row["ratio"])
    assert "| matmul | " in out


def test_gpu_preflight_without_a_device_says_why_in_one_line_and_exits_2(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--out", str(tmp_path / "gpu.json")], cwd=ROOT,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench/gpu.py: ") and "Traceback" not in done.stderr
    assert "CuPy" in lines[0] and not (tmp_path / "gpu.json").exists()


def test_gpu_preflight_names_missing_packages():
    from bench.gpu import preflight
    reason = preflight("numpy", {"numpy": "lipref", "no_such_module_for_lipref": "the tests"})
    assert reason.startswith("missing Python packages: no_such_module_for_lipref (the tests); carry their wheels")
    assert "\n" not in reason and preflight("numpy", {"numpy": "lipref"}) is None


def test_results_file_is_strict_json_with_provenance_and_written_whole(tmp_path):
    from bench.common import write_json
    path = tmp_path / "out" / "gpu.json"
    write_json(path, {"seconds": float("nan"), "rows": [{"ratio": float("inf")}, (1.5, -float("inf"))]})
    doc = strict_json(path.read_text())
    assert doc["seconds"] is None and doc["rows"] == [{"ratio": None}, [1.5, None]]
    assert {"lipref_version", "command_line", "extras", "kernels"} <= set(doc["provenance"])
    with pytest.raises(TypeError):  # not serialisable: the old file stays, whole, and no temporary is left
        write_json(path, {"rows": {1, 2}})
    assert strict_json(path.read_text())["rows"] == [{"ratio": None}, [1.5, None]]
    assert [p.name for p in path.parent.iterdir()] == ["gpu.json"]


def test_gpu_junit_summary_counts_skips_and_all_skipped_is_no_pass(tmp_path):
    from bench.gpu import junit_summary, suite_status
    report = tmp_path / "junit.xml"
    report.write_text('<testsuites><testsuite name="pytest">'
                      '<testcase classname="tests.test_a" name="test_x[cupy]"/>'
                      '<testcase classname="tests.test_a" name="test_y[cupy]"><failure message="boom"/></testcase>'
                      '<testcase classname="tests.test_b" name="test_z[cupy]">'
                      '<skipped message="CuPy backend not tested: no device"/></testcase>'
                      '</testsuite></testsuites>')
    summary = junit_summary(report)
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (1, 1, 1)
    assert summary["failed_tests"] == ["tests.test_a::test_y[cupy]"]
    assert summary["skip_reasons"] == {"CuPy backend not tested: no device": 1}
    assert suite_status(0, {"passed": 0}) == "all skipped" and suite_status(0, summary) == "passed"
    assert suite_status(1, summary) == "failed" and suite_status(5, None) == "no tests selected"


def test_gpu_parts_past_their_limit_are_stopped_and_recorded():
    """On the GPU a hung part must not eat the budget: the tests and each case stop at their limit."""
    from bench.gpu import run_tests
    from bench.run_all import CaseFailed, run_case
    stopped = run_tests("numpy", ["tests/test_rounding.py"], 0.05)
    assert stopped["status"] == "stopped after 0 s" and stopped["seconds"] < 30
    with pytest.raises(CaseFailed, match="matmul lipref: timed out after 0.05 s"):
        run_case("matmul", "lipref", 1, 1, smoke=True, timeout=0.05)


def test_bench_ball_box_times_both_multipliers(smoke_runs):
    smoke_runs.get("bench_ball_box")
    doc = strict_json((smoke_runs.tmp / "ball_box.json").read_text())
    for name in ("certify", "gloro_bcp_step"):
        assert doc[name]["seconds_kernel"] > 0 and doc[name]["seconds_plain"] > 0
