"""Sharded sound-mode certification: one process against a Dask LocalCluster of --workers.

The protocol of bench_sound_certify.py (a 4c3f model trained on MNIST test images 0-4999,
certified at eps 1.58 on images 5000-5999 in float64, 40 Lanczos steps, no PGD), run as a
user runs it: `lipref certify --mode sound` in a fresh process, once alone and once with
`--workers N`, wall-clock times of the whole command (imports, data, the global norms'
set-up, the cluster's start). The two must certify the same samples with the same bounds,
bit for bit (the --samples files' rows compared). Then, in this process, the parts of the scaling
model T(N) = T_global_norms + shards / N * t_shard + shards * overhead:

  - T_global_norms: `CertifyConfig.global_norms` (sound: the conv layers' Gram certificates);
  - t_shard: the seconds each shard took inside its worker (model load included once);
  - overhead per shard: the sharded run's wall time beyond shards / N * t_shard, per shard
    (the scheduler's round trip, sending a shard's images, imbalance at the end), and a
    no-op task carrying a shard's images, timed alone.

  python bench/bench_distributed.py --data-dir ../shared/datasets/mnist --workers 2 \\
      --json bench/results/2026-12-03-distributed.json
The model is trained first (one epoch, about a minute) unless --model names one. --smoke:
the same steps on the embedded Fashion-MNIST slice (a 2c2f trained on test images 0-199,
certified on 200-219 in shards of 10, 5 Lanczos steps, the polyphase bound only) with the
files in --work (tests/test_bench.py; the times mean nothing, the shards must still agree).
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

from bench.common import write_json  # noqa: E402
from lipref import distributed  # noqa: E402
from lipref.bounds.certificates import GRAM_LIMIT  # noqa: E402
from lipref.certification import CertifyConfig  # noqa: E402
from lipref.data import load_data  # noqa: E402
from lipref.distributed.cluster import connected  # noqa: E402
from lipref.inputs import load_model_and_data  # noqa: E402

CLI = [sys.executable, str(ROOT / "cli.py")]
SMOKE = {"data": "embedded:test", "data_dir": None, "arch": "2c2f", "offset": 200, "n": 20, "batch_size": 10,
         "lanczos": 5, "gram_limit": 0, "workers": 2}


def train_model(out, args):
    """The protocol's model, trained for one epoch only (the timing, not the accuracy, matters)
    on the images before --offset, evaluated on the first 100 of them (--allow-overlap:
    model.npz is certified, on the images from --offset on, and best.npz is not used)."""
    data_dir = ["--data-dir", args.data_dir] if args.data_dir else []
    subprocess.run(CLI + ["train", "--resume", "--out", str(out), "--data", args.data, *data_dir,
                          "--limit", str(args.offset), "--arch", args.arch, "--bound", "global", "--loss", "gloro",
                          "--eps", "1.58", "--epochs", "1", "--eval-limit", "100", "--allow-overlap", "--quiet",
                          "--json"],
                   check=True, stdout=subprocess.DEVNULL)
    return out / "model.npz"


def held_out_images(args, path):
    """Test images offset .. offset + n - 1 as a float64 .npz (what sound mode certifies)."""
    data = load_data(args.data, args.data_dir, args.offset + args.n, dtype="float64")
    numpy.savez(path, images=data.images[args.offset:], labels=data.labels[args.offset:])
    return path


def cli_certify(model, data, samples, args, extra):
    """(wall seconds, JSON, stderr) of one `lipref certify --mode sound` process."""
    cmd = CLI + ["certify", str(model), "--data", str(data), "--eps", "1.58", "--mode", "sound", "--iters",
                 str(args.lanczos), "--gram-limit", str(args.gram_limit), "--pgd-steps", "0", "--seed", "0", "--json",
                 "--samples", str(samples), *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
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


def scaling_parts(model_path, data, args):
    """The scaling model's parts, measured in this process on a LocalCluster of `workers`."""
    workers, batch_size = args.workers, args.batch_size
    model, dataset, compute = load_model_and_data(str(model_path), str(data), None, None, "numpy", "sound", "auto")
    options = distributed.ShardOptions("certify", 1.58, "sound", args.lanczos, batch_size, 0, "numpy", compute)
    start = time.perf_counter()
    norms = CertifyConfig(mode="sound", n_iters=args.lanczos, gram_limit=args.gram_limit).global_norms(model, 0)
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


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist:test", help="the dataset (training images before --offset)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    ap.add_argument("--model", default=None, help="a trained model (default: train one, one epoch)")
    ap.add_argument("--arch", default="4c3f", help="the architecture of the model trained (without --model)")
    ap.add_argument("--work", default="/tmp/lipref-bench-distributed", help="folder for the model and data")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--offset", type=int, default=5000, help="first image certified; the model trains on those before")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lanczos", type=int, default=40, help="Lanczos steps (certify --iters)")
    ap.add_argument("--gram-limit", type=int, default=GRAM_LIMIT, help="certify --gram-limit")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile (recorded in the JSON)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs")
    args = ap.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def main(argv=None):
    args = parse(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = Path(args.model) if args.model else train_model(work / "model", args)
    train_seconds = None if args.model else time.perf_counter() - started
    data = held_out_images(args, work / "images.npz")
    batch = ["--batch-size", str(args.batch_size)]
    t1, single, err1 = cli_certify(model, data, work / "single.json", args, batch)
    print(f"single process: {t1:.1f} s, certified {single['certified_accuracy_local']:.3f}", flush=True)
    tn, sharded, errn = cli_certify(model, data, work / "sharded.json", args, batch + ["--workers", str(args.workers)])
    print(f"--workers {args.workers}: {tn:.1f} s ({sharded['shards']} shards)", flush=True)
    same = (json.loads((work / "single.json").read_text())["samples"] ==
            json.loads((work / "sharded.json").read_text())["samples"])  # every number, bit for bit
    parts = scaling_parts(model, data, args)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "processor": platform.machine(),
           "cpus": os.cpu_count(), "data": args.data, "arch": args.arch, "n": args.n, "offset": args.offset,
           "eps": 1.58, "lanczos_steps": args.lanczos, "gram_limit": args.gram_limit,
           "batch_size": args.batch_size, "workers": args.workers, "train_seconds": train_seconds,
           "single_process_seconds": t1, "sharded_seconds": tn, "speedup": t1 / tn,
           "single_certify_loop_seconds": single["seconds"], "single_global_norms_seconds": global_norm_seconds(err1),
           "sharded_global_norms_seconds": global_norm_seconds(errn),
           "certified_accuracy_local": single["certified_accuracy_local"], "samples_identical": same,
           "in_process": parts, "smoke": args.smoke,
           "note": args.note}
    print(json.dumps({k: v for k, v in out.items() if k != "in_process"}, indent=1))
    print(json.dumps({k: v for k, v in parts.items() if k != "shard_seconds"}, indent=1))
    if args.json:
        write_json(args.json, out)
    if not same:
        sys.exit("the sharded run's samples differ from the single process's")


if __name__ == "__main__":
    main()
