"""Sharded certify and bound on a real Dask LocalCluster (processes, 127.0.0.1): the same
numbers as one process, bit for bit; a worker killed while it holds a shard loses nothing;
--resume computes only the missing shards, and recomputes (never merges) a shard file that is
swapped, another run's, truncated, empty or incomplete; a bad value inside a shard is one
line, no retry. A shard folder in one process: tests/test_shard_folder.py."""
import json
import os
import signal
import threading
import time

import array_api_compat.numpy as xp
import numpy
import pytest
from click.testing import CliRunner

dd = pytest.importorskip("distributed", reason="dask.distributed not installed: pip install 'lipref[distributed]'")

from cli import main  # noqa: E402
from lipref import distributed  # noqa: E402
from lipref.models import build_model, save_model  # noqa: E402

SHARD_KEYS = ("seconds", "workers", "shards", "shards_computed")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "m.npz"
    save_model(path, build_model("2c2f", (1, 28, 28), 10, xp, xp.float32, numpy.random.default_rng(0)))
    return str(path)


@pytest.fixture(scope="module")
def cluster():
    with dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0") as local, dd.Client(local) as client:
        yield local, client


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def certify_args(model_file, samples, *extra):
    return ["certify", model_file, "--data", "embedded:test", "--limit", "40", "--eps", "0.05", "--iters", "20",
            "--pgd-steps", "5", "--batch-size", "10", "--seed", "11", "--json", "--quiet", "--samples", str(samples),
            *extra]


def certify_json(args):
    result = run(args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def without_shard_keys(doc):
    return {k: v for k, v in doc.items() if k not in SHARD_KEYS}


@pytest.fixture(scope="module")
def single_process(model_file, tmp_path_factory):
    """The undisturbed single-process run every sharded run must equal: (summary, samples)."""
    samples = tmp_path_factory.mktemp("single") / "samples.json"
    doc = certify_json(certify_args(model_file, samples))
    assert "workers" not in doc
    return doc, json.loads(samples.read_text())["samples"]


def assert_same_as_single(doc, samples_path, single_process):
    summary, rows = single_process
    assert without_shard_keys(doc) == without_shard_keys(summary)
    assert json.loads(samples_path.read_text())["samples"] == rows  # every bound, radius and certificate, bit for bit


def test_sharded_certify_equals_single_process(model_file, cluster, single_process, tmp_path):
    local, _ = cluster
    doc = certify_json(certify_args(model_file, tmp_path / "s.json", "--scheduler", local.scheduler_address))
    assert (doc["workers"], doc["shards"], doc["shards_computed"]) == (2, 4, 4)
    assert_same_as_single(doc, tmp_path / "s.json", single_process)


def test_workers_option_starts_a_local_cluster(model_file, single_process, tmp_path):
    doc = certify_json(certify_args(model_file, tmp_path / "s.json", "--workers", "2", "--shard-size", "20"))
    assert (doc["workers"], doc["shards"]) == (2, 2)
    assert_same_as_single(doc, tmp_path / "s.json", single_process)


@pytest.mark.parametrize("command", ["certify", "bound"])
def test_help_says_the_answers_are_the_same(command):
    text = " ".join(run([command, "--help"]).output.split())
    assert "--workers" in text and "--scheduler" in text and "bit for bit" in text


def bound_json(model_file, *extra):
    result = run(["bound", model_file, "--data", "embedded:test", "--limit", "12", "--eps", "0.05", "--iters", "8",
                  "--batch-size", "3", "--seed", "5", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("mode", ["fast", "sound"])
def test_sharded_bound_equals_single_process(model_file, cluster, mode):
    local, _ = cluster
    single = bound_json(model_file, "--mode", mode)
    sharded = bound_json(model_file, "--mode", mode, "--scheduler", local.scheduler_address)
    assert sharded["shards"] == 4
    assert without_shard_keys(sharded) == single


def test_each_worker_reads_the_model_file_once(model_file, cluster):
    local, client = cluster
    bound_json(model_file, "--scheduler", local.scheduler_address, "--shard-size", "3")
    loads = client.run(distributed.worker.model_loads)
    for keys in loads.values():
        assert len(keys) == len(set(keys)), keys


def _held_shard(client):
    """(worker address, key) of a shard some worker holds, or None."""
    for address, keys in client.processing().items():
        for key in keys:
            if str(key).startswith("lipref-shard-"):
                return address, key
    return None


def test_a_worker_killed_while_it_holds_a_shard_loses_nothing(model_file, cluster, single_process, tmp_path):
    local, client = cluster
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run(certify_args(
        model_file, tmp_path / "s.json", "--scheduler", local.scheduler_address))))
    runner.start()
    held, deadline = None, time.monotonic() + 60
    while held is None and time.monotonic() < deadline and runner.is_alive():
        held = _held_shard(client)
        time.sleep(0.01)
    assert held is not None, "no worker was seen holding a shard"
    address, key = held
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)
    runner.join(120)
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    assert_same_as_single(json.loads(result.stdout), tmp_path / "s.json", single_process)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker, for the tests after this one


class Interrupted(Exception):
    pass


