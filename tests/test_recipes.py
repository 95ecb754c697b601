"""`lipref train --recipe`: every preset is a valid configuration whose per-layer inits fit its
architecture; explicit options win over the preset; the options a recipe adds (the robust
loss alone, augmentation, the first epoch that may become best.npz) do what they say."""
import json
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from lipref.backend import get_backend
from lipref.data import DATASETS, load_dataset
from lipref.errors import InputError
from lipref.layers import ClampedMaxMin, ClippedReLU
from lipref.models import build_model, layer_inits, set_layer_inits
from lipref.recipes import RECIPES, apply_recipe, recipe
from lipref.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
XP = get_backend("numpy")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_is_a_valid_configuration_for_its_model(name):
    values = recipe(name)
    dataset = DATASETS[values["data_spec"].split(":")[0]]
    config = TrainConfig(**{k: v for k, v in values.items() if k != "data_spec"})
    model = build_model(config.arch, dataset.input_shape, dataset.n_classes, XP, XP.float64,
                        numpy.random.default_rng(0), config.activation, config.threshold_init)
    set_layer_inits(model, layer_inits(config.layer_inits), XP, XP.float64)
    assert config.first_best_epoch == config.warmup + config.ramp
    assert config.decay_start == config.epochs // 2 + 25  # the official lr_exp's start
    acts = [layer for layer in model.layers if isinstance(layer, (ClippedReLU, ClampedMaxMin))]
    assert len(acts) == sum(layer.is_affine for layer in model.layers) - 1  # every hidden layer has thresholds
    if name == "cifar10-6c2f-maxmin":
        clamps = [(float(a.params["max"].value.max()), float(a.params["min"].value.min())) for a in acts]
        assert clamps == [(0.1, -0.1), (0.1, -0.15), (0.15, -0.15), (0.15, -0.15), (0.2, -0.2), (0.3, -0.3),
                          (1.2, -1.2)]
        assert all(float(a.params["max"].value.min()) == c[0] for a, c in zip(acts, clamps))


def test_the_official_mnist_recipe():
    r = recipe("mnist-4c3f")
    assert (r["loss"], r["kappa_start"], r["kappa_end"], r["n_iters"], r["eps_train"], r["eps_eval"]) == (
        "gloro-bcp", 0.0, 0.0, 5, 1.75, 1.58)
    assert (r["batch_size"], r["epochs"], r["ramp"], r["warmup"], r["crop_padding"], r["flip"]) == (
        256, 300, 150, 0, 0, False)
    assert recipe("cifar10-6c2f")["threshold_init"] == 2.0 and recipe("cifar10-6c2f")["crop_padding"] == 4
    options, used, scaled = apply_recipe("mnist-4c3f", {"arch": "mlp-8", "epochs": 2}, given={"arch"})
    assert options["arch"] == "mlp-8" and options["epochs"] == 300 and "arch" not in used and scaled == {}
    with pytest.raises(InputError, match="unknown recipe"):
        recipe("mnist-9c9f")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_recipe_cut_short_scales_its_schedule_with_the_epochs(name):
    """`--epochs 2` on a 300-epoch recipe kept its 150-epoch ramp: eps reached 0.012 of 1.75. Now
    warm-up, ramp and decay start are the recipe's fractions of the run, so eps reaches its end
    value and the decay starts where it would; options given explicitly are kept."""
    from lipref.schedules import eps_at, lr_at
    values = recipe(name)
    for epochs in (2, 7, values["epochs"] * 2):
        options, _, scaled = apply_recipe(name, {"epochs": epochs}, given={"epochs"})
        factor = epochs / values["epochs"]
        assert options["ramp"] == values["ramp"] * factor and options["warmup"] == values["warmup"] * factor
        assert options["decay_start"] == values["decay_start"] * factor
        assert scaled["ramp"] == (values["ramp"], options["ramp"])
        config = TrainConfig(**{k: v for k, v in options.items() if k != "data_spec"})
        schedule = config.schedule()
        end = config.warmup + config.ramp
        assert eps_at(schedule, end) == values["eps_train"] and end <= epochs
        assert lr_at(schedule, options["decay_start"]) == values["lr"]
        assert lr_at(schedule, epochs) == pytest.approx(values["lr_end"], rel=1e-12)
        assert config.first_best_epoch == end
    options, _, scaled = apply_recipe(name, {"epochs": 2, "ramp": 1.5}, given={"epochs", "ramp"})
    assert options["ramp"] == 1.5 and "ramp" not in scaled  # explicit: kept
    assert apply_recipe(name, {"epochs": values["epochs"]}, given={"epochs"})[2] == {}


