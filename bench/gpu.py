"""The GPU run: the CuPy test suite, then lipref on CuPy against torch on CUDA, within a time
budget, all results in one JSON file.

    python bench/gpu.py --out gpu.json [--budget 480] [--test-limit 200] [--case-limit 90]
                        [--cases matmul,...] [--tests tests] [--repeats 5] [--backend cupy|numpy] [--smoke]

First a preflight: the Python packages lipref and its tests need, CuPy with a working CUDA
device, torch with CUDA. Anything missing ends the run at once with one line saying what
(exit code 2). Then, until --budget seconds have passed since the start:

1. the tests on the CuPy backend: `LIPREF_TEST_BACKENDS=cupy LIPREF_HYPOTHESIS_PROFILE=dev
   pytest -q -x -k cupy tests` (every test the `xp` fixture runs on CuPy, and those named
   for CuPy), stopped after --test-limit seconds; counts, failures and skip reasons from
   pytest's JUnit report (all skipped is not a pass);
2. each case of GPU_CASES (bench/suite.py's cases at the paper's sizes; every timed run
   ends in a device synchronisation) for lipref and for torch, each in its own process
   (bench/run_all.py's run_case), stopped after --case-limit seconds.

The results file (--out, strict JSON, rewritten atomically after every part, so a run cut
short keeps what it finished) holds the device, driver, CuPy and torch versions, lipref's
provenance, the tests' outcome and every case's result; a table is printed at the end.
Exit code 0 when the tests passed and every case ran, 1 otherwise. --backend numpy runs the
same steps on the CPU (NumPy tests, torch on the CPU): tests/test_bench.py runs it with
--smoke (tiny sizes, one repeat) to check this script on a machine without a GPU.
"""
import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPU_CASES = ("matmul", "conv_4c3f_mnist", "conv_4c3f_cifar", "conv_6c2f_cifar", "local_bound_4c3f",
             "train_step_4c3f", "sound_certify_4c3f")
# module -> what needs it; the device image may lack some (BENCHMARKS.md says which wheels to carry)
REQUIRED = {"numpy": "lipref", "scipy": "lipref", "array_api_compat": "lipref", "threadpoolctl": "lipref",
            "click": "lipref", "pytest": "the tests", "hypothesis": "the tests", "array_api_strict": "the tests",
            "autograd": "the tests", "torch": "the torch side"}
MIN_CASE_S = 10  # a case is not started with less of the budget left


def one_line(text):
    return " ".join(str(text).split())


def preflight(backend, required=REQUIRED):
    """None when the run can start, else one line saying what is missing."""
    missing = [f"{m} ({why})" for m, why in required.items() if importlib.util.find_spec(m) is None]
    if missing:
        return f"missing Python packages: {', '.join(missing)}; carry their wheels (BENCHMARKS.md, 'On a GPU')"
    if backend == "numpy":
        return None
    from lipref.backend import cupy_unavailable_reason
    reason = cupy_unavailable_reason()
    if reason is not None:
        return reason
    try:
        import torch
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} finds no CUDA device (built for CUDA {torch.version.cuda})"
        torch.zeros(1, device="cuda").sum().item()
    except Exception as exc:  # a broken install or driver, said in one line
        return f"torch cannot use the CUDA device ({type(exc).__name__}: {exc})"
    return None


