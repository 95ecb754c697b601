"""A run stopped and continued: Ctrl-C writes a checkpoint of the steps applied (mid-epoch),
prints one line with the command that resumes, exits 130, and the resumed run equals an
uninterrupted one bit for bit (weights, history, best.npz); a second Ctrl-C abandons the
step or evaluation under way with the same guarantee; `--resume` says where it restarts and
takes the run's own options; `--resume --epochs N` extends a run (equal to a run planned
for N epochs where the schedule had not started its decay), and fewer epochs or other
settings are refused in one line."""
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--data", "embedded:train", "--limit", "192", "--eval-limit", "40", "--eval-iters", "4",
         "--arch", "mlp-24", "--activation", "clipped_relu", "--sparsity", "0.05", "--batch-size", "16",
         "--warmup", "0.5", "--ramp", "1.5", "--eps", "0.3", "--iters", "2", "--seed", "3"]
SECONDS = ("train_seconds", "eval_seconds")


def _cli(args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "cli.py")] + args, capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kw)


def _invoke(args):
    from click.testing import CliRunner

    from cli import main
    return CliRunner().invoke(main, args)


def _weights(path):
    with numpy.load(path) as npz:
        return {k: npz[k] for k in npz.files if k != "__lipref__"}


def _timeless(history):
    """The history without its seconds (the only numbers that differ between equal runs)."""
    return [{k: v for k, v in record.items() if k not in SECONDS} for record in history]


