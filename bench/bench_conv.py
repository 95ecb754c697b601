"""conv2d forward + backward: lipref (NumPy backend) against torch on the CPU.

For every conv layer of the 4c3f architecture (--arch: 6c2f too) on MNIST (1x28x28) and
CIFAR-10 (3x32x32) inputs, batch 128, float32, on identical weights, inputs and upstream
gradients:
  lipref: primitives.conv2d forward, then its vjps with respect to x and W;
  torch:  torch.nn.functional.conv2d forward, then autograd backward (grads of x and W).
Both run with the same number of threads (torch.set_num_threads and the OpenBLAS thread
count that NumPy uses); times are medians over --repeats after --warmup runs, per layer
first lipref's, then torch's, with a pause between (the libraries' idle threads spin after
each call and would otherwise slow the other one down). The machine's
float32 matmul rate (NumPy 2048x2048 @ 2048x2048) is measured in the same run, and each
lipref layer is reported as a fraction of it.

FLOPs: forward 2*N*Cout*OH*OW*Cin*k*k, backward (dx and dW) twice that.

  python bench/bench_conv.py [--arch 4c3f] [--threads 2] [--repeats 7] [--clock wall|cpu]
                             [--json bench/results/conv.json] [--smoke]

--clock cpu times the process's CPU time instead of wall time: on a machine shared with
other work, wall time stretches while the process waits for a core; with --threads 1 CPU
time is what the work cost.

--smoke: batch 2, a 64^3 matmul, one repeat, no warm-up or pauses, one thread, with --check
and --breakdown (tests/test_bench.py; the times mean nothing, the check still holds).
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both libraries (default: the CPUs this process may use; 1 with --smoke)")
    ap.add_argument("--arch", default="4c3f", choices=("4c3f", "6c2f"), help="the architecture whose layers run")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"), help="wall time, or the process's CPU time")
    ap.add_argument("--stat", default="median", choices=("median", "min"),
                    help="median of the repeats, or the fastest (least disturbed by other work on a shared machine)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", help="write the results here (atomically)")
    ap.add_argument("--check", action="store_true", help="also check lipref's results against torch's")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the pieces of lipref's conv (im2col, the matmuls, the input gradient)")
    ap.add_argument("--openblas-coretype", default=None,
                    help="OpenBLAS kernel set for NumPy, e.g. Cooperlake (see BENCHMARKS.md)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, once, checked: checks that the benchmark runs")
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.repeats, args.warmup, args.check, args.breakdown = 2, 1, 0, True, True
    args.threads = args.threads or (1 if args.smoke else len(os.sched_getaffinity(0)))
    args.matmul_n = 64 if args.smoke else 2048
    args.pause = 0.0 if args.smoke else IDLE_PAUSE_S
    return args


IDLE_PAUSE_S = 0.5  # longer than either library's idle threads spin
sys.path.insert(0, str(ROOT))
ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # thread counts must be fixed before NumPy / torch load their thread pools
    from bench.common import set_threads
    set_threads(ARGS.threads)
    if ARGS.openblas_coretype:
        os.environ["OPENBLAS_CORETYPE"] = ARGS.openblas_coretype

import ctypes  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy  # noqa: E402

from lipref import primitives as P  # noqa: E402
from lipref.kernels import conv as K  # noqa: E402
from lipref.kernels import conv_blocks as KB  # noqa: E402
from lipref.kernels import conv_grads as G  # noqa: E402
from lipref.kernels import winograd as W  # noqa: E402
from lipref.models import ARCHITECTURES  # noqa: E402
from lipref.shapes import nchw  # noqa: E402

DATASETS = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}


def _openblas():
    """NumPy's OpenBLAS as a ctypes library plus its get/set thread functions, or None."""
    with open("/proc/self/maps") as f:
        paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    return path, get, put
    return None


def blas_threads(set_to=None):
    """(library path, thread count) of NumPy's OpenBLAS, optionally setting the count first."""
    found = _openblas()
    if found is None:
        return None, None
    path, get, put = found
    if set_to is not None:
        put(int(set_to))
    return path, int(get())


def median_time(fn, repeats, warmup):
    return interleaved_medians({"f": fn}, repeats, warmup)["f"]


CLOCK = [time.perf_counter]  # main() sets time.process_time for --clock cpu
STAT = [statistics.median]  # main() sets min for --stat min


