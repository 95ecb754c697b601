"""One benchmark case, one implementation, in this process: prints one JSON line.

    python bench/suite.py CASE IMPL [--threads T] [--repeats R]

IMPL is lipref or torch; both get identical weights and inputs (seeded NumPy draws). Times
are medians of --repeats runs after one warm-up. `bench/run_all.py` runs every case in its
own process (so peak memory is per case and implementation) and prints the table.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("matmul", "conv_4c3f_mnist", "conv_4c3f_cifar", "conv_6c2f_cifar", "linear_4c3f_mnist",
         "global_bound_4c3f", "local_bound_4c3f", "train_step_4c3f")


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=CASES)
    ap.add_argument("impl", choices=("lipref", "torch"))
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    ap.add_argument("--openblas-coretype", default=None,
                    help="OpenBLAS kernel set for NumPy (e.g. Cooperlake): OpenBLAS 0.3.31 takes AMD Zen 5 "
                         "for Haswell and leaves its AVX-512 unused (OpenMathLib/OpenBLAS#6029)")
    return ap.parse_args()


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None:  # before numpy / torch start their thread pools
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
    if ARGS.openblas_coretype:
        os.environ["OPENBLAS_CORETYPE"] = ARGS.openblas_coretype

import numpy  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
if ARGS is not None:  # as the CLI does, in both sides' processes (a process setting; torch allocates with malloc too)
    from lipref.backend import keep_freed_memory
    keep_freed_memory()


def median_seconds(fn, repeats, sync=lambda: None):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(numpy.median(times))


def conv_shapes(arch, in_shape):
    from lipref.models import ARCHITECTURES
    from lipref.primitives import conv_output_hw
    c, h, w = in_shape
    for o, k, s, p in ARCHITECTURES[arch][0]:
        yield (c, h, w), o, k, s, p
        h, w = conv_output_hw(h, w, k, k, s, p)
        c = o


def make_model(arch, in_shape, dtype="float32"):
    import array_api_compat.numpy as xp

    from lipref.models import build_model
    return build_model(arch, in_shape, 10, xp, getattr(xp, dtype), numpy.random.default_rng(0))


# ------------------------------------------------------------------------------ cases

def case_matmul(impl, repeats):
    n = 2048
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=numpy.float32)
    b = rng.standard_normal((n, n), dtype=numpy.float32)
    if impl == "torch":
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        t = median_seconds(lambda: ta @ tb, repeats)
    else:
        t = median_seconds(lambda: a @ b, repeats)
    return {"seconds": t, "gflops": 2 * n ** 3 / t / 1e9}


def _conv_case(impl, repeats, arch, in_shape, batch=128):
    from lipref import primitives as P
    total, flops, per_layer = 0.0, 0.0, []
    for (c, h, w), o, k, s, p in conv_shapes(arch, in_shape):
        rng = numpy.random.default_rng([c, h, o, k, s])
        x = rng.standard_normal((batch, c, h, w), dtype=numpy.float32)
        wt = rng.standard_normal((o, c, k, k), dtype=numpy.float32) * numpy.float32(0.1)
        b = numpy.zeros(o, dtype=numpy.float32)
        oh, ow = P.conv_output_hw(h, w, k, k, s, p)
        g = rng.standard_normal((batch, o, oh, ow), dtype=numpy.float32)
        if impl == "torch":
            import torch
            tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, wt, b, g))

            def step():
                xx, ww = tx.detach().requires_grad_(True), tw.detach().requires_grad_(True)
                torch.nn.functional.conv2d(xx, ww, tb, stride=s, padding=p).backward(tg)
        else:
            vx, vw = P.conv2d.vjps[0], P.conv2d.vjps[1]

            def step():
                y = P.conv2d.forward(x, wt, b, s, p)
                vx(g, y, x, wt, b, s, p)
                vw(g, y, x, wt, b, s, p)
        t = median_seconds(step, repeats)
        f = 3 * 2.0 * batch * o * oh * ow * c * k * k
        per_layer.append({"in": [batch, c, h, w], "out_channels": o, "k": k, "stride": s, "seconds": t,
                          "gflops": f / t / 1e9})
        total += t
        flops += f
    return {"seconds": total, "gflops": flops / total / 1e9, "layers": per_layer}


def case_conv_4c3f_mnist(impl, repeats):
    return _conv_case(impl, repeats, "4c3f", (1, 28, 28))


def case_conv_4c3f_cifar(impl, repeats):
    return _conv_case(impl, repeats, "4c3f", (3, 32, 32))


def case_conv_6c2f_cifar(impl, repeats):
    return _conv_case(impl, repeats, "6c2f", (3, 32, 32))


def case_linear_4c3f_mnist(impl, repeats, batch=128):
    shapes = [(3136, 512), (512, 512), (512, 10)]
    rng = numpy.random.default_rng(0)
    data = [(rng.standard_normal((batch, i), dtype=numpy.float32), rng.standard_normal((o, i), dtype=numpy.float32),
             numpy.zeros(o, dtype=numpy.float32), rng.standard_normal((batch, o), dtype=numpy.float32))
            for i, o in shapes]
    if impl == "torch":
        import torch
        tdata = [tuple(torch.from_numpy(a) for a in d) for d in data]

        def step():
            for x, w, b, g in tdata:
                xx, ww = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
                torch.nn.functional.linear(xx, ww, b).backward(g)
    else:
        from lipref import primitives as P

        def step():
            for x, w, b, g in data:
                y = P.linear.forward(x, w, b)
                for vjp in P.linear.vjps[:2]:
                    vjp(g, y, x, w, b)
    t = median_seconds(step, repeats)
    flops = sum(3 * 2.0 * batch * i * o for i, o in shapes)
    return {"seconds": t, "gflops": flops / t / 1e9}


def _start_vectors(model, batch, rng):
    vectors, global_vectors = {}, {}
    for i, layer in enumerate(model.layers[:-1]):
        if layer.is_affine:
            vectors[i] = rng.standard_normal((batch,) + tuple(layer.in_shape), dtype=numpy.float32)
            global_vectors[i] = rng.standard_normal((1,) + tuple(layer.in_shape), dtype=numpy.float32)
    return vectors, global_vectors


def case_global_bound_4c3f(impl, repeats, n_iters=20):
    model = make_model("4c3f", (1, 28, 28))
    _, gv = _start_vectors(model, 1, numpy.random.default_rng(1))
    if impl == "torch":
        import torch

        from lipref.reference.torch_reference import global_norms, input_shapes, to_torch
        net = to_torch(model, torch.float32)
        shapes = input_shapes(net, (1, 28, 28))
        tg = {k: torch.from_numpy(v) for k, v in gv.items()}

        def run():
            with torch.no_grad():
                global_norms(net, shapes, tg, n_iters)
    else:
        import array_api_compat.numpy as xp
        from lipref.bounds.lipschitz import global_norms

        def run():
            global_norms(model, "fast", n_iters, None, {k: xp.asarray(v) for k, v in gv.items()}, False)
    return {"seconds": median_seconds(run, repeats), "n_iters": n_iters}


def case_local_bound_4c3f(impl, repeats, batch=256, n_iters=5, eps=1.58):
    model = make_model("4c3f", (1, 28, 28))
    rng = numpy.random.default_rng(2)
    x = rng.uniform(0, 1, (batch, 1, 28, 28)).astype(numpy.float32)
    vectors, gv = _start_vectors(model, batch, rng)
    if impl == "torch":
        import torch

        from lipref.reference.torch_reference import input_shapes, network_bounds, to_torch
        net = to_torch(model, torch.float32)
        shapes = input_shapes(net, (1, 28, 28))
        tx = torch.from_numpy(x)
        tv = {k: torch.from_numpy(v) for k, v in vectors.items()}
        tg = {k: torch.from_numpy(v) for k, v in gv.items()}

        def run():
            with torch.no_grad():
                return network_bounds(net, tx, eps, n_iters, tv, tg, "local", shapes).radius
        radius = run().numpy()
    else:
        import array_api_compat.numpy as xp
        from lipref.bounds.lipschitz import network_bounds
        xv = xp.asarray(x)
        lv = {k: xp.asarray(v) for k, v in vectors.items()}
        glv = {k: xp.asarray(v) for k, v in gv.items()}

        def run():
            return network_bounds(model, xv, eps, "local", "fast", n_iters, None, lv, glv).radius
        radius = numpy.asarray(run())
    return {"seconds": median_seconds(run, repeats), "batch": batch, "n_iters": n_iters,
            "median_radius": float(numpy.median(radius))}


def case_train_step_4c3f(impl, repeats, batch=128, n_iters=2, eps=1.58):
    """One step of local-bound GloRo training: walk + loss, backward, Adam."""
    model = make_model("4c3f", (1, 28, 28))
    rng = numpy.random.default_rng(3)
    x = rng.uniform(0, 1, (batch, 1, 28, 28)).astype(numpy.float32)
    labels = rng.integers(0, 10, batch)
    vectors, gv = _start_vectors(model, batch, rng)
    if impl == "torch":
        import torch

        from lipref.reference.torch_margins import gloro_loss
        from lipref.reference.torch_reference import input_shapes, network_bounds, to_torch
        net = to_torch(model, torch.float32)
        shapes = input_shapes(net, (1, 28, 28))
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        tx, ty = torch.from_numpy(x), torch.from_numpy(labels)
        tv = {k: torch.from_numpy(v) for k, v in vectors.items()}
        tg = {k: torch.from_numpy(v) for k, v in gv.items()}

        def run():
            opt.zero_grad()
            b = network_bounds(net, tx, eps, n_iters, tv, tg, "local", shapes)
            loss = gloro_loss(b.logits, net[-1].weight, ty, b.radius)
            loss.backward()
            opt.step()
            return float(loss.detach())
    else:
        import array_api_compat.numpy as xp
        from lipref.bounds.lipschitz import global_norms, network_bounds

        from lipref import losses
        from lipref.bounds.margins import one_hot
        from lipref.optim import Adam
        from lipref.train import blocked_gradients
        params = model.parameters()
        opt = Adam(params, lr=1e-4)
        xv, onehot = xp.asarray(x), one_hot(xp.asarray(labels), 10, xp.float32)
        lv = {k: xp.asarray(v) for k, v in vectors.items()}
        glv = {k: xp.asarray(v) for k, v in gv.items()}
        names = list(params)

        def run():  # as `lipref train` computes a step: the global iteration once, then blocks in threads
            global_vectors = global_norms(model, "fast", n_iters, None, glv, False)[1]

            def block_loss(s):
                b = network_bounds(model, xv[s, ...], eps, "local", "fast", n_iters, None,
                                   {k: v[s, ...] for k, v in lv.items()}, global_vectors, record=True,
                                   global_iters=0)
                return losses.gloro_loss(b, model.layers[-1].params["weight"], onehot[s, ...]), None
            value, grads, _ = blocked_gradients(xp, batch, [params[k] for k in names], block_loss)
            opt.step(dict(zip(names, grads)))
            return float(value)
    first = run()
    return {"seconds": median_seconds(run, repeats), "batch": batch, "n_iters": n_iters, "first_loss": first}


def blas_in_use():
    """NumPy's BLAS and the kernel set it picked, where threadpoolctl can tell."""
    try:
        import threadpoolctl
    except ImportError:
        return "unknown (install threadpoolctl to record it)"
    info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')}".strip()
                     for i in info) or "none found"


def main():
    args = ARGS
    if args.impl == "torch":
        import torch
        torch.set_num_threads(args.threads)
    result = globals()[f"case_{args.case}"](args.impl, args.repeats)
    result.update({"case": args.case, "impl": args.impl, "threads": args.threads, "blas": blas_in_use()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
