"""`lipref certify` and `lipref bound` cut into shards of samples, run on a Dask cluster.

Why the sharded result equals a single-process run bit for bit: every random draw comes
from (seed, sample index) (backend.sample_streams), the global norms are computed once, up
front, in the calling process and handed to every shard, and each shard is a whole number
of batches (folder.shard_ranges), so every batch a shard computes is the very batch the
single process computes, with the same code (worker.compute_shard calls `certify.certify` or
`certify.bounds_per_sample`). Results come back in any order and are joined in sample order.

Training stays single-process: a training step needs every sample's gradient before the
next step, so data parallelism means a gradient exchange per step; on a GPU, CuPy runs the
whole batch at once instead (see README.md).
"""
import os
import time
from dataclasses import asdict, dataclass, field

from ..certification import joined_certification
from ..errors import InputError
from .cluster import connected, run_on_cluster, worker_count
from .folder import (  # noqa: F401
    FORMAT,
    ShardFolder,
    StaleShard,
    array_digest,
    file_digest,
    resumed_seed,
    shard_ranges,
    shard_record,
)
from .worker import ShardOptions, ShardTask, bound_samples, compute_shard  # noqa: F401


@dataclass(frozen=True)
class Sharding:
    """How a run is sharded: on the Dask scheduler at `scheduler`, on a LocalCluster of
    `workers` processes, or (neither) in this process; shards of `shard_size` samples (None:
    one batch); results written to `folder` (None: kept in memory); `resume` the run there."""
    scheduler: str = None
    workers: int = None
    shard_size: int = None
    folder: str = None
    resume: bool = False

    def __post_init__(self):
        if self.workers and self.scheduler:
            raise InputError("give --workers N (a cluster on this machine) or --scheduler ADDRESS, not both")
        if self.resume and not self.folder:
            raise InputError("--resume continues the run in --shards-dir DIR: give the folder")

    @property
    def requested(self):
        return bool(self.scheduler or self.workers or self.folder)


@dataclass
class ShardedRun:
    """What a sharded run returns besides its numbers (the JSON's "workers" and "shards")."""
    arrays: list  # per shard, in sample order: {name: host array}
    workers: int
    shards: int
    computed: int  # shards computed by this run (the others were read from the folder)
    shard_seconds: list  # per computed shard, as measured inside the worker
    seconds: float


def make_tasks(model_path, model_sha256, images, labels, options, norms, ranges, threads=None):
    path = os.path.abspath(model_path)
    return [ShardTask(k, s, e, images[s:e], labels[s:e], path, model_sha256, options, norms, threads)
            for k, (s, e) in enumerate(ranges)]


def manifest(model_path, images, labels, options, ranges, run_options=None):
    """What a shard folder's results depend on: the model file's and the data's digests, every
    option that can change a number (the ShardOptions, and `run_options`: those that act
    outside a shard, as --gram-limit on the global norms, or that name the data and the
    shards), and the shards."""
    recorded = {**asdict(options), **(run_options or {})}
    return {"format": FORMAT, "model_sha256": file_digest(model_path), "images_sha256": array_digest(images),
            "labels_sha256": array_digest(labels), "n": int(labels.shape[0]),
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in recorded.items()},
            "shards": len(ranges), "shard_ranges": [list(r) for r in ranges]}


@dataclass
class ShardPlan:
    """A run's shards, the model file's digest and its shard folder (None: none), with the
    shards read from the folder (`found`, by index), each shard's record (what its file must
    carry) and a line per shard file there that is recomputed, saying why (`stale`)."""
    ranges: list
    model_sha256: str
    folder: ShardFolder = None
    found: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    stale: list = field(default_factory=list)


def plan_shards(model_path, images, labels, options, sharding, run_options=None):
    """The run's shards; with a folder, the folder made or (resume) checked against this run
    and its shard files read, before anything is computed. run_options: {name: value} of the
    options that can change a number besides `options` (see `manifest`)."""
    ranges = shard_ranges(int(labels.shape[0]), options.batch_size, sharding.shard_size)
    if not sharding.folder:
        return ShardPlan(ranges, file_digest(model_path))
    recorded = {**(run_options or {}), "shard_size": sharding.shard_size or options.batch_size}
    folder = ShardFolder(sharding.folder, manifest(model_path, images, labels, options, ranges, recorded))
    plan = ShardPlan(ranges, folder.manifest["model_sha256"], folder,
                     records=[shard_record(folder.manifest, images, labels, s, e) for s, e in ranges])
    for k in sorted(folder.open(sharding.resume)):
        try:
            plan.found[k] = folder.read(k, plan.records[k], options.result_names())
        except StaleShard as exc:
            plan.stale.append(f"{folder.shard_path(k)} (shard {k}, samples {ranges[k][0]}-{ranges[k][1] - 1}): "
                              f"{exc}; recomputing")
    return plan


def run_sharded(model_path, images, labels, options, norms, sharding, progress=None, threads=None, plan=None):
    """Every shard of the run computed (or read from the shard folder when resuming), in
    sample order, as a ShardedRun. progress(n_samples) after each shard. plan: from
    `plan_shards` (made here when None)."""
    started = time.perf_counter()
    plan = plan or plan_shards(model_path, images, labels, options, sharding)
    tasks = make_tasks(model_path, plan.model_sha256, images, labels, options, norms, plan.ranges, threads)
    results = dict(plan.found)
    if progress is not None and plan.found:
        progress(sum(plan.ranges[k][1] - plan.ranges[k][0] for k in plan.found))
    seconds = []

    def arrived(task, result):
        _, arrays, shard_seconds = result
        if plan.folder is not None:
            plan.folder.write(task.index, arrays, plan.records[task.index])
        results[task.index] = arrays
        seconds.append(shard_seconds)
        if progress is not None:
            progress(task.stop - task.start)
    pending = [t for t in tasks if t.index not in plan.found]
    workers = _run(pending, sharding, arrived)
    return ShardedRun([results[k] for k in range(len(tasks))], workers, len(tasks), len(pending), seconds,
                      time.perf_counter() - started)


def _run(tasks, sharding, arrived):
    """Compute `tasks` where `sharding` says; the number of workers that ran them."""
    if not (sharding.scheduler or sharding.workers):
        for task in tasks:
            result = compute_shard(task)
            if not isinstance(result, tuple):
                raise result.error()
            arrived(task, result)
        return 1
    with connected(sharding.scheduler, sharding.workers) as client:
        count = worker_count(client)
        if tasks:
            run_on_cluster(client, tasks, arrived)
        return count


def joined_shards(run, options):
    """The run's result as a single process gives it: a Certification (certify) or the rows of
    `bounds_per_sample` (bound)."""
    if options.command == "certify":
        return joined_certification(run.arrays, options.eps, options.mode, options.n_iters, options.pgd_steps,
                                    run.seconds)
    return [row for arrays in run.arrays for row in bound_samples(arrays)]


def summary(run):
    """The JSON's additions of a sharded run."""
    return {"workers": run.workers, "shards": run.shards, "shards_computed": run.computed}
