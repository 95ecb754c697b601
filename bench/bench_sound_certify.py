"""Sound certification against the official evaluation setting (2000 power iterations).

For the same model and MNIST test images (float64), times
  - lipref's sound mode: upper bounds everywhere (exact SVD + rounding margin for dense
    layers, Lanczos with the Kuczynski-Wozniakowski bound for masked conv layers, the
    dense-Gram Cholesky certificate for global conv norms, computed once per model and
    timed separately as the set-up), and
  - fast mode with 2000 power iterations per layer per sample (what the paper's code does
    at evaluation; its numbers are estimates, not bounds),
and reports seconds per sample, certified accuracy (ball-and-box margin; sound mode with
the rounding slack of `lipref certify --mode sound`) for both, whether the same samples
are certified, the ratio of the local bounds sound / power-iteration (median, min, max)
and the same ratios per affine layer, for the global and the local norms.

  python bench/bench_sound_certify.py --model runs/mnist-4c3f/model.npz --n 1000 --offset 5000 \\
      --eps 1.58 --pi-n 50 --lanczos 80 --sweep 40,120 --json bench/results/sound.json
The 2000-iteration run is slow on a CPU, so it runs on the first --pi-n samples only and the
ratios are taken on those. --sweep runs sound mode with other Lanczos step counts on those
samples too (time against tightness). --smoke: a random 2c2f on 4 images of the embedded
Fashion-MNIST slice, 5 Lanczos and 5 power-iteration steps, the polyphase bound only
(--gram-limit 0) (tests/test_bench.py; the times mean nothing).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipref.backend import get_backend, keep_freed_memory, to_host  # noqa: E402
from lipref.bounds import BoundOptions, GlobalNorms, network_bounds, sound_global_norms  # noqa: E402
from lipref.bounds.certificate import certify_bounds, one_hot, predictions  # noqa: E402
from lipref.bounds.certificates import GRAM_LIMIT  # noqa: E402
from lipref.data import load_dataset  # noqa: E402
from lipref.models import build_model, load_model  # noqa: E402

MNIST_DIR = "../shared/datasets/mnist"
SMOKE = {"data": "embedded:test", "n": 4, "pi_n": 2, "pi_iters": 5, "lanczos": 5, "sweep": "3", "batch": 4,
         "arch": "2c2f", "gram_limit": 0, "offset": 0}


def certify_batch(model, x, labels, eps, mode, n_iters, rng, sound_norms):
    norms = None if sound_norms is None else GlobalNorms(tuple(sound_norms))
    res = network_bounds(model, x, eps, BoundOptions("local", mode, n_iters), norms, rng=rng)
    onehot = one_hot(labels, res.logits.shape[1], res.logits.dtype)
    last = model.layers[-1].params
    ok, _ = certify_bounds(res, last["weight"].value, last["bias"].value, onehot, eps, mode == "sound", True)
    correct = predictions(res.logits) == labels
    local = numpy.stack([to_host(s) for s in res.local_norms], axis=1)  # (N, layers)
    glob = numpy.array([float(to_host(g)) for g in res.global_norms])
    return to_host(res.lipschitz), to_host(ok & correct), local, glob


def run(model, images, labels, eps, mode, n_iters, batch, rng, sound_norms=None):
    """Certify in batches; seconds exclude computing sound_norms (timed by the caller)."""
    xp = get_backend("numpy")
    bounds, cert, local = [], [], []
    t0 = time.perf_counter()
    for s in range(0, images.shape[0], batch):
        x = xp.asarray(images[s:s + batch], dtype=xp.float64)
        y = xp.asarray(labels[s:s + batch])
        b, c, loc, glob = certify_batch(model, x, y, eps, mode, n_iters, rng, sound_norms)
        bounds.append(b)
        cert.append(c)
        local.append(loc)
    return {"bounds": numpy.concatenate(bounds), "certified": numpy.concatenate(cert),
            "local": numpy.concatenate(local), "global": glob, "seconds": time.perf_counter() - t0}


def spread(ratios):
    return {"median": float(numpy.median(ratios)), "min": float(numpy.min(ratios)), "max": float(numpy.max(ratios))}


def compare(model, sound, pi, k):
    """Sound against power iteration on the first k samples: bound ratios, overall and per layer."""
    names = [f"{i}:{type(layer).__name__}" for i, layer in enumerate(model.layers[:-1]) if layer.is_affine]
    layers = []
    for j, name in enumerate(names):
        layers.append({"layer": name, "global_sound": float(sound["global"][j]), "global_pi2000": float(pi["global"][j]),
                       "global_ratio": float(sound["global"][j] / pi["global"][j]),
                       "local_ratio": spread(sound["local"][:k, j] / pi["local"][:, j])})
    s_cert, p_cert = sound["certified"][:k], pi["certified"]
    return {"bound_ratio_sound_over_pi2000": spread(sound["bounds"][:k] / pi["bounds"]),
            "sound_certified_accuracy_on_subset": float(s_cert.mean()),
            "certified_by_pi2000_only": int(numpy.sum(p_cert & ~s_cert)),
            "certified_by_sound_only": int(numpy.sum(s_cert & ~p_cert)),
            "per_layer": layers}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="lipref model file (MNIST-shaped); default: a random --arch")
    ap.add_argument("--arch", default="4c3f", help="the random model's architecture (without --model)")
    ap.add_argument("--data", default="mnist:test")
    ap.add_argument("--data-dir", default=None, help=f"default: {MNIST_DIR} for mnist, else lipref's own search")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--offset", type=int, default=0, help="first test image (skip images used for training)")
    ap.add_argument("--pi-n", type=int, default=100, help="samples for the 2000-iteration run")
    ap.add_argument("--pi-iters", type=int, default=2000)
    ap.add_argument("--lanczos", type=int, default=80, help="Lanczos steps of the main sound run")
    ap.add_argument("--sweep", default="", help="other Lanczos step counts, run on the --pi-n samples (comma-separated)")
    ap.add_argument("--gram-limit", type=int, default=GRAM_LIMIT,
                    help="sound global norms: the largest conv Gram side certified densely (0: polyphase bound only)")
    ap.add_argument("--eps", type=float, default=1.58)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs")
    args = ap.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.data_dir is None and args.data.split(":")[0] == "mnist":
        args.data_dir = MNIST_DIR
    return args


def main(argv=None):
    args = parse(argv)
    keep_freed_memory()  # as the CLI does
    xp = get_backend("numpy")
    rng = numpy.random.default_rng(0)
    if args.model:
        model = load_model(args.model, xp, xp.float64)
    else:
        model = build_model(args.arch, (1, 28, 28), 10, xp, xp.float64, rng)
    data = load_dataset(args.data, args.data_dir, args.offset + args.n)
    images, labels = data.images[args.offset:], data.labels[args.offset:]
    n = images.shape[0]
    k = min(args.pi_n, n)
    t0 = time.perf_counter()
    sound_norms = sound_global_norms(model, rng, args.gram_limit)  # once per model, as `lipref certify --mode sound`
    setup = time.perf_counter() - t0
    sound = run(model, images, labels, args.eps, "sound", args.lanczos, args.batch, rng, sound_norms)
    pi = run(model, images[:k], labels[:k], args.eps, "fast", args.pi_iters, args.batch, rng)
    sound_t, pi_t = sound["seconds"] / n, pi["seconds"] / k
    out = {
        "model": args.model or f"random {args.arch}", "eps": args.eps, "n_sound": int(n), "n_pi": k,
        "lanczos_steps": args.lanczos, "pi_iters": args.pi_iters, "gram_limit": args.gram_limit, "smoke": args.smoke,
        "global_bound_sound": float(numpy.prod(sound["global"])),
        "global_bound_pi2000": float(numpy.prod(pi["global"])),
        "sound_setup_seconds": setup,
        "sound_seconds_per_sample": sound_t,
        "sound_seconds_per_sample_with_setup": (sound["seconds"] + setup) / n,
        "pi2000_seconds_per_sample": pi_t,
        "speedup": pi_t / sound_t,
        "sound_certified_accuracy": float(sound["certified"].mean()),
        "pi2000_certified_accuracy_on_subset": float(pi["certified"].mean()),
    }
    out.update(compare(model, sound, pi, k))
    out["sweep"] = []
    for steps in [int(s) for s in args.sweep.split(",") if s]:
        other = run(model, images[:k], labels[:k], args.eps, "sound", steps, args.batch, rng, sound_norms)
        entry = {"lanczos_steps": steps, "sound_seconds_per_sample": other["seconds"] / k,
                 "speedup": pi_t / (other["seconds"] / k)}
        entry.update(compare(model, other, pi, k))
        out["sweep"].append(entry)
    print(json.dumps(out, indent=2))
    if args.json:
        from bench.common import write_json
        write_json(args.json, out, indent=2)


if __name__ == "__main__":
    main()
