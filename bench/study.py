"""The local-against-global training study of docs/results.md, on 2 CPU cores.

    python bench/study.py            # about an hour on 2 cores; rerunning resumes (finished runs are kept)
    python bench/study.py --quick    # the same pipeline on tiny data (a smoke test, a minute)

Every setting is trained with the global and with the local bound, 3 seeds each, on
Fashion-MNIST (`apt-get install dataset-fashion-mnist`, or `lipref data download
fashion-mnist`). The best checkpoint is chosen on test images 0-999 (held out from
certification) and certified on test images 1000 onwards, so selection never sees the
certified images. Results per run go to runs/study/<setting>/<bound>-s<seed>/result.json
(atomically, as each run ends); docs/results.json (every run and seed), the tables between
the markers of docs/results.md and the plots docs/study-<setting>.png are written from them.
"""
import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import array_api_compat.numpy as xp  # noqa: E402

from bench.study_report import write_report  # noqa: E402
from lipref.certification import CertifyConfig, certify  # noqa: E402
from lipref.data import load_dataset  # noqa: E402
from lipref.models import atomic_write_bytes, load_model  # noqa: E402
from lipref.training import TrainConfig, train  # noqa: E402

SEEDS = (0, 1, 2)
BOUNDS = ("global", "local")
SELECTION = 1000  # test images 0..999 choose best.npz; certification uses the images after them

# The main setting: the official MNIST recipe's loss and shape (GloRo's loss with the
# ball-and-box bottom logit, the robust loss alone from the first step, clipped ReLU with
# threshold 1, 5 power-iteration steps, train eps 1.1x the evaluation eps, no warm-up)
# scaled to 2 cores: a 2-layer MLP, the full Fashion-MNIST training set, 2 epochs. The
# sweeps change one thing each, on the first 8,000 training images for 5 epochs.
BASE = dict(arch="mlp-256-256", activation="clipped_relu", threshold_init=1.0, loss="gloro-bcp", kappa_start=0.0,
            kappa_end=0.0, eps_train=1.75, eps_eval=1.58, batch_size=256, warmup=0.0, n_iters=5, eval_iters=20,
            lr=1e-3, lr_end=1e-4)
SUBSET = dict(BASE, epochs=5, ramp=3.0, train_limit=8_000, n_certify=1000)
SETTINGS = {
    "main": dict(BASE, epochs=2, ramp=1.5, train_limit=None, n_certify=2000),
    "subset": SUBSET,
    "subset-relu": dict(SUBSET, activation="relu"),
    "subset-eps0.5": dict(SUBSET, eps_train=0.55, eps_eval=0.5),
    "subset-gloro": dict(SUBSET, loss="gloro"),
    "subset-narrow": dict(SUBSET, arch="mlp-64-64"),
}
QUICK = dict(BASE, epochs=2, ramp=1.0, train_limit=300, n_certify=100, arch="mlp-32", eval_iters=5)


def _epoch_line(name, bound, seed, event):
    if event["event"] == "epoch_end":
        print(f"  {name} {bound} seed {seed} epoch {event['epoch']}: clean {event['clean_accuracy']:.3f} "
              f"certified {event['certified_accuracy_local']:.3f} local/global "
              f"{event['median_local_over_global']:.3f}", flush=True)


def run_one(runs, name, setting, bound, seed, data, args):
    """Train (or resume) one run and certify its best checkpoint; the result dict (cached)."""
    folder = runs / name / f"{bound}-s{seed}"
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    train_set, select_set, certify_set = data
    options = {k: v for k, v in setting.items() if k not in ("train_limit", "n_certify")}
    config = TrainConfig(bound=bound, seed=seed, eval_limit=SELECTION, **options)
    limit = setting["train_limit"]
    subset = train_set if limit is None else dataclasses.replace(
        train_set, images=train_set.images[:limit], labels=train_set.labels[:limit])
    start = time.perf_counter()
    history = train(config, subset, select_set, folder, resume=(folder / "checkpoint.npz").exists(),
                    progress=lambda e: _epoch_line(name, bound, seed, e))
    seconds = time.perf_counter() - start
    model = load_model(folder / "best.npz", xp, xp.float32)
    n = setting["n_certify"]
    cert = certify(model, certify_set.images[:n], certify_set.labels[:n], config.eval_eps,
                   CertifyConfig(mode="fast", n_iters=args.iters, batch_size=200, pgd_steps=args.pgd_steps),
                   rng=numpy.random.default_rng([seed, 0xCE27]))
    summary = cert.summary()
    result = {"setting": name, "bound": bound, "seed": seed, "config": dataclasses.asdict(config),
              "train_limit": limit, "train_seconds": seconds, "history": history,
              "best_epoch": model.metadata["best"]["epoch"], "certify": {
                  k: summary[k] for k in ("n", "eps", "clean_accuracy", "pgd_accuracy", "certified_accuracy_global",
                                          "certified_accuracy_local", "median_local_over_global",
                                          "mean_constant_fraction", "soundness_violations")}}
    atomic_write_bytes(result_file, json.dumps(result, indent=1).encode("utf-8"))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "study"))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--only", default=None, help="comma-separated setting names (default: all)")
    parser.add_argument("--iters", type=int, default=100, help="power-iteration steps when certifying")
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="tiny data, one setting: checks the pipeline")
    args = parser.parse_args()
    settings = {"quick": QUICK} if args.quick else SETTINGS
    if args.only:
        settings = {k: settings[k] for k in args.only.split(",")}
    spec = "embedded" if args.quick else "fashion-mnist"
    test = load_dataset(f"{spec}:test")
    half = min(SELECTION, test.labels.shape[0] // 2)
    data = (load_dataset(f"{spec}:train"),
            dataclasses.replace(test, images=test.images[:half], labels=test.labels[:half]),
            dataclasses.replace(test, images=test.images[half:], labels=test.labels[half:]))
    runs, results, began = Path(args.runs), [], time.perf_counter()
    for name, setting in settings.items():
        for seed in SEEDS:
            for bound in BOUNDS:
                r = run_one(runs, name, setting, bound, seed, data, args)
                results.append(r)
                c = r["certify"]
                print(f"[{time.perf_counter() - began:6.0f} s] {name} {bound} seed {seed}: clean "
                      f"{c['clean_accuracy']:.3f} PGD {c['pgd_accuracy']:.3f} certified {c['certified_accuracy_local']:.3f}"
                      f" (trained in {r['train_seconds']:.0f} s)", flush=True)
    machine = f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPU cores, NumPy"
    write_report(results, settings, Path(args.docs), machine, args, quick=args.quick)


if __name__ == "__main__":
    main()
