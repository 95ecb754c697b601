"""A/B in one process: conv2d's tap forms (primitives._conv_form) against im2col everywhere.

    python bench/ab_taps.py [--rounds 11] [--threads T] [--json PATH]

On a shared virtual machine the speed of memory-bound work drifts by tens of percent
between runs minutes apart, more than the difference measured here, so comparing two
benchmark runs says little. This script times both forms alternately in one process
(the order flips every round) and reports, per case, the fastest time of each form and
the median over rounds of the paired ratio taps / im2col (below 1: the tap forms are
faster). "im2col" is the code with `primitives._conv_form` answering "im2col" and
`primitives._input_grad_method` never answering "row taps", which is exactly the code
before the tap forms existed.

Cases: the forward, input gradient and weight gradient of each 4c3f conv layer (batch
128, MNIST and CIFAR shapes; the first layers take no tap form and are a control); the
local bound as bench/suite.py's local_bound_4c3f (batch 256, 5 power iterations); a train
step as train_step_4c3f. (The masked Gram step, timed here until 2026-12-02, no longer uses
these forms: power iteration runs on the conv layer's grid, lipref/bounds/conv_grid.py.)
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (atomic)")
    return ap.parse_args(argv)


def conv_cases(np, P):
    """(name, function) for each strided 4c3f layer's forward + input and weight gradients."""
    from suite import conv_shapes
    cases = []
    for data, shape in (("mnist", (1, 28, 28)), ("cifar", (3, 32, 32))):
        for (c, h, w), o, k, s, p in conv_shapes("4c3f", shape):
            rng = np.random.default_rng([c, h, o, k, s])
            x = rng.standard_normal((128, c, h, w), dtype=np.float32)
            wt = rng.standard_normal((o, c, k, k), dtype=np.float32) * np.float32(0.1)
            b = np.zeros(o, dtype=np.float32)
            oh, ow = P.conv_output_hw(h, w, k, k, s, p)
            g = rng.standard_normal((128, o, oh, ow), dtype=np.float32)

            def step(x=x, wt=wt, b=b, g=g, s=s, p=p):
                P.conv2d.forward(x, wt, b, s, p)
                P._conv2d_input_grad(g, wt, s, p, (x.shape[2], x.shape[3]))
                P._conv2d_weight_grad(g, x, wt.shape, s, p)
            cases.append((f"conv {data} {c}->{o} k{k} s{s} fwd+bwd", step))
    return cases


def model_cases():
    """The local bound and the train step, lipref's side of bench/suite.py's cases."""
    import suite
    cases = []
    for name, case in (("local bound (suite local_bound_4c3f)", suite.case_local_bound_4c3f),
                       ("train step (suite train_step_4c3f)", suite.case_train_step_4c3f)):
        captured = {}

        def capture(fn, repeats, sync=None, captured=captured):
            captured["fn"] = fn
            return 0.0
        original = suite.median_seconds
        suite.median_seconds = capture
        try:
            case("lipref", 1)
        finally:
            suite.median_seconds = original
        cases.append((name, captured["fn"]))
    return cases


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import numpy as np

    from lipref import primitives as P
    form_rule, grad_rule = P._conv_form, P._input_grad_method

    def set_form(form):
        if form == "taps":
            P._conv_form, P._input_grad_method = form_rule, grad_rule
        else:
            P._conv_form = lambda kernel_hw, stride, in_channels, out_channels: "im2col"
            P._input_grad_method = lambda weight, stride, padding: "gather" if P._gathers(weight, stride) else "scatter"

    results = []
    try:
        for name, fn in conv_cases(np, P) + model_cases():
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
        P._conv_form, P._input_grad_method = form_rule, grad_rule
    if args.json is not None:
        from lipref.models import atomic_write_bytes
        atomic_write_bytes(args.json, json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": args.threads,
                                                  "rounds": args.rounds, "results": results}, indent=1).encode())
    return results


if __name__ == "__main__":
    main()
