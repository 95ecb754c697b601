"""Training: a run killed mid-epoch and resumed ends with the same weights as an
uninterrupted run; checkpoints are never overwritten by accident; the loss goes down."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--data", "embedded:train", "--limit", "192", "--eval-limit", "50", "--eval-iters", "5",
         "--arch", "mlp-32", "--activation", "clipped_relu", "--sparsity", "0.05", "--epochs", "3",
         "--batch-size", "16", "--warmup", "0.5", "--ramp", "1.5", "--eps", "0.3", "--iters", "2", "--seed", "7"]


def _cli(args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "cli.py")] + args, capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kw)


def _weights(path):
    with numpy.load(path) as npz:
        return {k: npz[k] for k in npz.files if k != "__lipref__"}


def _timeless(history):
    """The history without its seconds (which differ between equal runs)."""
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "eval_seconds")} for r in history]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = _cli(TRAIN + ["--out", str(full)])
    assert done.returncode == 0, done.stderr
    # start the same run and kill it (SIGKILL, no clean-up) in the middle of epoch 2
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py")] + TRAIN + ["--out", str(killed)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("epoch 2/3 step 6/12"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-5:])
    assert (killed / "checkpoint.npz").exists() and not (killed / "model.npz").exists()
    resumed = _cli(TRAIN + ["--out", str(killed), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 1/3" not in resumed.stderr  # epoch 1 was not replayed
    a, b = _weights(full / "model.npz"), _weights(killed / "model.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ha = json.loads((full / "history.json").read_text())["history"]
    hb = json.loads((killed / "history.json").read_text())["history"]
    assert _timeless(ha) == _timeless(hb)


def test_existing_run_is_not_overwritten_and_resume_checks_options(tmp_path):
    out = tmp_path / "run"
    args = TRAIN[:-8] + ["--epochs", "1", "--batch-size", "64", "--out", str(out)]
    assert _cli(args).returncode == 0
    before = (out / "checkpoint.npz").read_bytes()
    again = _cli(args)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    changed = _cli(args[:-2] + ["--lr", "0.01", "--out", str(out), "--resume"])
    assert changed.returncode == 2 and "lr" in changed.stderr
    assert (out / "checkpoint.npz").read_bytes() == before


def test_training_lowers_the_robust_loss_and_keeps_thresholds_nonnegative(tmp_path):
    import array_api_compat.numpy as xp

    from lipref.data import load_dataset
    from lipref.models import load_model
    from lipref.training import TrainConfig, train
    data, held_out = load_dataset("embedded:train", limit=256), load_dataset("embedded:test", limit=50)
    losses = []
    config = TrainConfig(arch="mlp-32", activation="clipped_relu", epochs=3, batch_size=32, eps_train=0.3,
                         warmup=0, ramp=0, lr=3e-3, lr_end=3e-3, sparsity=0.05, eval_limit=50, eval_iters=5)
    train(config, data, held_out, tmp_path,
          progress=lambda e: losses.append(e["loss"]) if e["event"] == "step" else 0)
    first, last = numpy.mean(losses[:8]), numpy.mean(losses[-8:])
    assert last < first
    model = load_model(tmp_path / "model.npz", xp, xp.float32)
    for name, var in model.parameters().items():
        if name.endswith(".threshold"):
            assert float(xp.min(var.value)) >= 0.0
    assert model.metadata["training"]["arch"] == "mlp-32"
    assert (tmp_path / "best.npz").exists()


@pytest.mark.parametrize("loss", ["gloro", "bcp"])
def test_global_and_local_bound_training_both_run(tmp_path, loss):
    from lipref.data import load_dataset
    from lipref.training import TrainConfig, train
    data, held_out = load_dataset("embedded:train", limit=64), load_dataset("embedded:test", limit=20)
    for bound in ("global", "local"):
        config = TrainConfig(arch="2c2f", epochs=1, batch_size=32, eps_train=0.3, warmup=0, ramp=0, loss=loss,
                             bound=bound, eval_limit=20, eval_iters=3)
        history = train(config, data, held_out, tmp_path / bound)
        assert len(history) == 1 and numpy.isfinite(history[0]["clean_accuracy"])
    # the global-bound run keeps no per-sample vectors; the local one keeps those of its last epoch
    assert not (tmp_path / "global" / "vectors").exists()
    assert [p.name for p in (tmp_path / "local" / "vectors").iterdir()] == ["epoch-1"]


def _small_run(tmp_path, name, threads, dtype="float32", epochs=2, sample_block=None):
    from lipref.data import load_dataset
    from lipref.training import TrainConfig, train
    data, held_out = load_dataset("embedded:train", limit=128), load_dataset("embedded:test", limit=20)
    config = TrainConfig(arch="2c2f", activation="clipped_relu", epochs=epochs, batch_size=64, eps_train=0.3,
                         warmup=0.5, ramp=0.5, sparsity=0.05, eval_limit=20, eval_iters=3, dtype=dtype)
    history = train(config, data, held_out, tmp_path / name, threads=threads, sample_block=sample_block)
    return _weights(tmp_path / name / "model.npz"), history


def test_training_does_not_depend_on_threads(tmp_path):
    """A step runs in blocks of samples, in threads; the blocks are fixed by the batch size,
    so one thread and two give the same weights, bit for bit (warm-up and robust steps)."""
    one, history_one = _small_run(tmp_path, "one", threads=1)
    two, history_two = _small_run(tmp_path, "two", threads=2)
    assert _timeless(history_one) == _timeless(history_two)
    for k in one:
        numpy.testing.assert_array_equal(one[k], two[k], err_msg=k)


def test_blocked_training_step_equals_the_whole_batch(tmp_path):
    """Summing the blocks' weighted gradients is the batch's gradient: in float64, a run whose
    batches are split in blocks of 8 ends with the weights of a run that never splits them."""
    blocked, _ = _small_run(tmp_path, "blocked", threads=2, dtype="float64", epochs=1, sample_block=8)
    whole, _ = _small_run(tmp_path, "whole", threads=2, dtype="float64", epochs=1, sample_block=10 ** 6)
    for k in whole:
        numpy.testing.assert_allclose(blocked[k], whole[k], rtol=1e-9, atol=1e-12, err_msg=k)


# ------------------------------------------------------------------- the data a run trains on

SMALL = ["train", "--arch", "mlp-4", "--limit", "64", "--eval-limit", "16", "--eval-iters", "2", "--epochs", "1",
         "--warmup", "0", "--ramp", "1", "--batch-size", "32", "--quiet"]


def _invoke(args):
    from click.testing import CliRunner

    from cli import main
    return CliRunner().invoke(main, args)


def _one_line_error(result, *needles):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_a_spec_without_a_split_trains_on_the_training_split(tmp_path):
    """`train --data NAME` read the *test* split: it trained (and chose best.npz) on the
    test images, and ran with only the test files present."""
    import shutil

    from lipref.data import EMBEDDED_DIR
    only_test = tmp_path / "only-test"
    only_test.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(EMBEDDED_DIR / name, only_test / name)
    result = _invoke(SMALL + ["--data", "embedded", "--data-dir", str(only_test), "--out", str(tmp_path / "a")])
    _one_line_error(result, "train-images-idx3-ubyte.gz", str(only_test))
    assert not (tmp_path / "a").exists()
    result = _invoke(SMALL + ["--data", "embedded", "--eval-data", "embedded", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b" / "history.json").read_text())["data"]
    assert (data["train"]["spec"], data["train"]["resolved"]) == ("embedded", "embedded:train")
    assert (data["eval"]["spec"], data["eval"]["resolved"]) == ("embedded", "embedded:test")


def _npz(path, images, labels):
    numpy.savez(path, images=images, labels=labels)
    return str(path)


def test_evaluation_data_that_overlap_the_training_data_are_refused(tmp_path):
    """best.npz is chosen on the evaluation set; the same split or file as the training data
    (or only training images) was accepted silently."""
    from lipref.data import load_dataset
    train = load_dataset("embedded:train", limit=64)
    held_out = load_dataset("embedded:test", limit=8)
    data = _npz(tmp_path / "train.npz", train.images, train.labels)
    copy = _npz(tmp_path / "copy.npz", train.images, train.labels)
    subset = _npz(tmp_path / "subset.npz", train.images[:16].astype(numpy.float64), train.labels[:16])
    mixed = _npz(tmp_path / "mixed.npz", numpy.concatenate([train.images[:8], held_out.images]),
                 numpy.concatenate([train.labels[:8], held_out.labels]))
    cases = [(["--data", "embedded:train", "--eval-data", "embedded:train"], "the same dataset and split"),
             (["--data", "embedded:test"], "the same dataset and split, embedded:test"),
             (["--data", "embedded", "--eval-data", "embedded:train"], "the same dataset and split"),
             (["--data", data, "--eval-data", data], "the same file"),
             (["--data", data, "--eval-data", copy], "files with the same bytes"),
             (["--data", "embedded", "--eval-data", subset], "every one of the 16 evaluation images"),
             (["--data", data], "give --eval-data")]
    for i, (args, reason) in enumerate(cases):
        result = _invoke(SMALL + args + ["--out", str(tmp_path / f"run{i}")])
        _one_line_error(result, reason)
        assert ("--allow-overlap" in result.stderr) is (reason != "give --eval-data"), result.stderr
        assert not (tmp_path / f"run{i}").exists()
    result = _invoke(SMALL + ["--data", data, "--eval-data", copy, "--out", str(tmp_path / "refused")])
    assert data in result.stderr and copy in result.stderr  # the one line names both specs
    allowed = _invoke(SMALL + ["--eval-data", "embedded:train", "--allow-overlap", "--out", str(tmp_path / "ok")])
    assert allowed.exit_code == 0 and "warning: the evaluation data overlap" in allowed.stderr, allowed.output
    record = json.loads((tmp_path / "ok" / "history.json").read_text())["data"]
    assert record["allow_overlap"] is True and record["overlap"].startswith("the same dataset and split")
    partly = _invoke(SMALL + ["--eval-data", mixed, "--out", str(tmp_path / "partly")])
    assert partly.exit_code == 0 and "8 of the 16 evaluation images are also training images" in partly.stderr
    assert json.loads((tmp_path / "partly" / "history.json").read_text())["data"]["shared_examples"] == 8


def test_the_library_refuses_overlapping_data_too(tmp_path):
    from lipref.data import DataError, load_dataset
    from lipref.training import TrainConfig, train
    data = load_dataset("embedded:train", limit=32)
    with pytest.raises(DataError, match="overlap"):
        train(TrainConfig(arch="mlp-4", epochs=1, eval_limit=8), data, data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_history_and_every_model_file_record_the_data_and_provenance(tmp_path):
    """history.json held only config and history; the model files only the dataset's name."""
    from lipref import __version__
    from lipref.data import load_dataset
    from lipref.data.record import examples_digest
    from lipref.models import read_model_file
    out = tmp_path / "run"
    done = _cli(SMALL + ["--data", "embedded", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "history.json").read_text())
    train, held_out = load_dataset("embedded:train", limit=64), load_dataset("embedded:test", limit=16)
    assert doc["data"]["train"]["examples"] == 64 and doc["data"]["eval"]["examples"] == 16
    assert doc["data"]["train"]["sha256"] == examples_digest(train)
    assert doc["data"]["eval"]["sha256"] == examples_digest(held_out)
    assert doc["data"]["train"]["source"] == str(Path(train.source).resolve())
    assert doc["data"]["overlap"] is None and doc["data"]["allow_overlap"] is False
    assert doc["provenance"]["lipref_version"] == __version__
    assert doc["provenance"]["command_line"].startswith("cli.py train --arch mlp-4")
    assert "--data embedded --out" in doc["provenance"]["command_line"]
    assert {"extras", "kernels", "python", "numpy"} <= set(doc["provenance"])
    for name in ("checkpoint.npz", "best.npz", "model.npz"):
        meta = read_model_file(out / name)[0]["metadata"]
        assert meta["data"] == doc["data"] and meta["provenance"] == doc["provenance"], name


def test_a_resume_on_other_data_is_refused(tmp_path):
    out = tmp_path / "run"
    first = _invoke(SMALL + ["--out", str(out)])
    assert first.exit_code == 0, first.output
    before = (out / "checkpoint.npz").read_bytes()
    args = [a if a != "64" else "48" for a in SMALL]  # --limit 48
    _one_line_error(_invoke(args + ["--out", str(out), "--resume"]), "training data", "48 examples",
                    "64 examples")
    from lipref.data import load_dataset
    other = load_dataset("embedded:test", limit=32)
    later = _npz(tmp_path / "later.npz", other.images[16:], other.labels[16:])
    _one_line_error(_invoke(SMALL + ["--eval-data", later, "--out", str(out), "--resume"]),
                    "evaluation data", later, "the run's embedded:test")
    assert (out / "checkpoint.npz").read_bytes() == before
    # the same examples, named otherwise (one more epoch, so that the session trains and records)
    again = _invoke(SMALL + ["--data", "embedded", "--out", str(out), "--resume", "--epochs", "2"])
    assert again.exit_code == 0, again.output
    doc = json.loads((out / "history.json").read_text())
    assert len(doc["earlier_sessions"]) == 1 and doc["data"]["train"]["spec"] == "embedded"
