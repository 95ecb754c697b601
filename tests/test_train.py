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
    assert ha == hb


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
    from lipref.train import TrainConfig, train
    data = load_dataset("embedded:train", limit=256)
    losses = []
    config = TrainConfig(arch="mlp-32", activation="clipped_relu", epochs=3, batch_size=32, eps_train=0.3,
                         warmup=0, ramp=0, lr=3e-3, lr_end=3e-3, sparsity=0.05, eval_limit=50, eval_iters=5)
    train(config, data, data, tmp_path, progress=lambda e: losses.append(e["loss"]) if e["event"] == "step" else 0)
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
    from lipref.train import TrainConfig, train
    data = load_dataset("embedded:train", limit=64)
    for bound in ("global", "local"):
        config = TrainConfig(arch="2c2f", epochs=1, batch_size=32, eps_train=0.3, warmup=0, ramp=0, loss=loss,
                             bound=bound, eval_limit=20, eval_iters=3)
        history = train(config, data, data, tmp_path / bound)
        assert len(history) == 1 and numpy.isfinite(history[0]["clean_accuracy"])
    # the global-bound run keeps no per-sample vectors; the local one keeps those of its last epoch
    assert not (tmp_path / "global" / "vectors").exists()
    assert [p.name for p in (tmp_path / "local" / "vectors").iterdir()] == ["epoch-1"]


def _small_run(tmp_path, name, threads, dtype="float32", epochs=2, sample_block=None):
    from lipref.data import load_dataset
    from lipref.train import TrainConfig, train
    data = load_dataset("embedded:train", limit=128)
    config = TrainConfig(arch="2c2f", activation="clipped_relu", epochs=epochs, batch_size=64, eps_train=0.3,
                         warmup=0.5, ramp=0.5, sparsity=0.05, eval_limit=20, eval_iters=3, dtype=dtype)
    history = train(config, data, data, tmp_path / name, threads=threads, sample_block=sample_block)
    return _weights(tmp_path / name / "model.npz"), history


def test_training_does_not_depend_on_threads(tmp_path):
    """A step runs in blocks of samples, in threads; the blocks are fixed by the batch size,
    so one thread and two give the same weights, bit for bit (warm-up and robust steps)."""
    one, history_one = _small_run(tmp_path, "one", threads=1)
    two, history_two = _small_run(tmp_path, "two", threads=2)
    assert history_one == history_two
    for k in one:
        numpy.testing.assert_array_equal(one[k], two[k], err_msg=k)


def test_blocked_training_step_equals_the_whole_batch(tmp_path):
    """Summing the blocks' weighted gradients is the batch's gradient: in float64, a run whose
    batches are split in blocks of 8 ends with the weights of a run that never splits them."""
    blocked, _ = _small_run(tmp_path, "blocked", threads=2, dtype="float64", epochs=1, sample_block=8)
    whole, _ = _small_run(tmp_path, "whole", threads=2, dtype="float64", epochs=1, sample_block=10 ** 6)
    for k in whole:
        numpy.testing.assert_allclose(blocked[k], whole[k], rtol=1e-9, atol=1e-12, err_msg=k)
