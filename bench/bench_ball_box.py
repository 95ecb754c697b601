"""The ball-and-box kernel's speed-up where it runs: a real certification and a gloro-bcp
training step (and, for scale, a GloRo step, which has no ball-and-box), each timed with the kernel (kernels/ball_box.py: sorted breakpoints) and
without it (`kernels.without`: the plain bisection of bounds/certificate.py), alternating,
medians of --repeats, in one process. The numbers of both are the same to rounding (the
certificates exactly: the certificate's bound holds for any multiplier).

    python bench/bench_ball_box.py [--n 500] [--repeats 5] [--json FILE]
    python bench/bench_ball_box.py --smoke --json FILE      # tiny sizes (tests/test_bench.py)

The model: mlp-256-256 with clipped ReLU (the MLP study's network), trained for one epoch with
gloro-bcp at eps 1.75 on the embedded Fashion-MNIST slice when no --model is given, certified
at eps 1.58 on its test images, as the README's main job does.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_json  # noqa: E402
from lipref import losses  # noqa: E402
from lipref.backend import get_backend, keep_freed_memory  # noqa: E402
from lipref.bounds import BoundOptions, global_norms, network_bounds, start_vectors  # noqa: E402
from lipref.bounds.certificate import one_hot  # noqa: E402
from lipref.certification import CertifyConfig, certify  # noqa: E402
from lipref.data import load_dataset  # noqa: E402
from lipref.kernels import without  # noqa: E402
from lipref.models import load_model  # noqa: E402
from lipref.tape import grad  # noqa: E402
from lipref.training import TrainConfig, train  # noqa: E402

KERNEL = "ball_box_multiplier"


def trained_model(work, limit, eval_limit):
    """mlp-256-256, clipped ReLU, one epoch of gloro-bcp on the embedded slice (kernels on)."""
    config = TrainConfig(arch="mlp-256-256", activation="clipped_relu", loss="gloro-bcp", kappa_start=0.0,
                         eps_train=1.75, eps_eval=1.58, warmup=0.0, ramp=1.0, epochs=1, batch_size=128, n_iters=5,
                         eval_limit=eval_limit)
    train_set = load_dataset("embedded:train")
    train_set = type(train_set)(**{**train_set.__dict__, "images": train_set.images[:limit],
                                   "labels": train_set.labels[:limit]})
    train(config, train_set, load_dataset("embedded:test"), work, resume=(Path(work) / "checkpoint.npz").exists())
    return Path(work) / "model.npz"


def certify_run(model, images, labels):
    def run():
        return certify(model, images, labels, 1.58, CertifyConfig(mode="fast", n_iters=100, pgd_steps=0), seed=0)
    return run


def train_step(model, images, labels, xp, loss=losses.gloro_bcp_loss):
    """One training step's bounds, loss and gradients (as `lipref train` computes them, in one block)."""
    x = xp.asarray(images, dtype=xp.float32)
    onehot = one_hot(xp.asarray(labels), model.n_classes, xp.float32)
    glob, local = start_vectors(model, x.shape[0], "local", numpy.random.default_rng(0))
    params = list(model.parameters().values())
    last = model.layers[-1].params["weight"]

    def run():
        norms = global_norms(model, "fast", 5, None, glob)
        b = network_bounds(model, x, 1.75, BoundOptions("local", "fast", 5, record=True), norms, local_vectors=local)
        return grad(loss(b, last, onehot), params)
    return run


def paired(run, repeats):
    """(median seconds with the kernel, without it), alternating after one warm-up of each."""
    run()
    with without(KERNEL):
        run()
    on, off = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        on.append(time.perf_counter() - t)
        with without(KERNEL):
            t = time.perf_counter()
            run()
            off.append(time.perf_counter() - t)
    return statistics.median(on), statistics.median(off)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a model file (default: train one, see above)")
    ap.add_argument("--n", type=int, default=500, help="test images certified")
    ap.add_argument("--batch", type=int, default=128, help="training-step batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.batch, args.repeats = 8, 8, 1
    keep_freed_memory()
    xp = get_backend("numpy")
    with tempfile.TemporaryDirectory() as work:
        path = Path(args.model) if args.model else trained_model(work, 256 if args.smoke else 2000,
                                                                  20 if args.smoke else 200)
        model = load_model(path, xp, xp.float32)
    test, train_set = load_dataset("embedded:test"), load_dataset("embedded:train")
    results = {}
    for name, run in (("certify", certify_run(model, test.images[:args.n], test.labels[:args.n])),
                      ("gloro_bcp_step", train_step(model, train_set.images[:args.batch],
                                                    train_set.labels[:args.batch], xp))):
        on, off = paired(run, args.repeats)
        results[name] = {"seconds_kernel": on, "seconds_plain": off, "speedup": off / on}
        print(f"{name}: {on:.3f} s with the kernel, {off:.3f} s without ({off / on:.2f}x)", flush=True)
    gloro = train_step(model, train_set.images[:args.batch], train_set.labels[:args.batch], xp, losses.gloro_loss)
    gloro()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        gloro()
        times.append(time.perf_counter() - t)
    results["gloro_step_seconds"] = statistics.median(times)  # no ball-and-box: the kernel plays no part
    results["gloro_bcp_over_gloro"] = results["gloro_bcp_step"]["seconds_kernel"] / results["gloro_step_seconds"]
    print(f"gloro step: {results['gloro_step_seconds']:.3f} s; gloro-bcp / gloro: "
          f"{results['gloro_bcp_over_gloro']:.2f} with the kernel, "
          f"{results['gloro_bcp_step']['seconds_plain'] / results['gloro_step_seconds']:.2f} without", flush=True)
    results.update({"n": args.n, "batch": args.batch, "repeats": args.repeats})
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
