"""The benchmark suite: lipref against torch 2.13.0 on the CPU, one process per case and
implementation, in one run; prints a table of medians and ratios and writes
bench/results/<date>-<machine>.json.

    python bench/run_all.py [--repeats 5] [--rounds 3] [--threads 2] [--cases conv_4c3f_mnist,...] [--markdown BENCHMARKS.md]

Peak memory is the process's maximum resident set size as the OS reports it (wait4's
ru_maxrss), so each number includes the interpreter and the library (torch alone is
~300 MB). Sound certification against 2,000-iteration power iteration is a separate,
longer benchmark: bench/bench_sound_certify.py.
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
from bench.suite import CASES  # noqa: E402


def run_case(case, impl, threads, repeats, coretype=None):
    """(result dict, peak RSS in MiB) of one case in a fresh process."""
    cmd = [sys.executable, str(ROOT / "bench" / "suite.py"), case, impl, "--threads", str(threads),
           "--repeats", str(repeats)] + (["--openblas-coretype", coretype] if coretype else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{case} {impl} failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024.0  # KiB on Linux
    return result


def table(rows):
    head = ["case", "lipref s", "torch s", "lipref/torch", "lipref GFLOP/s", "lipref MiB", "torch MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        gf = f"{r['lipref'].get('gflops', float('nan')):.1f}" if "gflops" in r["lipref"] else "-"
        lines.append(f"| {r['case']} | {r['lipref']['seconds']:.4f} | {r['torch']['seconds']:.4f} | "
                     f"{r['ratio']:.2f} | {gf} | {r['lipref']['peak_rss_mib']:.0f} | {r['torch']['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every case and implementation this many times (interleaved) and keep each one's "
                         "fastest: on a shared or virtual machine a neighbour's load slows single runs")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--openblas-coretype", help="passed to suite.py (see its --help)")
    ap.add_argument("--markdown", help="replace the table between the markers in this file")
    ap.add_argument("--marker", default="table", help="the markers are <!-- MARKER start/end -->")
    ap.add_argument("--tag", default="", help="added to the results file's name (e.g. the CPU), so that runs "
                                              "on different machines of one architecture and day do not overwrite "
                                              "each other")
    args = ap.parse_args()
    cases = args.cases.split(",")
    best = {}
    for r in range(args.rounds):
        for case in cases:
            for impl in ("lipref", "torch"):
                result = run_case(case, impl, args.threads, args.repeats, args.openblas_coretype)
                if (case, impl) not in best or result["seconds"] < best[case, impl]["seconds"]:
                    best[case, impl] = result
            pair = {impl: best[case, impl] for impl in ("lipref", "torch")}
            print(f"round {r + 1}/{args.rounds} {case:22s} lipref {pair['lipref']['seconds']:.4f} s  "
                  f"torch {pair['torch']['seconds']:.4f} s  ratio {pair['lipref']['seconds'] / pair['torch']['seconds']:.2f}"
                  " (best so far)", flush=True)
    rows = []
    for case in cases:
        pair = {impl: best[case, impl] for impl in ("lipref", "torch")}
        rows.append({"case": case, **pair, "ratio": pair["lipref"]["seconds"] / pair["torch"]["seconds"]})
    matmul = next((r for r in rows if r["case"] == "matmul"), None)
    rate = matmul["lipref"]["gflops"] if matmul else None
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "processor": platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "repeats": args.repeats, "rounds": args.rounds,
            "python": platform.python_version(), "matmul_gflops_float32": rate,
            "numpy_blas": rows[0]["lipref"].get("blas"), "openblas_coretype": args.openblas_coretype}
    tag = (f"-{args.tag}" if args.tag else "") + (f"-{args.openblas_coretype}" if args.openblas_coretype else "")
    out = ROOT / "bench" / "results" / f"{meta['date']}-{platform.machine()}-{args.threads}threads{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    os.replace(tmp, out)
    text = (f"NumPy BLAS: {meta['numpy_blas']}; {args.threads} threads; medians of {args.repeats}, "
            f"best of {args.rounds} rounds\n\n" + table(rows))
    if rate:
        text += f"\n\nfloat32 matmul rate (NumPy, 2048^3): {rate:.1f} GFLOP/s; conv rows as a fraction of it: " + \
            ", ".join(f"{r['case']} {r['lipref']['gflops'] / rate:.0%}" for r in rows
                      if r["case"].startswith(("conv", "linear")))
    print(text)
    print(f"wrote {out}")
    if args.markdown:
        path = Path(args.markdown)
        doc = path.read_text()
        start, end = f"<!-- {args.marker} start -->", f"<!-- {args.marker} end -->"
        if start in doc and end in doc:
            doc = doc.split(start)[0] + start + "\n" + text + "\n" + end + doc.split(end)[1]
            path.write_text(doc)


if __name__ == "__main__":
    main()
