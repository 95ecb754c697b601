"""The local-against-global training studies of docs/results.md, on 2 CPU cores.

    python bench/study.py                 # the MLP study: about an hour on 2 cores
    python bench/study.py --study conv    # the conv study (4c3f-half): about 80 minutes on 2 cores
    python bench/study.py --quick         # the same pipeline on tiny data (a smoke test, seconds)
    python bench/study_report.py --study conv   # only the report, from the runs there are

Every setting (bench/study_settings.py) is trained with the global and with the local bound,
3 seeds each, on Fashion-MNIST (`apt-get install dataset-fashion-mnist`, or `lipref data
download fashion-mnist`). The best checkpoint is chosen on test images 0-999 (held out from
certification) and certified on test images 1000 onwards, so selection never sees the
certified images. After every epoch the checkpoint's per-layer statistics (constant neurons,
local/global norm per layer) are measured on test images 0-199 (bench/study_layers.py).
Results per run go to runs/study/<setting>/<bound>-s<seed>/result.json (atomically, as each
run ends); rerunning resumes (finished runs are kept, an interrupted run continues from its
last epoch). docs/results.json (every run and seed, one key per study), the tables between
the study's markers in docs/results.md and the plots docs/study-<setting>.png are written
from them by bench/study_report.py.
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import array_api_compat.numpy as xp  # noqa: E402

from bench.study_layers import EpochProbe, layer_statistics  # noqa: E402
from bench.study_report import machine_line, report_from_runs, study_arguments  # noqa: E402
from bench.study_settings import (  # noqa: E402
                                  PROBE,
                                  SELECTION,
                                  bounds_of,
                                  seeds_of,
                                  settings_of,
                                  training_options,
)
from lipref.backend import keep_freed_memory  # noqa: E402
from lipref.certification import CertifyConfig, certify  # noqa: E402
from lipref.data import load_dataset  # noqa: E402
from lipref.models import atomic_write_bytes, load_model  # noqa: E402
from lipref.training import TrainConfig, train  # noqa: E402

CERTIFY_KEYS = ("n", "eps", "clean_accuracy", "pgd_accuracy", "certified_accuracy_global", "certified_accuracy_local",
                "median_local_over_global", "mean_constant_fraction", "soundness_violations")
END_LAYERS = 250  # certified images the final per-layer statistics are measured on


def _epoch_line(name, bound, seed):
    def show(event):
        if event["event"] == "epoch_end":
            print(f"  {name} {bound} seed {seed} epoch {event['epoch']}: clean {event['clean_accuracy']:.3f} "
                  f"certified {event['certified_accuracy_local']:.3f} local/global "
                  f"{event['median_local_over_global']:.3f}", flush=True)
    return show


def _subset(dataset, limit):
    if limit is None:
        return dataset
    return dataclasses.replace(dataset, images=dataset.images[:limit], labels=dataset.labels[:limit])


def run_one(runs, name, setting, bound, seed, data, args):
    """Train (or resume) one run and certify its best checkpoint; the result dict (cached)."""
    folder = runs / name / f"{bound}-s{seed}"
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    train_set, select_set, certify_set = data
    config = TrainConfig(**{"eval_limit": SELECTION, **training_options(setting), "bound": bound, "seed": seed})
    probe_images = select_set.images[:setting.get("probe", PROBE)]
    probe = EpochProbe(folder, probe_images, config.eval_eps, config.eval_iters, seed,
                       then=_epoch_line(name, bound, seed))
    resume = (folder / "checkpoint.npz").exists()
    if resume:
        probe.measure_checkpoint()  # the epoch an interrupted run stopped after, if not measured yet
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    history = train(config, _subset(train_set, setting["train_limit"]), select_set, folder, resume=resume,
                    progress=probe)
    seconds = time.perf_counter() - start
    model = load_model(folder / "best.npz", xp, xp.float32)
    n = setting["n_certify"]
    images, labels = certify_set.images[:n], certify_set.labels[:n]
    cert = certify(model, images, labels, config.eval_eps,
                   CertifyConfig(mode="fast", n_iters=args.iters, batch_size=200, pgd_steps=args.pgd_steps),
                   rng=numpy.random.default_rng([seed, 0xCE27]))
    summary = cert.summary()
    end = layer_statistics(model, images[:END_LAYERS], config.eval_eps, args.iters, seed)
    result = {"setting": name, "bound": bound, "seed": seed, "config": dataclasses.asdict(config),
              "train_limit": setting["train_limit"], "train_seconds": seconds,
              "certify_seconds": summary["seconds"], "history": history,
              "best_epoch": model.metadata["best"]["epoch"], "certify": {k: summary[k] for k in CERTIFY_KEYS},
              "layers_end": end, "layers_per_epoch": probe.records, "machine": machine_line(),
              "load_average": [load_before, os.getloadavg()[0]],  # the 1-minute load when training began and ended
              "certify_options": {"iters": args.iters, "pgd_steps": args.pgd_steps}}
    atomic_write_bytes(result_file, json.dumps(result, indent=1).encode("utf-8"))
    return result


def load_data(quick):
    """(training set, selection images: test 0-999, certification images: test 1000 on)."""
    spec = "embedded" if quick else "fashion-mnist"
    test = load_dataset(f"{spec}:test")
    half = min(SELECTION, test.labels.shape[0] // 2)
    select = dataclasses.replace(test, images=test.images[:half], labels=test.labels[:half])
    return load_dataset(f"{spec}:train"), select, dataclasses.replace(test, images=test.images[half:],
                                                                      labels=test.labels[half:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    study_arguments(parser)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: each setting's)")
    parser.add_argument("--iters", type=int, default=100, help="power-iteration steps when certifying")
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="tiny data, one setting: checks the pipeline")
    parser.add_argument("--no-report", action="store_true", help="train and certify only")
    args = parser.parse_args()
    keep_freed_memory()
    settings = settings_of(args.study, args.quick, args.only)
    data = load_data(args.quick)
    runs, began = Path(args.runs), time.perf_counter()
    for name, setting in settings.items():
        for seed in seeds_of(setting):
            if args.seeds and str(seed) not in args.seeds.split(","):
                continue
            for bound in bounds_of(setting):
                r = run_one(runs, name, setting, bound, seed, data, args)
                c = r["certify"]
                print(f"[{time.perf_counter() - began:6.0f} s] {name} {bound} seed {seed}: clean "
                      f"{c['clean_accuracy']:.3f} PGD {c['pgd_accuracy']:.3f} certified "
                      f"{c['certified_accuracy_local']:.3f} (trained in {r['train_seconds']:.0f} s)", flush=True)
    if not args.no_report:  # every finished run of the study, not only those of --only / --seeds
        report_from_runs(args.study, runs, Path(args.docs), args.quick)


if __name__ == "__main__":
    main()
