"""A shard folder (lipref.distributed.folder) in one process, without Dask: every option that
can change a number is in the manifest, and a resume with another one is refused naming it;
a damaged shard file is recomputed, never merged and never a traceback; a worker refuses a
model file other than the run's. The same on a real cluster: tests/test_distributed.py."""
import dataclasses
import json
import re

import array_api_compat.numpy as xp
import numpy
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cli import main
from lipref import distributed
from lipref.certification import CertifyConfig, bounds_per_sample
from lipref.distributed.folder import ShardFolder, StaleShard
from lipref.errors import InputError, RunFolderError
from lipref.models import build_model, load_model, save_model

# Options of certify and bound that cannot change a number, each with why. Every other option
# must be in a shard folder's manifest: a resume with another value would merge other numbers.
UNRECORDED = {
    "threads": "blocks of samples in threads: the same numbers, bit for bit (README)",
    "workers": "where the shards run, not what they compute",
    "scheduler": "where the shards run, not what they compute",
    "shards_dir": "the folder itself",
    "resume": "whether to continue the folder",
    "as_json": "output format",
    "samples_path": "an output file",
    "plot_path": "an output file",
    "quiet": "the progress bar",
    "audit": "refused with sharding: it runs in one process",
}
# Options recorded as the digest of what they read: MODEL's bytes; the data's rows (--data-dir
# only says where the files are).
DIGESTED = {"model_path": "model_sha256", "data_dir": "images_sha256"}

# Another value for every recorded option of certify: resuming with it must be refused.
OTHER_VALUES = {"eps": "0.1", "mode": "sound", "n_iters": "3", "pgd_steps": "1", "pgd_restarts": "2",
                "batch_size": "4", "domain": "-1,2", "dtype": "float64", "gram_limit": "0", "seed": "12",
                "reference": None, "data_spec": "embedded:train", "limit": "6", "shard_size": "4"}
UNTESTABLE = {"backend": "cupy needs a GPU (the manifest holds it: test_every_option...)",
              "command": "certify and bound never share a folder's options"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "m.npz"
    save_model(path, build_model("2c2f", (1, 28, 28), 10, xp, xp.float32, numpy.random.default_rng(0)))
    return str(path)


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def base_options(command):
    options = {"--data": "embedded:test", "--limit": "4", "--eps": "0.05", "--iters": "2", "--batch-size": "2",
               "--seed": "11"}
    return {**options, "--pgd-steps": "0"} if command == "certify" else options


def command_line(command, model_file, folder, options, *extra):
    return [command, model_file, *[a for kv in options.items() for a in kv], "--json", "--shards-dir", str(folder),
            *extra]


def one_error_line(result):
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("command", ["certify", "bound"])
def test_every_option_that_can_change_a_number_is_in_the_manifest(command, model_file, tmp_path):
    result = run(command_line(command, model_file, tmp_path / "shards", base_options(command)))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    params = [p.name for p in main.commands[command].params] + [f.name for f in dataclasses.fields(CertifyConfig)]
    missing = [name for name in params if name not in manifest["options"] and name not in UNRECORDED
               and DIGESTED.get(name) not in manifest]
    assert not missing, f"{command}: options that can change a number but are not in the manifest: {missing}"


def test_a_resume_with_any_other_option_is_refused_naming_it(model_file, tmp_path):
    folder = tmp_path / "shards"
    base = base_options("certify")
    assert run(command_line("certify", model_file, folder, base)).exit_code == 0
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    recorded = set(json.loads((folder / "manifest.json").read_text())["options"])
    assert recorded == set(OTHER_VALUES) | set(UNTESTABLE)  # a new recorded option needs another value here
    flags = {p.name: p.opts[0] for p in main.commands["certify"].params}
    for name, value in OTHER_VALUES.items():
        options = dict(base)
        extra = [flags[name]] if value is None else []
        if value is not None:
            options[flags[name]] = value
        line = one_error_line(run(command_line("certify", model_file, folder, options, "--resume", *extra)))
        assert re.search(f" {flags[name]}[,;]", line), line
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written  # nothing overwritten


def test_a_sound_run_with_gram_limit_0_is_not_resumed_with_the_default(model_file, tmp_path):
    args = ["bound", model_file, "--data", "embedded:test", "--limit", "4", "--eps", "0.05", "--iters", "3",
            "--batch-size", "2", "--mode", "sound", "--json", "--shards-dir", str(tmp_path / "shards")]
    assert run(args + ["--gram-limit", "0"]).exit_code == 0
    line = one_error_line(run(args + ["--resume"]))
    assert "other --gram-limit;" in line, line


def test_a_folder_of_another_format_is_one_line(model_file, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "lipref-shards/1"}))
    line = one_error_line(run(command_line("bound", model_file, folder, base_options("bound"), "--resume")))
    assert "lipref-shards/1" in line and "--shards-dir" in line, line


# ------------------------------------------------------------------ damaged shard files

RECORD_OF_SHARD = {"first": 10, "last": 12, "images_sha256": "a" * 64, "labels_sha256": "b" * 64,
                   "model_sha256": "c" * 64, "options_sha256": "d" * 64, "lipref_version": "0"}
NAMES = ("label", "local")


