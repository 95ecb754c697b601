"""Benchmark: the local Lipschitz bound, lipref (NumPy) against the same algorithm in torch.

    python bench/bench_local_bound.py [--batch 256] [--iters 5 20] [--modes values grad]
                                      [--repeats 5] [--threads T] [--json PATH] [--smoke]

The work timed is one call of the local-bound walk on the 4c3f MNIST architecture (input
1x28x28, 10 classes, the paper's initialisation), float32: interval + ball pre-activation
bounds, masks, masked power iteration per sample and layer (n_iters steps, warm-started from
the same given start vectors on both sides), the global norms, and the product of the norms.

- lipref: `network_bounds(model, x, eps, BoundOptions("local", "fast", n_iters), norms, ...)`.
- torch: `lipref.reference.torch_reference.network_bounds`, the independent torch
  implementation of the same steps, under torch.no_grad().

Mode "values" times the bound alone (what certification runs). Mode "grad" times what a
training step needs: lipref with record=True, the GloRo loss and the tape's `grad` for every
parameter, as `lipref train` computes them (the global power iteration once, then block by
block with `train.blocked_gradients`),
against torch autograd (forward with grad, GloRo loss, backward).

Both libraries get the same number of threads (OpenBLAS / OpenMP environment variables set
before NumPy loads, and torch.set_num_threads). The last column checks that both sides
computed the same thing: the largest relative difference of the bounds (values) or of a
parameter's gradient (grad), float32. Times are medians of --repeats runs after one
warm-up run, lipref and torch runs alternating. The table prints the ratio lipref / torch
(above 1: lipref slower) and the 1-minute load average before and after (other processes
on the machine distort the times; compare ratios from runs on an idle machine). --smoke:
batch 4, one power-iteration step, one repeat, no pauses, one thread (tests/test_bench.py;
the times mean nothing, the agreement column still must be small).
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, nargs="+", default=[5, 20], help="power-iteration steps per call")
    ap.add_argument("--modes", nargs="+", choices=("values", "grad"), default=["values", "grad"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use (1 with --smoke)")
    ap.add_argument("--eps", type=float, default=1.58, help="l2 radius (the paper's MNIST radius)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (atomic)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, once: checks that the benchmark runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.iters, args.repeats = 4, [1], 1
    args.threads = args.threads or (1 if args.smoke else len(os.sched_getaffinity(0)))
    args.pause = 0.0 if args.smoke else PAUSE_S
    return args


PAUSE_S = 0.5  # before every timed run: longer than either library's idle threads spin


def median_seconds(fns, repeats, pause=PAUSE_S):
    """Median wall time of each function over `repeats` runs after one warm-up run each.
    The runs alternate between the functions, so that a change in machine load during the
    measurement affects all of them alike, with a pause before each run: after a call each
    library's idle threads spin for a while (OpenBLAS's, torch's OpenMP pool) and would hold
    the cores the next run needs (bench_conv.py measured torch 2x slower so, on short calls)."""
    import numpy
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            record.append(time.perf_counter() - t0)
    return [float(numpy.median(t)) for t in times]


# ---------------------------------------------------------------- the two implementations

def setup(batch, seed):
    """(model, x, labels, global start vectors, local start vectors), host float32."""
    import numpy

    from lipref.backend import get_backend
    from lipref.models import build_model
    xp = get_backend("numpy")
    rng = numpy.random.default_rng(seed)
    model = build_model("4c3f", (1, 28, 28), 10, xp, xp.float32, rng)
    x = rng.uniform(0.0, 1.0, (batch, 1, 28, 28)).astype(numpy.float32)
    labels = rng.integers(0, 10, batch)
    global_vectors, local_vectors = {}, {}
    for i, layer in enumerate(model.layers[:-1]):
        if layer.is_affine:
            global_vectors[i] = rng.standard_normal((1,) + layer.in_shape).astype(numpy.float32)
            local_vectors[i] = rng.standard_normal((batch,) + layer.in_shape).astype(numpy.float32)
    return model, x, labels, global_vectors, local_vectors


def lipref_runner(model, x, labels, eps, n_iters, global_vectors, local_vectors, mode):
    """A no-argument function running lipref's walk (and, in mode grad, loss + gradients)."""
    from lipref import losses
    from lipref.backend import get_backend
    from lipref.bounds import BoundOptions, global_norms, network_bounds
    from lipref.bounds.certificate import one_hot
    from lipref.training import blocked_gradients
    xp = get_backend("numpy")
    onehot = one_hot(xp.asarray(labels), 10, xp.float32)
    params = list(model.parameters().values())
    last = model.layers[-1].params["weight"]

    def values():
        norms = global_norms(model, "fast", n_iters, None, global_vectors)
        return network_bounds(model, x, eps, BoundOptions("local", "fast", n_iters), norms,
                              local_vectors=local_vectors).lipschitz

    def gradients():  # as a training step computes them: the global iteration once, then blocks in threads
        norms = global_norms(model, "fast", n_iters, None, global_vectors)

        def block_loss(s):
            b = network_bounds(model, x[s, ...], eps, BoundOptions("local", "fast", n_iters, record=True), norms,
                               local_vectors={k: v[s, ...] for k, v in local_vectors.items()})
            return losses.gloro_loss(b, last, onehot[s, ...]), None
        return blocked_gradients(xp, x.shape[0], params, block_loss)[1]
    return values if mode == "values" else gradients


