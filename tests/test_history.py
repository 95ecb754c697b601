"""A run's per-epoch history: history.json (strict JSON, with its config, data and provenance)
and history.csv written after every epoch with the epoch's mean losses (and the robust part),
accuracies, schedule values and seconds; `train --plot` and `lipref plot` draw it (an
interrupted run's too; a note, not a failure, without matplotlib)."""
import csv
import json
from pathlib import Path

import pytest

from lipref.errors import MissingExtraError

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ["train", "--data", "embedded:train", "--limit", "64", "--eval-limit", "16", "--eval-iters", "2",
         "--arch", "mlp-8", "--activation", "clipped_relu", "--batch-size", "24", "--warmup", "1", "--ramp", "1",
         "--epochs", "3", "--sparsity", "0.05", "--quiet"]


def _invoke(args):
    from click.testing import CliRunner

    from cli import main
    return CliRunner().invoke(main, args)


def _strict(text):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_every_epoch_writes_its_record_to_history_json_and_csv(tmp_path):
    """Before: history.json held only the accuracies, at the end of the run (none after an
    interrupted one), and there was no CSV."""
    from lipref.data import load_dataset
    from lipref.training import TrainConfig, train
    out, steps, seen = tmp_path / "run", [], []

    def progress(event):
        if event["event"] == "step":
            steps.append(event)
        elif event["event"] == "epoch_end":  # both files already hold this epoch
            doc = _strict((out / "history.json").read_text())
            rows = list(csv.DictReader((out / "history.csv").open()))
            seen.append((event["epoch"], len(doc["history"]), len(rows)))
    config = TrainConfig(arch="mlp-8", activation="clipped_relu", batch_size=24, warmup=1, ramp=1, epochs=3,
                         sparsity=0.05, eval_limit=16, eval_iters=2, eps_train=0.4, lr=2e-3, lr_end=1e-4)
    history = train(config, load_dataset("embedded:train", limit=64), load_dataset("embedded:test", limit=16), out,
                    progress=progress)
    assert seen == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    doc = _strict((out / "history.json").read_text())
    assert doc["history"] == history and {"config", "data", "provenance", "best"} <= set(doc)
    for epoch, record in enumerate(history, 1):
        mine = [s for s in steps if s["epoch"] == epoch - 1]
        sizes = [24, 24, 16]
        assert record["loss"] == pytest.approx(sum(s["loss"] * n for s, n in zip(mine, sizes)) / 64, rel=1e-12)
        last = mine[-1]
        assert (record["eps_train"], record["kappa"], record["lr"]) == (last["eps"], last["kappa"], last["lr"])
        assert record["train_seconds"] > 0 and record["eval_seconds"] > 0
        assert len(record["mean_constant_fraction"]) == 1 and 0 <= record["median_local_over_global"] <= 1
    warmup, ramp, after = history
    assert warmup["robust_loss"] is None and warmup["clean_loss"] == pytest.approx(
        warmup["loss"] - 0.05 * warmup["sparsity_loss"])  # warm-up: CE + sparsity, no robust term
    assert ramp["robust_loss"] is not None and after["kappa"] == 0.0 and after["eps_train"] == 0.4
    assert after["loss"] == pytest.approx(after["robust_loss"] + 0.05 * after["sparsity_loss"])
    assert after["lr"] == pytest.approx(2e-3 * (1e-4 / 2e-3) ** (2 / 3))  # the decay from 2, last step at 2 + 2/3
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert list(rows[0])[:4] == ["epoch", "loss", "clean_loss", "robust_loss"] and "constant_fraction_1" in rows[0]
    for row, record in zip(rows, history):
        for key, value in row.items():
            expected = (record["mean_constant_fraction"][0] if key == "constant_fraction_1" else record[key])
            assert value == ("" if expected is None else str(expected)), key  # floats exactly, via repr


def test_train_plot_and_lipref_plot_draw_a_run_finished_or_interrupted(tmp_path):
    out = tmp_path / "run"
    done = _invoke(SMALL + ["--out", str(out), "--plot", str(tmp_path / "progress.png")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "progress.png").read_bytes().startswith(PNG)
    drawn = _invoke(["plot", str(out)])
    assert drawn.exit_code == 0 and drawn.stdout.strip() == f"wrote {out / 'history.png'}", drawn.output
    assert (out / "history.png").read_bytes().startswith(PNG)
    # a run an older lipref interrupted: no history.json, its checkpoint holds the history
    (out / "history.json").unlink()
    (out / "model.npz").unlink()
    assert _invoke(["plot", str(out), "--out", str(tmp_path / "old.png")]).exit_code == 0
    assert (tmp_path / "old.png").read_bytes().startswith(PNG)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "history.json").write_text('{"history": [{"epoch": 1,')  # cut short
    for folder, needle in ((tmp_path, "no history.json or checkpoint.npz there"),
                           (tmp_path / "cut", "history.json: not a readable history (JSONDecodeError")):
        result = _invoke(["plot", str(folder)])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and needle in result.stderr, result.output


def test_without_matplotlib_train_notes_it_and_plot_is_a_one_line_error(tmp_path, monkeypatch):
    import lipref.plots

    def missing():
        raise MissingExtraError("plots need matplotlib: pip install 'lipref[plot]'")
    monkeypatch.setattr(lipref.plots, "pyplot", missing)
    done = _invoke(SMALL + ["--epochs", "2", "--out", str(tmp_path / "run"), "--plot", str(tmp_path / "p.png")])
    assert done.exit_code == 0, done.output
    assert done.stderr == "note: --plot: plots need matplotlib: pip install 'lipref[plot]'; training without the plot\n"
    assert not (tmp_path / "p.png").exists() and (tmp_path / "run" / "history.csv").exists()
    result = _invoke(["plot", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.stderr == "Error: plots need matplotlib: pip install 'lipref[plot]'\n"


def test_train_and_plot_help_render():
    for command in ("train", "plot"):
        result = _invoke([command, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.stdout, result.output
    text = " ".join(_invoke(["train", "--help"]).stdout.split())
    for claim in ("history.csv", "Ctrl-C", "--resume", "extends it", "scaled", "--plot"):
        assert claim in text, claim
