"""A/B in one process: two settings of the conv kernels, alternating, on the same cases.

    python bench/ab_taps.py [--compare taps|winograd|blocks] [--rounds 11] [--threads T] [--clock wall|cpu]
                            [--json PATH] [--smoke]

On a shared virtual machine the speed of memory-bound work drifts by tens of percent
between runs minutes apart, more than the differences measured here, so comparing two
benchmark runs says little. This script times both settings alternately in one process
(the order flips every round) and reports, per case, the fastest time of each and the
median over rounds of the paired ratio a / b (below 1: a is faster). The comparisons:

- taps (the script's first use, hence its name): a = conv2d's forms as
  lipref/kernels/conv.py's `_conv_form` picks them (taps, row taps, and the channel-major
  im2col of first layers), b = im2col everywhere, i.e.
  `kernels.conv._conv_form` answering "im2col" and `kernels.conv_grads._input_grad_method`
  never answering "row taps", exactly the code before the tap forms existed; Winograd off
  in both (it would take the layers both compare);
- winograd: a = Winograd's kernels on (kernels/winograd.py), b = off (conv.py's forms);
- blocks: a = the conv kernels' cache-sized blocks mapped in threads (kernels/conv_blocks.py),
  b = their former schedule, blocks of 2^21 column entries one after another with the
  products' own BLAS threads.

Cases: the forward, input gradient and weight gradient of each 4c3f conv layer (batch
128, MNIST and CIFAR shapes), as bench/suite.py's conv cases time them; the local bound as
suite.py's local_bound_4c3f (batch 256, 5 power iterations); a train step as
train_step_4c3f. (The masked Gram step, timed here until 2026-12-02, no longer uses these
forms: power iteration runs on the conv layer's grid, lipref/kernels/conv_grid.py.)
--smoke: one round at suite.py's smoke sizes, one thread (tests/test_bench.py; the times
mean nothing).
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
    ap.add_argument("--compare", default="taps", choices=tuple(COMPARISONS), help="which two settings (see above)")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="cpu: the process's CPU time instead of wall time, which a machine shared with other "
                         "work stretches while this process waits for a core; meaningful with --threads 1")
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


def winograd_switch():
    """set_winograd(on): Winograd's kernels apply where they fit, or nowhere."""
    from lipref.kernels import winograd as W
    original = W.MIN_CHANNELS

    def set_winograd(on):
        W.MIN_CHANNELS = original if on else 10 ** 9
    return set_winograd


def blocks_switch():
    """set_blocks(threaded): the conv kernels' blocks as they are, or the former schedule
    (2^21 column entries a block, one block after another, each product on BLAS's threads)."""
    from lipref.kernels import conv_blocks as KB
    original = KB.map_blocks, KB.COLUMN_BLOCK, KB.MIN_BLOCKS

    def serial(xp, fn, blocks):
        return [fn(b) for b in blocks]

    def set_blocks(threaded):
        KB.map_blocks, KB.COLUMN_BLOCK, KB.MIN_BLOCKS = original if threaded else (serial, 2 ** 21, 1)
        for module in _block_users():
            module.map_blocks = KB.map_blocks
    return set_blocks


def _block_users():
    from lipref.kernels import conv_grads, winograd
    return (conv_grads, winograd)


def _settings(compare):
    """{label: function setting it} of the two settings compared, a first."""
    if compare == "taps":
        set_form, set_winograd = form_switch(), winograd_switch()
        return {"taps": lambda: (set_winograd(False), set_form("taps")),
                "im2col": lambda: (set_winograd(False), set_form("im2col"))}
    if compare == "winograd":
        set_winograd = winograd_switch()
        return {"winograd": lambda: set_winograd(True), "without": lambda: set_winograd(False)}
    set_blocks = blocks_switch()
    return {"threaded blocks": lambda: set_blocks(True), "serial blocks": lambda: set_blocks(False)}


COMPARISONS = ("taps", "winograd", "blocks")


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.common import set_threads
    set_threads(args.threads)  # before NumPy is imported
    from bench.suite import PAPER, SMOKE
    size = SMOKE if args.smoke else PAPER
    settings = _settings(args.compare)
    (a, set_a), (b, set_b) = settings.items()
    results = []
    try:
        for name, fn in conv_cases(size) + model_cases(size):
            times = {a: [], b: []}
            for label in (a, b):  # warm-up
                settings[label]()
                fn()
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            for r in range(args.rounds):
                for label in ((a, b) if r % 2 == 0 else (b, a)):
                    settings[label]()
                    t0 = clock()
                    fn()
                    times[label].append(clock() - t0)
            ratio = statistics.median(x / y for x, y in zip(times[a], times[b]))
            row = {"case": name, "a": a, "b": b, "a_s": min(times[a]), "b_s": min(times[b]), "median_paired_ratio": ratio}
            results.append(row)
            print(f"{name:45s} {a} {row['a_s']:.4f} s  {b} {row['b_s']:.4f} s  {a}/{b} (median of {args.rounds} pairs) "
                  f"{ratio:.3f}", flush=True)
    finally:
        set_a()
    if args.json is not None:
        from bench.common import write_json
        write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "compare": args.compare, "clock": args.clock,
                               "threads": args.threads, "load_average_1min": os.getloadavg()[0],
                               "rounds": args.rounds, "smoke": args.smoke, "results": results})
    return results


if __name__ == "__main__":
    main()
