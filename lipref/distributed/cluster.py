"""Running shards on a Dask cluster (`dask.distributed`, the optional `distributed` extra).

A worker that dies while it holds a shard loses nothing: the scheduler gives the shard to
another worker (Dask reschedules the tasks of a lost worker, up to its
`distributed.scheduler.allowed-failures` deaths per task), and since a shard's numbers
depend on its samples alone, the second computation equals the first. A lipref error
inside a shard comes back as a `ShardFailure` result, never as an exception, so Dask does
not retry it: the run stops at once with that error. Tasks are submitted without
`retries=`, which would retry an exception (a bug in lipref) as well.
"""
import contextlib
import logging
import uuid

from ..errors import UserError, import_extra
from .worker import ShardFailure, compute_shard

INSTALL = "sharding over a cluster needs Dask: pip install 'lipref[distributed]'"


class ClusterError(UserError, RuntimeError):
    """The cluster cannot run the shards: no scheduler at the address, or a shard that kept
    killing its workers (out of memory, say)."""


def _distributed():
    return import_extra("distributed", INSTALL)


@contextlib.contextmanager
def connected(scheduler=None, workers=None):
    """A Dask Client: of the scheduler at `scheduler`, or of a LocalCluster of `workers`
    worker processes on 127.0.0.1, one thread each (closed on exit)."""
    dd = _distributed()
    with contextlib.ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(dd.Client(scheduler, timeout="20s"))
            except (OSError, TimeoutError) as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        else:
            cluster = stack.enter_context(dd.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR))
            client = stack.enter_context(dd.Client(cluster))
        yield client


def worker_count(client):
    return len(client.scheduler_info(n_workers=-1)["workers"])


def run_on_cluster(client, tasks, on_result):
    """Compute every ShardTask on the cluster, calling on_result(task, (index, arrays,
    seconds)) as each arrives (in any order). A ShardFailure cancels the rest and is raised."""
    dd = _distributed()
    run = uuid.uuid4().hex[:8]
    futures = {client.submit(compute_shard, t, key=f"lipref-shard-{t.index:05d}-{run}", pure=False): t
               for t in tasks}
    try:
        for future in dd.as_completed(futures):
            result = _result(dd, future, futures[future])
            if isinstance(result, ShardFailure):
                raise result.error()
            on_result(futures[future], result)
    finally:
        client.cancel(list(futures))


def _result(dd, future, task):
    try:
        return future.result()
    except dd.KilledWorker:
        raise ClusterError(f"shard {task.index} (samples {task.start}-{task.stop - 1}) killed the workers that ran "
                           "it, again and again (out of memory? try a smaller --batch-size)") from None
