"""The soundness review's cases at the command line: each certified or answered wrongly, or
failed with a traceback, before the fixes."""
import json

import array_api_compat.numpy as xp
import numpy
import pytest
from click.testing import CliRunner

from cli import main
from lipref.layers import Flatten, Linear, ReLU, Sequential
from lipref.models import save_model


def run(args, catch=False):
    return CliRunner().invoke(main, args, catch_exceptions=catch)


def _save(path, layers, values):
    model = Sequential(layers).init_params(xp, xp.float64, numpy.random.default_rng(0))
    model.set_parameters({k: numpy.asarray(v, dtype=numpy.float64) for k, v in values.items()})
    save_model(path, model)
    return str(path)


def _data(path, images, labels):
    numpy.savez(path, images=numpy.asarray(images), labels=numpy.asarray(labels))
    return str(path)


@pytest.fixture
def breakpoint_net(tmp_path):
    """Flatten -> Linear(2, 2) (I, bias (1, -100)) -> ReLU -> Linear(2, 2) ([[3, 1], [0, 1]],
    bias (-3.5, 0)) at x = (0.5, 0.5), label 0: the margin is 3 relu(x0 + 1) - 3.5, so the
    true certified radius is 1/3. The exact zero in w_1 - w_0 made the ball-and-box support
    0 and both modes certified it at radii up to 0.95."""
    model = _save(tmp_path / "m.npz", [Flatten((1, 1, 2)), Linear(2, 2), ReLU((2,)), Linear(2, 2)],
                  {"1.weight": numpy.eye(2), "1.bias": [1.0, -100.0], "3.weight": [[3.0, 1.0], [0.0, 1.0]],
                   "3.bias": [-3.5, 0.0]})
    return model, _data(tmp_path / "d.npz", numpy.full((1, 1, 1, 2), 0.5), [0])