def torch_runner(model, x, labels, eps, n_iters, global_vectors, local_vectors, mode):
    """The same in torch (the reference implementation), float32."""
    import torch

    from lipref.reference import torch_margins as RM
    from lipref.reference import torch_reference as R
    net = R.to_torch(model, torch.float32)
    xt, yt = torch.as_tensor(x), torch.as_tensor(labels, dtype=torch.int64)
    gv = {i: torch.as_tensor(v) for i, v in global_vectors.items()}
    lv = {i: torch.as_tensor(v) for i, v in local_vectors.items()}
    shapes = R.input_shapes(net, tuple(x.shape[1:]))
    last = list(net)[-1].weight
    params = list(net.parameters())

    def values():
        with torch.no_grad():
            return R.network_bounds(net, xt, eps, n_iters, lv, gv, "local", shapes).lipschitz

    def gradients():
        b = R.network_bounds(net, xt, eps, n_iters, lv, gv, "local", shapes)
        return torch.autograd.grad(RM.gloro_loss(b.logits, last, yt, b.radius), params)
    return values if mode == "values" else gradients


def agreement(model, x, labels, eps, n_iters, global_vectors, local_vectors, mode):
    """float32 on both sides, a sanity check that the two timed programs compute the same
    thing: mode values, the largest relative difference of the local bounds; mode grad, the
    largest over parameters of ||g_lipref - g_torch|| / ||g_torch||."""
    import numpy
    common = (model, x, labels, eps, n_iters, global_vectors, local_vectors, mode)
    if mode == "values":
        ours = numpy.asarray(lipref_runner(*common)())
        theirs = torch_runner(*common)().numpy()
        return float(numpy.max(numpy.abs(ours - theirs) / numpy.abs(theirs)))
    ours = [numpy.asarray(g) for g in lipref_runner(*common)()]
    theirs = [g.numpy() for g in torch_runner(*common)()]
    return max(float(numpy.linalg.norm(a - b) / numpy.linalg.norm(b)) for a, b in zip(ours, theirs, strict=True))


# ---------------------------------------------------------------- main

def run(args):
    import torch
    torch.set_num_threads(args.threads)
    model, x, labels, gv, lv = setup(args.batch, args.seed)
    rows = []
    for mode in args.modes:
        for n_iters in args.iters:
            common = (model, x, labels, args.eps, n_iters, gv, lv, mode)
            t_lipref, t_torch = median_seconds([lipref_runner(*common), torch_runner(*common)], args.repeats,
                                               args.pause)
            rows.append({"mode": mode, "n_iters": n_iters, "lipref_s": t_lipref, "torch_s": t_torch,
                         "ratio": t_lipref / t_torch,
                         "rel_diff": agreement(model, x, labels, args.eps, n_iters, gv, lv, mode)})
    return rows


def table(rows):
    lines = [f"{'mode':<7} {'iters':>5} {'lipref s':>10} {'torch s':>10} {'lipref/torch':>13} {'rel. diff':>10}"]
    for r in rows:
        lines.append(f"{r['mode']:<7} {r['n_iters']:>5} {r['lipref_s']:>10.3f} {r['torch_s']:>10.3f} "
                     f"{r['ratio']:>13.2f} {r['rel_diff']:>10.1e}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.common import set_threads
    set_threads(args.threads)  # before NumPy is imported
    import numpy
    import torch

    from lipref.backend import keep_freed_memory
    keep_freed_memory()  # as the CLI does (process-wide: torch's side gets it too)
    load_before = os.getloadavg()[0]
    rows = run(args)
    load = (load_before, os.getloadavg()[0])
    print(f"local bound, 4c3f MNIST, batch {args.batch}, float32, eps {args.eps}, {args.threads} threads, "
          f"median of {args.repeats} after warm-up, load average {load[0]:.2f} -> {load[1]:.2f}")
    print(table(rows))
    if args.json is not None:
        from bench.common import write_json
        doc = {"benchmark": "local_bound_4c3f_mnist", "batch": args.batch, "dtype": "float32", "eps": args.eps,
               "threads": args.threads, "repeats": args.repeats, "load_average": load, "machine": platform.machine(),
               "processor": platform.processor(), "python": platform.python_version(),
               "numpy": numpy.__version__, "torch": torch.__version__, "smoke": args.smoke, "results": rows}
        write_json(args.json, doc, indent=2)


if __name__ == "__main__":
    main()