def interleaved_medians(fns, repeats, warmup):
    """{name: median (or with --stat min, fastest) seconds}; the functions run in turn within each repeat, so that a
    change in machine load during the run hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = CLOCK[0]()
            fn()
            times[name].append(CLOCK[0]() - t0)
    return {name: STAT[0](ts) for name, ts in times.items()}


def matmul_rate(repeats, warmup, n=2048):
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=numpy.float32)
    b = rng.standard_normal((n, n), dtype=numpy.float32)
    t = median_time(lambda: a @ b, repeats, warmup)
    return 2.0 * n ** 3 / t / 1e9


def conv_layers(arch="4c3f"):
    """(dataset, index, in_shape, out_channels, k, stride, padding) of every conv layer, on
    the datasets the paper trains the architecture on (4c3f: MNIST and CIFAR-10; 6c2f: CIFAR-10)."""
    convs, _ = ARCHITECTURES[arch]
    for name, shape in DATASETS.items():
        if arch == "6c2f" and name == "mnist":
            continue
        c, h, w = shape
        for i, (o, k, s, p) in enumerate(convs):
            yield name, i, (c, h, w), o, k, s, p
            h, w = P.conv_output_hw(h, w, k, k, s, p)
            c = o


def bench_layer(torch, n, in_shape, o, k, s, p, repeats, warmup, check, pause=IDLE_PAUSE_S):
    c, h, w = in_shape
    oh, ow = P.conv_output_hw(h, w, k, k, s, p)
    rng = numpy.random.default_rng([n, c, h, o, k, s, p])
    x = rng.standard_normal((n, c, h, w), dtype=numpy.float32)
    wt = (rng.standard_normal((o, c, k, k), dtype=numpy.float32) * numpy.float32((2.0 / (k * k * o)) ** 0.5))
    b = rng.standard_normal((o,), dtype=numpy.float32) * numpy.float32(0.1)
    g = rng.standard_normal((n, o, oh, ow), dtype=numpy.float32)
    vjp_x, vjp_w = P.conv2d.vjps[0], P.conv2d.vjps[1]

    def lipref_fwd():
        return P.conv2d.forward(x, wt, b, s, p)

    def lipref_step():
        y = P.conv2d.forward(x, wt, b, s, p)
        return y, vjp_x(g, y, x, wt, b, s, p), vjp_w(g, y, x, wt, b, s, p)

    tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, wt, b, g))

    def torch_fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)

    def torch_step():
        xx = tx.detach().requires_grad_(True)
        ww = tw.detach().requires_grad_(True)
        y = torch.nn.functional.conv2d(xx, ww, tb, stride=s, padding=p)
        y.backward(tg)
        return y, xx.grad, ww.grad

    if check:
        ly, lgx, lgw = lipref_step()
        ty, tgx, tgw = torch_step()
        for name, a, ref in (("y", ly, ty), ("dx", lgx, tgx), ("dW", lgw, tgw)):
            ref = ref.detach().numpy()
            err = float(numpy.max(numpy.abs(a - ref)) / (numpy.max(numpy.abs(ref)) + 1e-30))
            if a.dtype != numpy.float32 or a.shape != ref.shape or err > 1e-4:
                raise AssertionError(f"lipref {name} {a.dtype} {a.shape} differs from torch {ref.shape}: rel {err:.2e}")

    flops_fwd = 2.0 * n * o * oh * ow * c * k * k
    res = {"in_shape": [n, c, h, w], "weight_shape": [o, c, k, k], "stride": s, "padding": p,
           "out_shape": [n, o, oh, ow], "flops_forward": flops_fwd, "flops_total": 3.0 * flops_fwd}
    # One library at a time, with a pause between: after a call, each library's idle
    # threads spin for a while (OpenBLAS's, and torch's OpenMP pool), and interleaving the
    # two made each run on cores the other's spinning threads held: torch measured about
    # 2x slower than in a process of its own (bench/run_all.py), short layers most.
    res.update(interleaved_medians({"lipref_forward_s": lipref_fwd, "lipref_s": lipref_step}, repeats, warmup))
    time.sleep(pause)
    res.update(interleaved_medians({"torch_forward_s": torch_fwd, "torch_s": torch_step}, repeats, warmup))
    time.sleep(pause)
    res["ratio"] = res["lipref_s"] / res["torch_s"]
    res["lipref_gflops"] = res["flops_total"] / res["lipref_s"] / 1e9
    res["torch_gflops"] = res["flops_total"] / res["torch_s"] / 1e9
    return res


def breakdown(n, in_shape, o, k, s, p, repeats, warmup):
    """Milliseconds of each piece of lipref's forward + backward over the whole batch
    (private helpers of lipref/kernels/conv.py, conv_grads.py and winograd.py, called on
    one block exactly as the kernels call them, scaled to the batch's blocks)."""
    c, h, w = in_shape
    oh, ow = P.conv_output_hw(h, w, k, k, s, p)
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c), dtype=numpy.float32)  # channels-last, as lipref works
    weight = rng.standard_normal((o, c, k, k), dtype=numpy.float32)
    g = rng.standard_normal((n, oh, ow, o), dtype=numpy.float32)
    xp = __import__("array_api_compat.numpy", fromlist=["numpy"])
    if W.applies(xp, x.dtype, (k, k), s, p, (c, o)):
        return _winograd_breakdown(x, weight, g, s, p, repeats, warmup)
    blocks = KB.blocks_of(n, oh * ow * k * k * c)
    b0 = blocks[0]
    per = len(blocks) * 1.0  # time one (full) block, scale to the batch
    wm = K._weight_matrix(weight)
    rows = numpy.reshape(g[b0], (-1, o))
    m = rows.shape[0] // (oh * ow)
    wsub, th, tw = G._subpixel_weight(weight, s)
    gcols_t = wm.T @ rows.T
    form = K._conv_form((k, k), s, c, o)
    if form != "im2col":  # a tap form or the channel-major im2col
        forward = K._forward_of_block(weight, s, p, (h, w))
        pieces = {
            f"forward: {form}": lambda: forward(x[b0]),
            f"dW: {form}": lambda: G.conv2d_weight_grad(nchw(g[b0]), nchw(x[b0]), weight.shape, s, p),
        }
    else:
        cols = K._im2col(x[b0], k, k, s, p)
        pieces = {
            "im2col (x2: forward and dW)": lambda: K._im2col(x[b0], k, k, s, p),
            "cols @ W.T": lambda: cols @ wm.T,
            "cols.T @ g (dW)": lambda: cols.T @ rows,
        }
    pieces.update(_input_grad_pieces(weight, g, b0, s, p, (h, w), wm, rows, gcols_t, m, (wsub, th, tw)))
    return {name: 1e3 * t * per for name, t in interleaved_medians(pieces, repeats, warmup).items()}