@pytest.mark.parametrize("mode", ["fast", "sound"])
def test_the_breakpoint_network_is_certified_only_below_one_third(breakpoint_net, mode):
    model, data = breakpoint_net
    for eps, expected in [(0.3, True), (0.34, False), (0.36, False), (0.5, False), (0.95, False)]:
        result = run(["certify", model, "--data", data, "--eps", str(eps), "--mode", mode, "--pgd-steps", "0",
                      "--iters", "200", "--json", "--quiet", "--seed", "1"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert (doc["certified_accuracy_local"] == 1.0) is expected, (eps, doc)
        assert (doc["certified_accuracy_global"] == 1.0) <= expected, (eps, doc)


def test_an_overflowing_eps_is_an_error(tmp_path, breakpoint_net):
    model, data = breakpoint_net
    for eps in ("3e38", "1.7e308"):
        result = run(["bound", model, "--data", data, "--eps", eps, "--iters", "5", "--json"])
        assert result.exit_code == 2 and "overflow" in result.stderr, (eps, result.output)
    result = run(["certify", model, "--data", data, "--eps", "inf", "--quiet"])
    assert result.exit_code == 2 and "finite" in result.stderr


def test_float64_data_are_certified_as_given(tmp_path):
    """A 1-pixel float64 image x = 2^24 + 1 with exact logits (0, 0.5): prediction 1, label 0.
    Read as float32 (x = 2^24) it was reported clean 1.0 and certified 1.0 at eps 0.25."""
    x = 2.0 ** 24 + 1
    model = _save(tmp_path / "m.npz", [Flatten((1, 1, 1)), Linear(1, 2)],
                  {"1.weight": [[0.0], [1.0]], "1.bias": [0.0, -(2.0 ** 24 + 0.5)]})
    data = _data(tmp_path / "d.npz", numpy.full((1, 1, 1, 1), x), [0])
    for mode in ("fast", "sound"):
        result = run(["certify", model, "--data", data, "--eps", "0.25", "--mode", mode, "--pgd-steps", "0",
                      "--json", "--quiet"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["clean_accuracy"] == 0.0 and doc["certified_accuracy_local"] == 0.0, (mode, doc)
        assert doc["dtype"] == "float64"
    result = run(["certify", model, "--data", data, "--eps", "0.25", "--dtype", "float32", "--quiet"])
    assert result.exit_code == 2 and "does not hold" in result.stderr, result.output


def test_pgd_stays_in_the_ball_for_data_outside_zero_one(tmp_path):
    """x = 5, logit margin x - 3, eps 0.5: a true certificate, which PGD (clipping to [0, 1]
    and so leaving the ball) reported as a SOUNDNESS ERROR with exit code 3."""
    model = _save(tmp_path / "m.npz", [Flatten((1, 1, 1)), Linear(1, 2)],
                  {"1.weight": [[0.0], [1.0]], "1.bias": [0.0, -3.0]})
    data = _data(tmp_path / "d.npz", numpy.full((1, 1, 1, 1), 5.0), [1])
    result = run(["certify", model, "--data", data, "--eps", "0.5", "--pgd-steps", "20", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["certified_accuracy_local"] == 1.0 and doc["soundness_violations"] == [] and doc["domain"] is None
    result = run(["certify", model, "--data", data, "--eps", "0.5", "--domain", "0,1", "--quiet"])
    assert result.exit_code == 2 and "outside the domain" in result.stderr, result.output
    result = run(["attack", model, "--data", data, "--eps", "0.5", "--steps", "10", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["pgd_accuracy"] == 1.0, result.output


def test_sound_mode_seeds_come_from_os_entropy_and_are_recorded(breakpoint_net):
    model, data = breakpoint_net
    seeds = []
    for _ in range(2):
        result = run(["certify", model, "--data", data, "--eps", "0.3", "--mode", "sound", "--pgd-steps", "0",
                      "--json", "--quiet"])
        assert result.exit_code == 0, result.output
        seeds.append(json.loads(result.stdout)["seed"])
    assert seeds[0] != seeds[1] and all(isinstance(s, int) for s in seeds)
    result = run(["certify", model, "--data", data, "--eps", "0.3", "--mode", "sound", "--pgd-steps", "0",
                  "--json", "--quiet", "--seed", str(seeds[0])])
    assert json.loads(result.stdout)["seed"] == seeds[0]
    result = run(["certify", model, "--data", data, "--eps", "0.3", "--pgd-steps", "0", "--json", "--quiet"])
    assert json.loads(result.stdout)["seed"] == 0  # fast mode: reproducible by default


def test_a_bad_step_size_is_an_error(breakpoint_net):
    model, data = breakpoint_net
    for step in ("nan", "inf", "0", "-1"):
        result = run(["attack", model, "--data", data, "--eps", "0.5", "--step-size", step])
        assert result.exit_code == 2 and "step-size" in result.stderr, (step, result.output)


def test_a_bug_inside_the_engine_keeps_its_traceback(breakpoint_net, monkeypatch):
    """Only lipref's own error types become one-line errors: the CLI used to catch every
    ValueError, so a broadcast bug deep inside looked like a user's mistake."""
    import importlib

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")
    monkeypatch.setattr(importlib.import_module("lipref.certification"), "certify", broken)  # the module, not lipref.certify()
    model, data = breakpoint_net
    result = run(["certify", model, "--data", data, "--eps", "0.3", "--quiet"], catch=True)
    assert isinstance(result.exception, ValueError) and result.exit_code == 1


def test_info_shows_free_form_metadata_without_failing(tmp_path):
    """`info` read metadata["best"]["epoch"] unchecked: {"best": 1} gave a TypeError."""
    model = Sequential([Flatten((1, 1, 1)), Linear(1, 2)]).init_params(xp, xp.float32, numpy.random.default_rng(0))
    model.metadata = {"best": 1}
    save_model(tmp_path / "m.npz", model)
    result = run(["info", str(tmp_path / "m.npz")])
    assert result.exit_code == 0 and "best: 1" in result.output, result.output


def test_training_on_a_huge_label_is_an_error(tmp_path):
    """A label of 10^9 in a data file asked for a last layer of 10^9 rows (memory exhaustion)."""
    images = numpy.random.default_rng(0).uniform(size=(4, 1, 4, 4)).astype(numpy.float32)
    data = _data(tmp_path / "d.npz", images, [0, 1, 2, 10 ** 9])
    result = run(["train", "--out", str(tmp_path / "run"), "--data", data, "--eval-data", data, "--arch", "mlp-4",
                  "--epochs", "1", "--quiet"])
    assert result.exit_code == 2 and "at most 100000 classes" in result.stderr, result.output
