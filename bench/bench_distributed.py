"""Sharded sound-mode certification: one process against a Dask LocalCluster of --workers.

The protocol of bench_sound_certify.py (a 4c3f model trained on MNIST test images 0-4999,
certified at eps 1.58 on images 5000-5999 in float64, 40 Lanczos steps, no PGD), run as a
user runs it: `lipref certify --mode sound` in a fresh process, once alone and once with
`--workers N`, wall-clock times of the whole command (imports, data, the global norms'
set-up, the cluster's start). The two must certify the same samples with the same bounds,
bit for bit (--samples files compared). Then, in this process, the parts of the scaling
model T(N) = T_global_norms + shards / N * t_shard + shards * overhead:

  - T_global_norms: `global_norms_once` (sound: the conv layers' Gram certificates);
  - t_shard: the seconds each shard took inside its worker (model load included once);
  - overhead per shard: the sharded run's wall time beyond shards / N * t_shard, per shard
    (the scheduler's round trip, sending a shard's images, imbalance at the end), and a
    no-op task carrying a shard's images, timed alone.

  python bench/bench_distributed.py --data-dir ../shared/datasets/mnist --workers 2 \\
      --json bench/results/2026-12-03-distributed.json
The model is trained first (one epoch, about a minute) unless --model names one.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipref import distributed  # noqa: E402
from lipref.certify import global_norms_once  # noqa: E402
from lipref.data import load_data  # noqa: E402
from lipref.distributed.cluster import connected  # noqa: E402
from lipref.inputs import load_model_and_data  # noqa: E402
from lipref.models import atomic_write_bytes  # noqa: E402

CLI = [sys.executable, str(ROOT / "cli.py")]


def train_model(out, data_dir):
    """The protocol's model, trained for one epoch only (the timing, not the accuracy, matters).
    Trained on test images 0-4999 and evaluated on the first 100 of them (--allow-overlap):
    model.npz is certified, on images 5000-5999, and best.npz is not used."""
    subprocess.run(CLI + ["train", "--resume", "--out", str(out), "--data", "mnist:test", "--data-dir", data_dir,
                          "--limit", "5000", "--arch", "4c3f", "--bound", "global", "--loss", "gloro", "--eps", "1.58",
                          "--epochs", "1", "--eval-limit", "100", "--allow-overlap", "--quiet", "--json"],
                   check=True, stdout=subprocess.DEVNULL)
    return out / "model.npz"


def held_out_images(data_dir, offset, n, path):
    """MNIST test images offset .. offset + n - 1 as a float64 .npz (what sound mode certifies)."""
    data = load_data("mnist:test", data_dir, offset + n, dtype="float64")
    numpy.savez(path, images=data.images[offset:], labels=data.labels[offset:])
    return path


def cli_certify(model, data, samples, extra):
    """(wall seconds, JSON, stderr) of one `lipref certify --mode sound` process."""
    args = CLI + ["certify", str(model), "--data", str(data), "--eps", "1.58", "--mode", "sound", "--iters", "40",
                  "--pgd-steps", "0", "--seed", "0", "--json", "--samples", str(samples), *extra]
    start = time.perf_counter()
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, json.loads(done.stdout), done.stderr


def global_norm_seconds(stderr):
    for line in stderr.splitlines():
        if "global norms certified in" in line:
            return float(line.rsplit("in", 1)[1].split()[0])
    return None


def _echo(images):
    return images.shape


def scheduler_round_trip(client, images, repeats=20):
    """Median seconds of a no-op task that carries one shard's images (submit to result)."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        client.submit(_echo, images, key=f"bench-noop-{i}", pure=False).result()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scaling_parts(model_path, data, workers, batch_size):
    """The scaling model's parts, measured in this process on a LocalCluster of `workers`."""
    model, dataset, compute = load_model_and_data(str(model_path), str(data), None, None, "numpy", "sound", "auto")
    options = distributed.ShardOptions("certify", 1.58, "sound", 40, batch_size, 0, "numpy", compute)
    start = time.perf_counter()
    norms = global_norms_once(model, "sound", 40, 0)
    t_global = time.perf_counter() - start
    start = time.perf_counter()
    with connected(workers=workers) as client:
        t_cluster = time.perf_counter() - start
        sharding = distributed.Sharding(scheduler=client.scheduler_info()["address"])
        run = distributed.run_sharded(str(model_path), dataset.images, dataset.labels, options, norms, sharding)
        round_trip = scheduler_round_trip(client, dataset.images[:batch_size])
    t_shard = statistics.mean(run.shard_seconds)
    ideal = run.shards / workers * t_shard
    return {"global_norms_seconds": t_global, "cluster_start_seconds": t_cluster, "shards": run.shards,
            "workers": run.workers, "sharded_run_seconds": run.seconds, "shard_seconds": run.shard_seconds,
            "shard_seconds_mean": t_shard, "shard_seconds_median": statistics.median(run.shard_seconds),
            "overhead_per_shard_seconds": (run.seconds - ideal) / run.shards,
            "noop_task_round_trip_seconds": round_trip}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    ap.add_argument("--model", default=None, help="a trained model (default: train one, one epoch)")
    ap.add_argument("--work", default="/tmp/lipref-bench-distributed", help="folder for the model and data")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--offset", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile (recorded in the JSON)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = Path(args.model) if args.model else train_model(work / "model", args.data_dir)
    train_seconds = None if args.model else time.perf_counter() - started
    data = held_out_images(args.data_dir, args.offset, args.n, work / "images.npz")
    batch = ["--batch-size", str(args.batch_size)]
    t1, single, err1 = cli_certify(model, data, work / "single.json", batch)
    print(f"single process: {t1:.1f} s, certified {single['certified_accuracy_local']:.3f}", flush=True)
    tn, sharded, errn = cli_certify(model, data, work / "sharded.json", batch + ["--workers", str(args.workers)])
    print(f"--workers {args.workers}: {tn:.1f} s ({sharded['shards']} shards)", flush=True)
    same = (work / "single.json").read_bytes() == (work / "sharded.json").read_bytes()
    parts = scaling_parts(model, data, args.workers, args.batch_size)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "processor": platform.machine(),
           "cpus": os.cpu_count(), "n": args.n, "offset": args.offset, "eps": 1.58, "lanczos_steps": 40,
           "batch_size": args.batch_size, "workers": args.workers, "train_seconds": train_seconds,
           "single_process_seconds": t1, "sharded_seconds": tn, "speedup": t1 / tn,
           "single_certify_loop_seconds": single["seconds"], "single_global_norms_seconds": global_norm_seconds(err1),
           "sharded_global_norms_seconds": global_norm_seconds(errn),
           "certified_accuracy_local": single["certified_accuracy_local"], "samples_identical": same,
           "in_process": parts,
           "note": args.note}
    print(json.dumps({k: v for k, v in out.items() if k != "in_process"}, indent=1))
    print(json.dumps({k: v for k, v in parts.items() if k != "shard_seconds"}, indent=1))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(out, indent=1).encode())
    if not same:
        sys.exit("the sharded run's samples differ from the single process's")


if __name__ == "__main__":
    main()
