"""The benchmark suite: lipref against torch 2.13.0 on the CPU, one process per case and
implementation, in one run; prints a table of medians and ratios and writes
bench/results/<date>-<machine>.json.

    python bench/run_all.py [--repeats 5] [--rounds 3] [--threads 2] [--cases conv_4c3f_mnist,...]
                            [--clock wall|cpu] [--markdown BENCHMARKS.md] [--out PATH] [--smoke]

Peak memory is each process's maximum resident set size as the OS reports it (getrusage's
ru_maxrss, read by the process at its end), so each number includes the interpreter and
the library (torch alone is ~300 MB). The default cases leave out sound_certify_4c3f (its
torch side runs 2,000 power-iteration steps per layer and sample, minutes on a CPU);
--cases names it. --smoke runs every case of bench/suite.py at tiny sizes, once, and
writes a results file only where --out says (tests/test_bench.py); its times mean nothing.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.suite import CASES, TABLE_CASES  # noqa: E402

IMPLS = ("lipref", "torch")


class CaseFailed(RuntimeError):
    """A case's process failed, printed no result, or ran past its time limit."""


def run_case(case, impl, threads, repeats, coretype=None, backend="numpy", smoke=False, timeout=None, clock="wall"):
    """The result dict of one case in a fresh process (bench/suite.py), peak memory included;
    CaseFailed (with the process's error output) when it fails or outlasts `timeout` s."""
    cmd = [sys.executable, str(ROOT / "bench" / "suite.py"), case, impl, "--threads", str(threads),
           "--repeats", str(repeats), "--backend", backend, "--clock", clock] \
        + (["--openblas-coretype", coretype] if coretype else []) + (["--smoke"] if smoke else [])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CaseFailed(f"{case} {impl}: timed out after {timeout:g} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise CaseFailed(f"{case} {impl} failed (exit {done.returncode}):\n{done.stderr.strip()[-4000:]}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise CaseFailed(f"{case} {impl} printed no JSON result: {lines[-1][:200]!r}") from None


def _cell(result, key, form):
    value = (result or {}).get(key)
    return format(value, form) if isinstance(value, (int, float)) else "-"


def table(rows, memory="peak_rss_mib", memory_label="MiB"):
    """The markdown table of rows {"case", "lipref": result, "torch": result, "ratio"}
    (a side that failed is None and shows as "-"); the memory columns show each side's
    result[memory] (bench/gpu.py: the device's)."""
    head = ["case", "lipref s", "torch s", "lipref/torch", "lipref GFLOP/s", f"lipref {memory_label}",
            f"torch {memory_label}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lip, tor = r.get("lipref"), r.get("torch")
        ratio = format(r["ratio"], ".2f") if r.get("ratio") is not None else "-"
        lines.append(f"| {r['case']} | {_cell(lip, 'seconds', '.4f')} | {_cell(tor, 'seconds', '.4f')} | {ratio} | "
                     f"{_cell(lip, 'gflops', '.1f')} | {_cell(lip, memory, '.0f')} | {_cell(tor, memory, '.0f')} |")
    return "\n".join(lines)


def pair_row(case, lipref, torch):
    """One table row: both sides' results and lipref / torch (None where a side is missing)."""
    ratio = lipref["seconds"] / torch["seconds"] if lipref and torch and torch["seconds"] > 0 else None
    return {"case": case, "lipref": lipref, "torch": torch, "ratio": ratio}


def best_of_rounds(args, cases):
    """Every case and implementation run args.rounds times (interleaved), each one's fastest."""
    best = {}
    for r in range(args.rounds):
        for case in cases:
            for impl in IMPLS:
                result = run_case(case, impl, args.threads, args.repeats, args.openblas_coretype, smoke=args.smoke,
                                  clock=args.clock)
                if (case, impl) not in best or result["seconds"] < best[case, impl]["seconds"]:
                    best[case, impl] = result
            row = pair_row(case, best[case, "lipref"], best[case, "torch"])
            print(f"round {r + 1}/{args.rounds} {case:22s} lipref {row['lipref']['seconds']:.4f} s  "
                  f"torch {row['torch']['seconds']:.4f} s  ratio {row['ratio']:.2f} (best so far)", flush=True)
    return [pair_row(case, best[case, "lipref"], best[case, "torch"]) for case in cases]


def summary_text(rows, meta):
    """The text between BENCHMARKS.md's markers: a header line, the table, the matmul scale."""
    clock = "" if meta.get("clock", "wall") == "wall" else f" ({meta['clock']} time)"
    text = (f"NumPy BLAS: {meta['numpy_blas']}; {meta['threads']} threads; medians of {meta['repeats']}{clock}, "
            f"best of {meta['rounds']} rounds\n\n" + table(rows))
    matmul = next((r["lipref"] for r in rows if r["case"] == "matmul"), None)
    if matmul:
        rate = matmul["gflops"]
        fractions = ", ".join(f"{r['case']} {r['lipref']['gflops'] / rate:.0%}" for r in rows
                              if r["case"].startswith(("conv", "linear")))
        text += (f"\n\nfloat32 matmul rate (NumPy, {matmul['n']}^3): {rate:.1f} GFLOP/s; conv rows as a fraction "
                 f"of it: {fractions}")
    return text


def replace_between_markers(path, text, marker):
    """Put `text` between <!-- MARKER start --> and <!-- MARKER end --> in the file at `path`."""
    from lipref.models import atomic_write_bytes
    path = Path(path)
    doc = path.read_text()
    start, end = f"<!-- {marker} start -->", f"<!-- {marker} end -->"
    if start not in doc or end not in doc:
        sys.exit(f"{path}: no {start} ... {end} markers to put the table between")
    doc = doc.split(start)[0] + start + "\n" + text + "\n" + end + doc.split(end)[1]
    atomic_write_bytes(path, doc.encode("utf-8"))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use (1 with --smoke)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every case and implementation this many times (interleaved) and keep each one's "
                         "fastest: on a shared or virtual machine a neighbour's load slows single runs")
    ap.add_argument("--cases", default=None, help=f"comma-separated, of {', '.join(CASES)} (default: all but "
                                                  "sound_certify_4c3f; with --smoke, all)")
    ap.add_argument("--openblas-coretype", help="passed to suite.py (see its --help)")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"), help="passed to suite.py (see its --help)")
    ap.add_argument("--markdown", help="replace the table between the markers in this file")
    ap.add_argument("--marker", default="table", help="the markers are <!-- MARKER start/end -->")
    ap.add_argument("--tag", default="", help="added to the results file's name (e.g. the CPU), so that runs "
                                              "on different machines of one architecture and day do not overwrite "
                                              "each other")
    ap.add_argument("--out", help="the results file (default: bench/results/<date>-<machine>-<threads>threads"
                                  "[-tag].json; with --smoke, none)")
    ap.add_argument("--smoke", action="store_true", help="every case at tiny sizes, once: checks that they run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.repeats, args.rounds = 1, 1
    args.threads = args.threads or (1 if args.smoke else len(os.sched_getaffinity(0)))
    args.cases = args.cases.split(",") if args.cases else list(CASES if args.smoke else TABLE_CASES)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {', '.join(unknown)}; known: {', '.join(CASES)}")
    return args


def main(argv=None):
    args = parse(argv)
    load_start = os.getloadavg()[0]
    rows = best_of_rounds(args, args.cases)
    matmul = next((r for r in rows if r["case"] == "matmul"), None)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "processor": platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "repeats": args.repeats, "rounds": args.rounds,
            "python": platform.python_version(),
            "matmul_gflops_float32": matmul["lipref"]["gflops"] if matmul else None,
            "numpy_blas": rows[0]["lipref"].get("blas"), "openblas_coretype": args.openblas_coretype,
            "clock": args.clock, "load_average_1min": [load_start, os.getloadavg()[0]], "smoke": args.smoke}
    text = summary_text(rows, meta)
    print(text)
    out = args.out
    if out is None and not args.smoke:
        tag = (f"-{args.tag}" if args.tag else "") + (f"-{args.openblas_coretype}" if args.openblas_coretype else "")
        out = ROOT / "bench" / "results" / f"{meta['date']}-{platform.machine()}-{args.threads}threads{tag}.json"
    if out is not None:
        from bench.common import write_json
        write_json(out, {"meta": meta, "rows": rows})
        print(f"wrote {out}")
    if args.markdown:
        replace_between_markers(args.markdown, text, args.marker)


if __name__ == "__main__":
    main()