@pytest.fixture(scope="module")
def shard_bytes(tmp_path_factory):
    """The bytes of a shard file as ShardFolder.write writes it, and its arrays."""
    arrays = {"label": numpy.array([3, 1, 4]), "local": numpy.array([0.5, 2.0, 1e-300])}
    folder = ShardFolder(tmp_path_factory.mktemp("shard"), {})
    folder.write(0, arrays, RECORD_OF_SHARD)
    with open(folder.shard_path(0), "rb") as f:
        return f.read(), arrays


def read_back(tmp_path, data, record=RECORD_OF_SHARD, names=NAMES):
    folder = ShardFolder(tmp_path, {})
    with open(folder.shard_path(0), "wb") as f:
        f.write(data)
    return folder.read(0, record, names)


def test_a_shard_file_reads_back_as_written(shard_bytes, tmp_path):
    data, arrays = shard_bytes
    found = read_back(tmp_path, data)
    assert set(found) == set(arrays) and all(numpy.array_equal(found[k], arrays[k]) for k in arrays)


@pytest.mark.parametrize("change, reason", [
    ({"first": 20, "last": 22}, "holds samples 10-12"), ({"images_sha256": "e" * 64}, "other images"),
    ({"labels_sha256": "e" * 64}, "other labels"), ({"model_sha256": "e" * 64}, "another model file"),
    ({"options_sha256": "e" * 64}, "other options"), ({"lipref_version": "9"}, "written by lipref 0, not 9")])
def test_a_shard_file_of_another_record_is_stale(shard_bytes, tmp_path, change, reason):
    with pytest.raises(StaleShard, match=reason):
        read_back(tmp_path, shard_bytes[0], {**RECORD_OF_SHARD, **change})


def test_a_shard_file_without_an_array_or_a_record_is_stale(shard_bytes, tmp_path):
    with pytest.raises(StaleShard, match="lacks constant_fraction"):
        read_back(tmp_path, shard_bytes[0], names=NAMES + ("constant_fraction",))
    folder = ShardFolder(tmp_path, {})
    folder.write(0, {k: a[:2] for k, a in shard_bytes[1].items()}, RECORD_OF_SHARD)
    with pytest.raises(StaleShard, match="label, local in the file do not hold 3 rows"):
        folder.read(0, RECORD_OF_SHARD, NAMES)
    numpy.savez(folder.shard_path(0), **shard_bytes[1])
    with pytest.raises(StaleShard, match="no readable shard record"):
        folder.read(0, RECORD_OF_SHARD, NAMES)


@given(st.data())
def test_a_damaged_shard_file_is_stale_or_reads_the_same_arrays(shard_bytes, tmp_path_factory, data):
    """Cut at any length, or any byte changed: never another exception, never other values."""
    original, arrays = shard_bytes
    cut = data.draw(st.booleans())
    at = data.draw(st.integers(0, len(original) - 1))
    if cut:
        damaged = original[:at]
    else:
        damaged = bytearray(original)
        damaged[at] ^= data.draw(st.integers(1, 255))
    try:
        found = read_back(tmp_path_factory.mktemp("damaged"), bytes(damaged))
    except StaleShard:
        return
    assert all(numpy.array_equal(found[k], arrays[k]) for k in arrays)  # a byte the zip format does not read


# ----------------------------------------------------------------- the worker's model file

def shard_task(model_path, sha256, n=3):
    images = numpy.random.default_rng(1).uniform(0, 1, (n, 1, 28, 28)).astype(numpy.float32)
    options = distributed.ShardOptions("bound", 0.05, "fast", 3, n, 5, "numpy", "float32")
    norms = None  # each shard computes them: these tests compare with the same call in one process
    return distributed.ShardTask(0, 0, n, images, numpy.zeros(n, dtype=numpy.int64), model_path, sha256, options,
                                 norms)


def test_a_worker_refuses_a_model_file_that_is_not_the_runs(model_file):
    failure = distributed.compute_shard(shard_task(model_file, "0" * 64))
    assert isinstance(failure, distributed.worker.ShardFailure) and failure.error_type is InputError
    assert model_file in failure.message and "every worker must read MODEL's very file" in failure.message


def test_a_model_file_changed_at_the_same_path_is_loaded_again(tmp_path):
    path = str(tmp_path / "m.npz")
    results = []
    for seed in (0, 1):  # the second model replaces the first at the same path, as a retrained model would
        save_model(path, build_model("2c2f", (1, 28, 28), 10, xp, xp.float32, numpy.random.default_rng(seed)))
        task = shard_task(path, distributed.file_digest(path))
        _, arrays, _ = distributed.compute_shard(task)
        single = bounds_per_sample(load_model(path, xp, xp.float32), task.images, task.labels, 0.05, CertifyConfig(mode="fast", n_iters=3, batch_size=3), seed=5)
        assert distributed.bound_samples(arrays) == single
        results.append(arrays["local"])
    assert not numpy.array_equal(*results)


def test_a_missing_model_file_on_a_worker_is_one_line(tmp_path):
    with pytest.raises(RunFolderError, match="cannot read"):
        distributed.worker.cached_model(str(tmp_path / "gone.npz"), "0" * 64, "numpy", "float32")