def nvidia_smi(query):
    """nvidia-smi's answer to --query-gpu=QUERY for the first GPU, or None."""
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def device_info(backend):
    """What the run ran on: the machine and, on a GPU, the device, driver, CUDA, CuPy and torch."""
    info = {"backend": backend, "machine": platform.node(), "processor": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    if backend == "numpy":
        return {**info, "device": "CPU"}
    import cupy
    import torch
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return {**info, "device": name.decode() if isinstance(name, bytes) else name,
            "device_memory_mib": props["totalGlobalMem"] / 2 ** 20, "driver": nvidia_smi("driver_version"),
            "cuda_driver_api": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cupy": cupy.__version__, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "torch_device": torch.cuda.get_device_name(0)}


# ------------------------------------------------------------------------------ tests

def junit_summary(path):
    """Counts, failed tests and skip reasons from pytest's JUnit XML report."""
    counts, failed, skipped = Counter(), [], Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        counts[outcome] += 1
        if outcome in ("failure", "error"):
            failed.append(name)
        elif outcome == "skipped":
            skipped[one_line(next(c for c in case if c.tag == "skipped").get("message", ""))[:200]] += 1
    return {"passed": counts["passed"], "failed": counts["failure"] + counts["error"], "skipped": counts["skipped"],
            "failed_tests": failed, "skip_reasons": dict(skipped.most_common(5))}


def _text(data):
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def suite_status(code, summary):
    """passed only when pytest exited 0 and at least one test ran (all skipped is not a pass)."""
    if code == 0:
        return "passed" if summary and summary["passed"] > 0 else "all skipped"
    return {1: "failed", 5: "no tests selected"}.get(code, f"error (pytest exit {code})")


def tests_line(tests):
    counts = ", ".join(f"{tests.get(k, '?')} {k}" for k in ("passed", "failed", "skipped"))
    return f"tests: {tests['status']} ({counts}) in {tests['seconds']:.0f} s"


def run_tests(backend, paths, limit):
    """The tests on `backend`, stopped after `limit` seconds: a dict for the results file."""
    env = {**os.environ, "LIPREF_TEST_BACKENDS": backend, "LIPREF_HYPOTHESIS_PROFILE": "dev"}
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        args = ["-m", "pytest", "-q", "-x", "-k", backend, "-p", "no:cacheprovider", *paths]
        cmd = [sys.executable, *args, f"--junitxml={junit}"]
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            code, output = None, _text(exc.stdout) + _text(exc.stderr)
        seconds = time.perf_counter() - start
        summary = junit_summary(junit) if junit.exists() else None
    status = f"stopped after {limit:.0f} s" if code is None else suite_status(code, summary)
    return {"command": f"LIPREF_TEST_BACKENDS={backend} LIPREF_HYPOTHESIS_PROFILE=dev python " + " ".join(args),
            "status": status, "seconds": seconds, **(summary or {}), "output_tail": output[-3000:]}


# ------------------------------------------------------------------------------ benchmarks

def run_benchmarks(args, deadline, on_row):
    """Every case of args.cases for lipref and torch, each in its own process, while the
    budget lasts: (rows as run_all.table takes them, errors); on_row(rows, errors) after each."""
    from bench.run_all import IMPLS, CaseFailed, pair_row, run_case
    rows, errors = [], []
    for case in args.cases:
        pair = {}
        for impl in IMPLS:
            left = deadline - time.monotonic()
            pair[impl] = None
            if left < MIN_CASE_S:
                errors.append(f"{case} {impl}: not run, the time budget was spent")
                continue
            try:
                pair[impl] = run_case(case, impl, args.threads, args.repeats, backend=args.backend, smoke=args.smoke,
                                      timeout=min(args.case_limit, left))
            except CaseFailed as exc:
                errors.append(str(exc))
        rows.append(pair_row(case, pair["lipref"], pair["torch"]))
        on_row(rows, errors)
    return rows, errors


def parse(argv=None):
    from bench.suite import CASES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the results file (JSON, written atomically after every part)")
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole run, preflight included")
    ap.add_argument("--test-limit", type=float, default=200, help="seconds for the tests")
    ap.add_argument("--case-limit", type=float, default=90, help="seconds for one case and implementation")
    ap.add_argument("--cases", default=",".join(GPU_CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--tests", nargs="*", default=["tests"], help="test files or folders (none given: no tests)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="cupy", choices=("cupy", "numpy"),
                    help="numpy: the same steps on the CPU (a check of this script without a GPU)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    args = ap.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.smoke:
        args.repeats = 1
    args.threads = 1 if args.smoke else len(os.sched_getaffinity(0))
    return args


def main(argv=None):
    start = time.monotonic()
    args = parse(argv)
    reason = preflight(args.backend)
    if reason is not None:
        print(f"bench/gpu.py: {one_line(reason)}", file=sys.stderr)
        return 2
    from bench.common import write_json
    from bench.run_all import table
    deadline = start + args.budget
    doc = {"kind": "lipref GPU run (bench/gpu.py)", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "budget_s": args.budget, "smoke": args.smoke, "repeats": args.repeats, "device": device_info(args.backend),
           "tests": None, "benchmarks": {"rows": [], "errors": []}, "complete": False}
    write_json(args.out, doc)
    if args.tests:
        doc["tests"] = run_tests(args.backend, args.tests, min(args.test_limit, deadline - time.monotonic()))
        print(tests_line(doc["tests"]), flush=True)
        write_json(args.out, doc)

    def save(rows, errors):
        doc["benchmarks"] = {"rows": rows, "errors": errors}
        doc["seconds"] = time.monotonic() - start
        write_json(args.out, doc)
    rows, errors = run_benchmarks(args, deadline, save)
    tests_ok = not args.tests or doc["tests"]["status"] == "passed"
    doc["complete"] = tests_ok and not errors
    save(rows, errors)
    on_gpu = args.backend == "cupy"
    print(table(rows, "device_peak_mib" if on_gpu else "peak_rss_mib", "device MiB" if on_gpu else "MiB"))
    for error in errors:  # the first line; the results file has the whole error output
        print(error.splitlines()[0])
    print(f"wrote {args.out}")
    return 0 if doc["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
