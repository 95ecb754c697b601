"""A/B in one process: conv2d's tap forms (lipref/kernels/conv.py, `_conv_form`) against im2col everywhere.

    python bench/ab_taps.py [--rounds 11] [--threads T] [--json PATH] [--smoke]

On a shared virtual machine the speed of memory-bound work drifts by tens of percent
between runs minutes apart, more than the difference measured here, so comparing two
benchmark runs says little. This script times both forms alternately in one process
(the order flips every round) and reports, per case, the fastest time of each form and
the median over rounds of the paired ratio taps / im2col (below 1: the tap forms are
faster). "im2col" is the code with `kernels.conv._conv_form` answering "im2col" and
`kernels.conv_grads._input_grad_method` never answering "row taps", which is exactly the
code before the tap forms existed.

Cases: the forward, input gradient and weight gradient of each 4c3f conv layer (batch
128, MNIST and CIFAR shapes; the first layers take no tap form and are a control), as
bench/suite.py's conv cases time them; the local bound as suite.py's local_bound_4c3f
(batch 256, 5 power iterations); a train step as train_step_4c3f. (The masked Gram step,
timed here until 2026-12-02, no longer uses these forms: power iteration runs on the conv
layer's grid, lipref/kernels/conv_grid.py.) --smoke: one round at suite.py's smoke sizes,
one thread (tests/test_bench.py; the times mean nothing).
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use (1 with --smoke)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (atomic)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks that the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds = 1
    args.threads = args.threads or (1 if args.smoke else len(os.sched_getaffinity(0)))
    return args


def conv_cases(size):
    """(name, function) for each 4c3f layer's forward + input and weight gradients."""
    from bench.cases import conv_data, conv_shapes, lipref_conv_step
    from bench.suite import Bench
    bench, batch = Bench("lipref", "numpy", size), size["layer_batch"]
    cases = []
    for data, shape in (("mnist", (1, 28, 28)), ("cifar", (3, 32, 32))):
        for (c, h, w), o, k, s, p in conv_shapes("4c3f", shape):
            step = lipref_conv_step(bench, *conv_data(batch, c, h, w, o, k, s, p), s, p)
            cases.append((f"conv {data} {c}->{o} k{k} s{s} fwd+bwd", step))
    return cases


def model_cases(size):
    """The local bound and the train step, lipref's side of bench/suite.py's cases: each
    case runs with a Bench that keeps the function it would time instead of timing it."""
    from bench import bound_cases
    from bench.suite import Bench

    class Capture(Bench):
        def seconds(self, fn):
            self.fn = fn
            return 0.0
    cases = []
    for name, case in (("local bound (suite local_bound_4c3f)", bound_cases.case_local_bound_4c3f),
                       ("train step (suite train_step_4c3f)", bound_cases.case_train_step_4c3f)):
        bench = Capture("lipref", "numpy", size, 1)
        case(bench)
        cases.append((name, bench.fn))
    return cases


def form_switch():
    """set_form("taps" | "im2col"): the kernels' choice as it is, or im2col everywhere."""
    from lipref.kernels import conv as K
    from lipref.kernels import conv_grads as G
    original = K._conv_form, G._conv_form, G._input_grad_method

    def im2col_form(kernel_hw, stride, in_channels, out_channels):
        return "im2col"

    def no_row_taps(weight, stride, padding):
        return "gather" if G._gathers(weight, stride) else "scatter"

    def set_form(form):
        K._conv_form, G._conv_form, G._input_grad_method = original if form == "taps" else (
            im2col_form, im2col_form, no_row_taps)
    return set_form


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.common import set_threads
    set_threads(args.threads)  # before NumPy is imported
    from bench.suite import PAPER, SMOKE
    size = SMOKE if args.smoke else PAPER
    set_form = form_switch()
    results = []
    try:
        for name, fn in conv_cases(size) + model_cases(size):
            times = {"taps": [], "im2col": []}
            for form in ("taps", "im2col"):  # warm-up
                set_form(form)
                fn()
            for r in range(args.rounds):
                for form in (("taps", "im2col") if r % 2 == 0 else ("im2col", "taps")):
                    set_form(form)
                    t0 = time.perf_counter()
                    fn()
                    times[form].append(time.perf_counter() - t0)
            ratio = statistics.median(a / b for a, b in zip(times["taps"], times["im2col"]))
            row = {"case": name, "taps_s": min(times["taps"]), "im2col_s": min(times["im2col"]),
                   "median_paired_ratio": ratio}
            results.append(row)
            print(f"{name:45s} taps {row['taps_s']:.4f} s  im2col {row['im2col_s']:.4f} s  "
                  f"taps/im2col (median of {args.rounds} pairs) {ratio:.3f}", flush=True)
    finally:
        set_form("taps")
    if args.json is not None:
        from bench.common import write_json
        write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "rounds": args.rounds,
                               "smoke": args.smoke, "results": results})
    return results


if __name__ == "__main__":
    main()