@pytest.mark.parametrize("text,problem", [("1,x", "not a number"), ("1:2:3", "HI:LO"), ("nan", "finite"),
                                          ("1,2", "2 values for 1"), ("0.5:-0.5", "does not fit")])
def test_bad_layer_inits_are_one_line_errors(text, problem):
    model = build_model("mlp-4", (1, 2, 2), 3, XP, XP.float32, numpy.random.default_rng(0), "clipped_relu")
    with pytest.raises(InputError, match=problem):
        set_layer_inits(model, layer_inits(text), XP, XP.float32)


def _cli(args):
    return subprocess.run([sys.executable, str(ROOT / "cli.py")] + args, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_recipe_on_the_command_line_prints_its_options_and_yields_to_explicit_ones(tmp_path):
    out = tmp_path / "run"
    done = _cli(["train", "--recipe", "mnist-4c3f", "--data", "embedded:train", "--limit", "64", "--epochs", "1",
                 "--arch", "mlp-16", "--batch-size", "32", "--eval-limit", "20", "--eval-iters", "3",
                 "--out", str(out), "--quiet"])
    assert done.returncode == 0, done.stderr
    assert "recipe mnist-4c3f sets:" in done.stderr and "--loss gloro-bcp" in done.stderr
    assert "--eps 1.75" in done.stderr and "--no-flip" in done.stderr
    assert "given explicitly, kept: --arch, --batch-size, --data, --epochs" in done.stderr
    assert "(scaled from the recipe's 300 epochs to 1: --ramp 150 -> 0.5, --decay-start 175 -> 0.583333)" in \
        done.stderr
    doc = json.loads((out / "history.json").read_text())
    config = doc["config"]
    assert (config["arch"], config["epochs"], config["batch_size"]) == ("mlp-16", 1, 32)
    assert (config["loss"], config["kappa_start"], config["n_iters"], config["eps_eval"]) == (
        "gloro-bcp", 0.0, 5, 1.58)
    assert (config["warmup"], config["ramp"]) == (0.0, 0.5)
    assert doc["history"][-1]["eps_train"] == 1.75  # the ramp's end value, reached in the one epoch
    bad = _cli(["train", "--recipe", "cifar10-6c2f-maxmin", "--data", "embedded:train", "--limit", "8",
                "--epochs", "1", "--arch", "mlp-16", "--out", str(tmp_path / "bad")])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("Error: layer inits: 7 values for 1 activation layers")
    assert not (tmp_path / "bad").exists()


def _run(tmp_path, name, **options):
    data, held_out = load_dataset("embedded:train", limit=96), load_dataset("embedded:test", limit=20)
    settings = dict(arch="mlp-16", activation="clipped_relu", epochs=3, batch_size=32, eps_train=0.3, warmup=1,
                    ramp=1, eval_limit=20, eval_iters=3)
    settings.update(options)
    history = train(TrainConfig(**settings), data, held_out, tmp_path / name)
    best = json.loads((tmp_path / name / "history.json").read_text())["best"]
    with numpy.load(tmp_path / name / "model.npz") as npz:
        weights = {k: npz[k] for k in npz.files if k != "__lipref__"}
    return history, best, weights


def test_best_checkpoint_is_chosen_only_after_the_ramp_unless_told(tmp_path):
    history, best, _ = _run(tmp_path, "ramp")
    assert best["epoch"] >= 2  # warm-up 1 + ramp 1: epoch 1's model is never best.npz
    assert best["certified_accuracy_local"] == max(h["certified_accuracy_local"] for h in history[1:])
    history, best, _ = _run(tmp_path, "any", best_from=0)
    assert best["certified_accuracy_local"] == max(h["certified_accuracy_local"] for h in history)


def test_augmented_training_replays_from_its_seed_and_differs_from_plain(tmp_path):
    _, _, plain = _run(tmp_path, "plain", epochs=2)
    _, _, one = _run(tmp_path, "aug1", epochs=2, crop_padding=2, flip=True)
    _, _, two = _run(tmp_path, "aug2", epochs=2, crop_padding=2, flip=True)
    for k in one:
        numpy.testing.assert_array_equal(one[k], two[k], err_msg=k)
    assert any(not numpy.array_equal(one[k], plain[k]) for k in one)


def test_a_negative_training_seed_is_a_one_line_error(tmp_path):
    done = _cli(["train", "--seed", "-1", "--limit", "8", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the seed must be an integer >= 0, got -1" in done.stderr
    with pytest.raises(InputError, match="seed"):
        TrainConfig(seed=-3)