def test_resume_computes_only_the_missing_shards(model_file, cluster, single_process, tmp_path):
    local, _ = cluster
    folder = tmp_path / "shards"
    args = certify_args(model_file, tmp_path / "s.json", "--scheduler", local.scheduler_address, "--shards-dir",
                        str(folder))
    arrived = []

    def interrupt_after_two(n):
        arrived.append(n)
        if len(arrived) == 2:
            raise Interrupted  # as a Ctrl-C in the middle of a run
    with pytest.MonkeyPatch.context() as patch:
        original = distributed.run_sharded
        patch.setattr(distributed, "run_sharded",
                      lambda *a, **k: original(*a[:6], interrupt_after_two, *a[7:], **k))
        with pytest.raises(Interrupted):
            run(args)
    written = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.npz")}
    assert len(written) == 2, written
    refused = run(args)  # without --resume: the folder is not overwritten
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    other = run(certify_args(model_file, tmp_path / "o.json", "--shards-dir", str(folder), "--resume", "--eps", "0.1"))
    assert other.exit_code == 2 and "--eps" in other.stderr
    doc = certify_json(args + ["--resume"])
    assert (doc["shards"], doc["shards_computed"]) == (4, 2)
    assert_same_as_single(doc, tmp_path / "s.json", single_process)
    assert {name: (folder / name).stat().st_mtime_ns for name in written} == written  # read, not recomputed
    assert len(list(folder.glob("shard-*.npz"))) == 4


def finished_folder(model_file, local, tmp_path):
    """(the shard folder of a finished sharded run, the run's arguments)."""
    folder = tmp_path / "shards"
    args = certify_args(model_file, tmp_path / "s.json", "--scheduler", local.scheduler_address, "--shards-dir",
                        str(folder))
    certify_json(args)
    return folder, args


def resumed(args, samples_path, single_process, computed):
    """The lines saying which shard files are recomputed, once the run is resumed and its every
    result checked against the single process."""
    result = run(args + ["--resume"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["shards"], doc["shards_computed"]) == (4, computed)
    assert_same_as_single(doc, samples_path, single_process)
    return [line for line in result.stderr.splitlines() if line.endswith("; recomputing")]


def recomputing(folder, k, reason):
    return f"{folder / f'shard-{k:05d}.npz'} (shard {k}, samples {10 * k}-{10 * k + 9}): {reason}; recomputing"


def test_swapped_or_foreign_shard_files_are_recomputed_never_merged(model_file, cluster, single_process, tmp_path):
    local, _ = cluster
    folder, args = finished_folder(model_file, local, tmp_path)
    one, two = (folder / "shard-00001.npz").read_bytes(), (folder / "shard-00002.npz").read_bytes()
    (folder / "shard-00001.npz").write_bytes(two)
    (folder / "shard-00002.npz").write_bytes(one)
    other = tmp_path / "other"  # the same samples 30-39 of another run, on other data
    certify_json(certify_args(model_file, tmp_path / "o.json", "--data", "embedded:train", "--shards-dir", str(other)))
    (folder / "shard-00003.npz").write_bytes((other / "shard-00003.npz").read_bytes())
    assert resumed(args, tmp_path / "s.json", single_process, 3) == [
        recomputing(folder, 1, "the file holds samples 20-29"), recomputing(folder, 2, "the file holds samples 10-19"),
        recomputing(folder, 3, "the file was computed from other images")]
    assert resumed(args, tmp_path / "s.json", single_process, 0) == []  # the files are this run's now


def test_a_truncated_empty_or_incomplete_shard_file_is_recomputed(model_file, cluster, single_process, tmp_path):
    local, _ = cluster
    folder, args = finished_folder(model_file, local, tmp_path)
    shard = [folder / f"shard-{k:05d}.npz" for k in range(4)]
    shard[0].write_bytes(shard[0].read_bytes()[:shard[0].stat().st_size // 2])
    shard[1].write_bytes(b"")
    with numpy.load(shard[2]) as f:
        kept = {name: f[name] for name in f.files if name != "radius_local"}
    numpy.savez(shard[2], **kept)  # its record kept: only the missing array tells
    assert resumed(args, tmp_path / "s.json", single_process, 3) == [
        recomputing(folder, 0, "the file cannot be read (BadZipFile: File is not a zip file)"),
        recomputing(folder, 1, "the file is empty"), recomputing(folder, 2, "the file lacks radius_local")]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow itself, in the single-process run
def test_a_bad_value_in_a_shard_is_one_line_and_never_retried(model_file, cluster, tmp_path):
    local, _ = cluster
    images = numpy.random.default_rng(0).uniform(0, 1, (20, 1, 28, 28)).astype(numpy.float32)
    images[13] = 3e38  # overflows the bounds of the shard holding sample 13, and that shard only
    data = tmp_path / "bad.npz"
    numpy.savez(data, images=images, labels=numpy.zeros(20, dtype=numpy.int64))
    args = ["bound", model_file, "--data", str(data), "--eps", "0.1", "--iters", "5", "--batch-size", "5"]
    single = run(args)
    started = time.time()
    sharded = run(args + ["--scheduler", local.scheduler_address])
    for result in (single, sharded):
        lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert sharded.stderr.splitlines()[-1] == single.stderr.splitlines()[-1]
    assert "overflow" in single.stderr
    runs = [entry.key for entry in local.scheduler.transition_log if entry.timestamp >= started
            and str(entry.key).startswith("lipref-shard-00002") and entry.finish == "processing"]
    assert len(runs) == 1, runs  # the failing shard ran once: no retry loop
