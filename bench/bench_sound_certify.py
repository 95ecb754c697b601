"""Sound certification against the official evaluation setting (2000 power iterations).

For the same model and MNIST test images (float64), times
  - lipref's sound mode: upper bounds everywhere (exact SVD + rounding margin for dense
    layers, Lanczos with the Kuczynski-Wozniakowski bound for masked conv layers, FFT bound
    for global conv norms), and
  - fast mode with 2000 power iterations per layer per sample (what the paper's code does
    at evaluation; its numbers are estimates, not bounds),
and reports seconds per sample, certified accuracy (BCP-style margin) for both, and the
median ratio of the local bounds sound / power-iteration.

  python bench/bench_sound_certify.py --model runs/mnist-4c3f/best.npz --n 1000 --eps 1.58 \
      --pi-n 100 --json bench/results/sound.json
The 2000-iteration run is slow on a CPU, so it runs on the first --pi-n samples only and the
ratio is taken on those.
"""
import argparse
import json
import time
from pathlib import Path

import numpy

from lipref.backend import get_backend, to_host
from lipref.bounds import margins as M
from lipref.bounds.lipschitz import network_bounds
from lipref.data import load_dataset
from lipref.models import atomic_write_bytes, build_model, load_model


def certify_batch(model, x, labels, eps, mode, n_iters, rng):
    res = network_bounds(model, x, eps, "local", mode, n_iters, rng)
    xp = get_backend("numpy")
    onehot = M.one_hot(labels, res.logits.shape[1], res.logits.dtype)
    w = model.layers[-1].params["weight"].value
    worst = M.bcp_worst_logits(res.logits, w, onehot, res.radius, res.penultimate, res.lower, res.upper)
    slack = 1e-9 * (1 + xp.max(xp.abs(res.logits), axis=1)) if mode == "sound" else 0.0
    ok = M.certified(worst, res.logits, onehot, slack)
    correct = M.predictions(res.logits) == labels
    return to_host(res.lipschitz), to_host(ok & correct), float(to_host(res.global_lipschitz))


def run(model, images, labels, eps, mode, n_iters, batch, rng):
    xp = get_backend("numpy")
    bounds, cert = [], []
    t0 = time.perf_counter()
    for s in range(0, images.shape[0], batch):
        x = xp.asarray(images[s:s + batch], dtype=xp.float64)
        y = xp.asarray(labels[s:s + batch])
        b, c, g = certify_batch(model, x, y, eps, mode, n_iters, rng)
        bounds.append(b)
        cert.append(c)
    return numpy.concatenate(bounds), numpy.concatenate(cert), time.perf_counter() - t0, g


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="lipref model file (MNIST-shaped); default: a random 4c3f")
    ap.add_argument("--data", default="mnist:test")
    ap.add_argument("--data-dir", default="../shared/datasets/mnist")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--offset", type=int, default=0, help="first test image (skip images used for training)")
    ap.add_argument("--pi-n", type=int, default=100, help="samples for the 2000-iteration run")
    ap.add_argument("--pi-iters", type=int, default=2000)
    ap.add_argument("--lanczos", type=int, default=40)
    ap.add_argument("--eps", type=float, default=1.58)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--json")
    args = ap.parse_args()
    xp = get_backend("numpy")
    rng = numpy.random.default_rng(0)
    if args.model:
        model = load_model(args.model, xp, xp.float64)
    else:
        model = build_model("4c3f", (1, 28, 28), 10, xp, xp.float64, rng)
    data = load_dataset(args.data, args.data_dir, args.offset + args.n)
    images, labels = data.images[args.offset:], data.labels[args.offset:]
    sound_b, sound_c, sound_t, g = run(model, images, labels, args.eps, "sound", args.lanczos, args.batch, rng)
    k = min(args.pi_n, images.shape[0])
    pi_b, pi_c, pi_t, _ = run(model, images[:k], labels[:k], args.eps, "fast", args.pi_iters, args.batch, rng)
    out = {
        "model": args.model or "random 4c3f", "eps": args.eps, "n_sound": int(images.shape[0]), "n_pi": k,
        "global_bound_sound": g,
        "sound_seconds_per_sample": sound_t / images.shape[0],
        "pi2000_seconds_per_sample": pi_t / k,
        "speedup": (pi_t / k) / (sound_t / images.shape[0]),
        "sound_certified_accuracy": float(sound_c.mean()),
        "pi2000_certified_accuracy_on_subset": float(pi_c.mean()),
        "sound_certified_accuracy_on_subset": float(sound_c[:k].mean()),
        "median_bound_ratio_sound_over_pi2000": float(numpy.median(sound_b[:k] / pi_b)),
        "max_bound_ratio_sound_over_pi2000": float(numpy.max(sound_b[:k] / pi_b)),
        "min_bound_ratio_sound_over_pi2000": float(numpy.min(sound_b[:k] / pi_b)),
    }
    for key, v in out.items():
        print(f"{key:45s} {v}")
    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(out, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