def assert_same_run(a, b, best=True):
    """Run folders a and b hold the same model.npz weights, history and (best) best.npz, bit for bit."""
    wa, wb = _weights(a / "model.npz"), _weights(b / "model.npz")
    assert sorted(wa) == sorted(wb)
    for k in wa:
        numpy.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    da, db = (json.loads((x / "history.json").read_text()) for x in (a, b))
    assert _timeless(da["history"]) == _timeless(db["history"])
    assert da["config"] == db["config"]
    if best:
        assert (a / "best.npz").exists() == (b / "best.npz").exists()
        assert _timeless([da["best"] or {}]) == _timeless([db["best"] or {}])
        if (a / "best.npz").exists():
            ba, bb = _weights(a / "best.npz"), _weights(b / "best.npz")
            assert all(numpy.array_equal(ba[k], bb[k]) for k in ba)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    done = _cli(TRAIN + ["--epochs", "3", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out


def test_ctrl_c_checkpoints_prints_the_command_and_the_resumed_run_is_exact(tmp_path, uninterrupted):
    """Before: Ctrl-C ended in a KeyboardInterrupt traceback, lost the epoch under way and said
    nothing about resuming."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py")] + TRAIN + ["--epochs", "3", "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stderr:  # a line per tenth of an epoch (not a terminal)
        if line.startswith("epoch 2/3 step 6/12"):
            assert (out / "checkpoint.npz").exists()  # epoch 1's
            proc.send_signal(signal.SIGINT)
            break
    after = proc.stderr.read().splitlines()
    proc.wait(timeout=120)
    said = [line for line in after if not line.startswith("epoch 2/3 step")]  # a step's line may still come
    assert proc.returncode == 130 and len(said) == 1, after
    assert said[0].startswith(f"interrupted: {out / 'checkpoint.npz'} holds the run at epoch 2 of 3 after step ")
    assert "Traceback" not in "".join(after) and not (out / "model.npz").exists()
    command = said[0].split("; resume with: ")[1]
    argv = shlex.split(command)
    assert argv[:2] == [sys.executable, str(ROOT / "cli.py")] and argv[-1] == "--resume"
    resumed = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    step = int(said[0].split(" after step ")[1].split()[0])
    assert f"resuming at epoch 2 of 3, step {step + 1} of 12, from {out / 'checkpoint.npz'} " \
           f"(after epoch 1 and {step} steps)" in resumed.stderr
    assert "epoch 1/3" not in resumed.stderr
    assert_same_run(uninterrupted, out)
    # the short form resumes too: the options not given are the run's (here: nothing left to do)
    again = _cli(["train", "--out", str(out), "--resume"])
    assert again.returncode == 0 and "the run has finished its 3 epochs" in again.stderr, again.stderr


def _press_twice_at(monkeypatch, stop, name, calls):
    """Replace lipref.training.<name> so that its call number `calls` (from 1) presses `stop` twice
    while it computes: the second press abandons the call, as a second Ctrl-C does (the CLI's
    SIGINT handler calls press())."""
    import lipref.training as T
    original, count = getattr(T, name), [0]

    def pressed(*args, **kwargs):
        count[0] += 1
        if count[0] == calls:
            stop.press()
            stop.press()  # raises KeyboardInterrupt here, mid-computation
        return original(*args, **kwargs)
    monkeypatch.setattr(T, name, pressed)


@pytest.mark.parametrize("where,calls,position", [("blocked_gradients", 5, (0, 4)), ("blocked_gradients", 17, (1, 4)),
                                                  ("certify", 2, (1, 12))])
def test_a_second_ctrl_c_abandons_the_step_or_evaluation_and_resume_is_exact(tmp_path, monkeypatch, uninterrupted,
                                                                             where, calls, position):
    """Step 5 abandoned mid-gradient, in epoch 1 (whose steps draw fresh start vectors) or epoch 2:
    the checkpoint holds its 4 steps before; epoch 2's evaluation abandoned: it holds all 12
    steps, not evaluated."""
    from lipref.data import load_dataset
    from lipref.training import StopRequest, TrainConfig, TrainingInterrupted, train
    train_set, eval_set = load_dataset("embedded:train", limit=192), load_dataset("embedded:test", limit=40)
    config = TrainConfig(arch="mlp-24", activation="clipped_relu", sparsity=0.05, batch_size=16, warmup=0.5,
                         ramp=1.5, eps_train=0.3, n_iters=2, eval_iters=4, eval_limit=40, seed=3, epochs=3)
    out, stop = tmp_path / "run", StopRequest()
    with monkeypatch.context() as patch:
        _press_twice_at(patch, stop, where, calls)
        with pytest.raises(TrainingInterrupted) as stopped:
            train(config, train_set, eval_set, out, stop=stop, data_specs=("embedded:train", None))
    assert (stopped.value.epoch, stopped.value.step, stopped.value.steps) == position + (12,)
    assert stopped.value.checkpoint == out / "checkpoint.npz" and not (out / "model.npz").exists()
    train(config, train_set, eval_set, out, resume=True, data_specs=("embedded:train", None))
    assert_same_run(uninterrupted, out)


@pytest.mark.parametrize("where,calls", [("blocked_gradients", 3), ("blocked_gradients", 7), ("certify", 1)])
def test_the_global_bound_with_augmentation_resumes_exactly_too(tmp_path, monkeypatch, where, calls):
    """The global power-iteration vectors and the augmentation's draws continue where the
    checkpoint left them: stopped in the warm-up (step 3 of 6), in the ramp (the first step of
    epoch 2), or in epoch 1's evaluation."""
    from lipref.data import load_dataset
    from lipref.training import StopRequest, TrainConfig, TrainingInterrupted, train
    train_set, eval_set = load_dataset("embedded:train", limit=96), load_dataset("embedded:test", limit=20)
    config = TrainConfig(arch="2c2f", bound="global", loss="bcp", batch_size=16, warmup=0.5, ramp=1, epochs=2,
                         crop_padding=2, flip=True, eps_train=0.3, eval_iters=3, eval_limit=20, seed=11)
    train(config, train_set, eval_set, tmp_path / "full")
    stop = StopRequest()
    with monkeypatch.context() as patch:
        _press_twice_at(patch, stop, where, calls)
        with pytest.raises(TrainingInterrupted):
            train(config, train_set, eval_set, tmp_path / "run", stop=stop)
    train(config, train_set, eval_set, tmp_path / "run", resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "run")


def test_a_ctrl_c_before_the_first_step_writes_nothing(tmp_path):
    from lipref.data import load_dataset
    from lipref.training import StopRequest, TrainConfig, TrainingInterrupted, train
    stop = StopRequest()
    stop.press()
    with pytest.raises(TrainingInterrupted) as stopped:
        train(TrainConfig(arch="mlp-4", epochs=1, eval_limit=8), load_dataset("embedded:train", limit=32),
              load_dataset("embedded:test", limit=8), tmp_path / "run", stop=stop)
    assert stopped.value.checkpoint is None and not (tmp_path / "run").exists()


SHORT = ["train", "--data", "embedded:train", "--limit", "96", "--eval-limit", "20", "--eval-iters", "3",
         "--arch", "mlp-16", "--activation", "clipped_relu", "--batch-size", "32", "--eps", "0.3", "--seed", "5",
         "--quiet"]


def test_an_extension_before_the_decay_equals_the_run_planned_longer(tmp_path):
    """A 2-epoch trial of a schedule whose ramp ends at epoch 3, extended to 4 epochs, is the
    4-epoch run bit for bit; best.npz, chosen at epoch 2 when that was the last epoch, is
    removed (the 4-epoch run chooses from epoch 3 on). Before: refused ('different settings')."""
    schedule = ["--warmup", "0.5", "--ramp", "2.5", "--lr", "0.003", "--lr-end", "0.0003"]
    planned, trial = tmp_path / "planned", tmp_path / "trial"
    assert _invoke(SHORT + schedule + ["--epochs", "4", "--out", str(planned)]).exit_code == 0
    first = _invoke(SHORT + schedule + ["--epochs", "2", "--out", str(trial)])
    assert first.exit_code == 0 and (trial / "best.npz").exists(), first.output
    assert "warning: the ramp ends at epoch 3 (--warmup 0.5 --ramp 2.5), after the last epoch 2" in first.stderr
    more = _invoke(["train", "--out", str(trial), "--resume", "--epochs", "4", "--quiet"])
    assert more.exit_code == 0, more.output
    assert more.stderr.startswith(f"extending {trial} from 2 to 4 epochs: eps and kappa follow their ramp to "
                                  "epoch 3; the learning-rate decay from epoch 3 now ends at epoch 4; best.npz "
                                  "(epoch 2) is removed: the longer run chooses from epoch 3 on; resuming at epoch "
                                  "3 of 4"), more.stderr
    assert_same_run(planned, trial)
    doc = json.loads((trial / "history.json").read_text())
    assert doc["config"]["extensions"] == [] and len(doc["earlier_sessions"]) == 1


def test_an_extension_during_the_decay_keeps_the_past_epochs(tmp_path):
    out = tmp_path / "run"
    schedule = ["--warmup", "0", "--ramp", "1", "--lr", "0.003", "--lr-end", "0.0003"]
    assert _invoke(SHORT + schedule + ["--epochs", "2", "--out", str(out)]).exit_code == 0
    before = json.loads((out / "history.json").read_text())
    weights = _weights(out / "model.npz")
    more = _invoke(SHORT + schedule + ["--epochs", "4", "--out", str(out), "--resume"])  # the first command, longer
    assert more.exit_code == 0, more.output
    assert "the learning rate stays at --lr-end 0.0003, reached at epoch 2" in more.stderr
    doc = json.loads((out / "history.json").read_text())
    assert _timeless(doc["history"][:2]) == _timeless(before["history"]) and len(doc["history"]) == 4
    assert doc["config"]["extensions"] == [[2.0, 2]] and doc["config"]["epochs"] == 4
    assert [r["lr"] for r in doc["history"][2:]] == pytest.approx([3e-4, 3e-4], rel=1e-12)
    assert any(not numpy.array_equal(weights[k], v) for k, v in _weights(out / "model.npz").items())


def test_fewer_epochs_or_other_settings_on_resume_are_one_line_errors(tmp_path):
    out = tmp_path / "run"
    assert _invoke(SHORT + ["--epochs", "2", "--out", str(out)]).exit_code == 0
    before = (out / "checkpoint.npz").read_bytes()
    for args, needle in ((["--epochs", "1"], "--epochs 1: the run in"), (["--ramp", "3"], "different settings (ramp)"),
                         (["--epochs", "3", "--lr", "0.1"], "different settings (lr)")):
        result = _invoke(["train", "--out", str(out), "--resume"] + args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output
    assert (out / "checkpoint.npz").read_bytes() == before