def _input_grad_pieces(weight, g, b0, s, p, in_hw, wm, rows, gcols_t, m, subpixel):
    o, c, k, _ = weight.shape
    h, w = in_hw
    method = G._input_grad_method(weight, s, p)
    if method == "row taps":
        input_grad = G._input_grad_of_block(weight, s, p, (h, w))
        return {"dx: row taps of the flipped kernel": lambda: input_grad(g[b0])}
    if method == "gather":
        return {"dx: sub-pixel gather": lambda: G._input_grad_gather(g[b0], *subpixel, s, p, h, w)}
    return {"dx: W^T g^T": lambda: wm.T @ rows.T, "dx: col2im": lambda: K._col2im(gcols_t, m, h, w, c, k, k, s, p)}


def _winograd_breakdown(x, weight, g, s, p, repeats, warmup):
    """Winograd's pieces: the grid and B^T d B, the products, A^T M A (forward), the weight
    gradient and the input gradient (Winograd at stride 1, the sub-pixel gather above)."""
    n, h, w, c = x.shape
    o, _, k, _ = weight.shape
    oh, ow = g.shape[1:3]
    r = W.grid_taps((k, k), s)
    alg, alpha = W.ALGORITHMS[r], r + 1
    blocks = KB.blocks_of(n, alpha * alpha * oh * ow * (s * s * c + o) // 4, W.WINOGRAD_BLOCK)
    b0, per = blocks[0], len(blocks) * 1.0
    u = W.transformed_weights(W.grid_weight(weight, s), alg)
    tiles = W.tiles_hw((oh, ow))
    v = W.input_tiles(W.split_grid(x[b0], s, p, tiles, alpha), tiles, alg)
    products = [W._times(v[e], u[e // alpha, e % alpha, ...]) for e in range(alpha * alpha)]
    out = numpy.empty((x[b0].shape[0], oh, ow, o), dtype=x.dtype)
    pieces = {
        f"forward: grid and B^T d B ({alg.name})": lambda: W.input_tiles(W.split_grid(x[b0], s, p, tiles, alpha),
                                                                           tiles, alg),
        "forward: products": lambda: [W._times(v[e], u[e // alpha, e % alpha, ...]) for e in range(alpha * alpha)],
        "forward: A^T M A": lambda: W.output_tiles_into(products, out, alg),
        "dW: Winograd": lambda: W.conv2d_weight_grad(nchw(g[b0]), nchw(x[b0]), weight.shape, s, p),
    }
    if s == 1:
        pieces["dx: Winograd of the flipped kernel"] = lambda: W.conv2d_input_grad(nchw(g[b0]), weight, s, p, (h, w))
    else:
        wsub, th, tw = G._subpixel_weight(weight, s)
        pieces["dx: sub-pixel gather"] = lambda: G._input_grad_gather(g[b0], wsub, th, tw, s, p, h, w)
    return {name: 1e3 * t * per for name, t in interleaved_medians(pieces, repeats, warmup).items()}


def main(args):
    import torch

    from lipref.backend import keep_freed_memory
    keep_freed_memory()  # as the CLI and bench/suite.py do (process-wide: torch's side gets it too)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    if args.stat == "min":
        STAT[0] = min
    torch.set_num_threads(args.threads)
    blas_path, blas_n = blas_threads(set_to=args.threads)
    rate = matmul_rate(args.repeats, args.warmup, args.matmul_n)
    env = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "cpus_available": len(os.sched_getaffinity(0)),
           "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
           "blas_library": blas_path, "blas_threads": blas_n, "batch": args.batch, "dtype": "float32",
           "repeats": args.repeats, "warmup": args.warmup, "matmul_gflops": rate,
           "openblas_coretype": args.openblas_coretype, "smoke": args.smoke, "arch": args.arch, "clock": args.clock,
           "stat": args.stat}
    load = os.getloadavg()[0]
    env["load_average_1min"] = load
    print(f"numpy {numpy.__version__} (OpenBLAS threads: {blas_n}), torch {torch.__version__} "
          f"(threads: {torch.get_num_threads()}), {env['cpus_available']} CPUs available, load average {load:.2f}")
    print(f"float32 matmul {args.matmul_n}x{args.matmul_n} (numpy): {rate:.1f} GFLOP/s")
    print(f"{args.arch} conv layers, batch {args.batch}, float32, forward + backward (dx, dW); {args.clock} time, {args.stat}s of "
          f"{args.repeats} after {args.warmup} warm-up runs")
    header = (f"{'layer':<9} {'input -> weight (stride, pad)':<36} {'lipref ms':>10} {'torch ms':>9} "
              f"{'ratio':>6} {'GFLOP/s':>8} {'of matmul':>9} {'fwd l/t ms':>14}")
    print(header)
    print("-" * len(header))
    rows = []
    for name, i, in_shape, o, k, s, p in conv_layers(args.arch):
        r = bench_layer(torch, args.batch, in_shape, o, k, s, p, args.repeats, args.warmup, args.check, args.pause)
        r.update(dataset=name, layer=f"{name}.conv{i}", matmul_fraction=r["lipref_gflops"] / rate)
        if args.breakdown:
            r["lipref_pieces_ms"] = breakdown(args.batch, in_shape, o, k, s, p, args.repeats, args.warmup)
        rows.append(r)
        shape = f"{'x'.join(map(str, r['in_shape']))} -> {'x'.join(map(str, r['weight_shape']))} ({s}, {p})"
        print(f"{r['layer']:<9} {shape:<36} {1e3 * r['lipref_s']:>10.2f} {1e3 * r['torch_s']:>9.2f} "
              f"{r['ratio']:>6.2f} {r['lipref_gflops']:>8.1f} {r['matmul_fraction']:>9.2f} "
              f"{1e3 * r['lipref_forward_s']:>6.2f}/{1e3 * r['torch_forward_s']:<7.2f}", flush=True)
    total_l = sum(r["lipref_s"] for r in rows)
    total_t = sum(r["torch_s"] for r in rows)
    print(f"{'total':<9} {'':<36} {1e3 * total_l:>10.2f} {1e3 * total_t:>9.2f} {total_l / total_t:>6.2f}")
    if args.breakdown:
        print("\nlipref pieces (ms, whole batch; one block's time times the blocks, one thread):")
        for r in rows:
            print(f"{r['layer']:<12} " + ", ".join(f"{k} {v:.1f}" for k, v in r["lipref_pieces_ms"].items()))
    if args.json:
        from bench.common import write_json
        write_json(args.json, {"environment": env, "layers": rows}, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main(ARGS)
