"""`lipref.audit.audit_summary` and `lipref certify --audit`: estimates' certificates against
sound ones on the same samples."""
import json

import numpy
import pytest
from click.testing import CliRunner

from cli import main
from lipref.audit import audit_summary
from lipref.certification import Certification


def _run(mode, certified, local, labels=(0, 1, 2, 3)):
    n = len(labels)
    labels = numpy.asarray(labels)
    ones = numpy.ones(n)
    return Certification(eps=0.1, mode=mode, n_iters=5, labels=labels, predictions=labels, correct=ones > 0,
                         global_bound=ones * 10, local_bound=numpy.asarray(local, dtype=float),
                         certified_global=ones < 0, certified_local=numpy.asarray(certified),
                         radius_global=ones, radius_local=ones, constant_fraction=numpy.zeros((n, 1)))


def test_counts_and_ratios_against_a_hand_computed_case():
    estimate = _run("fast", [True, True, True, False], [1.0, 2.0, 3.0, 4.0])
    sound = _run("sound", [True, False, True, True], [1.25, 2.0, 4.0, 8.0])
    out = audit_summary(estimate, sound)
    assert out["estimate_certified"] == 3 and out["sound_confirmed"] == 2 and out["sound_certified"] == 3
    assert out["fraction_confirmed"] == pytest.approx(2 / 3) and out["sound_only"] == 1
    assert out["median_estimate_over_sound"] == pytest.approx(numpy.median([0.8, 1.0, 0.75, 0.5]))
    assert out["min_estimate_over_sound"] == pytest.approx(0.5)


def test_pgd_verdicts_count_broken_estimate_and_sound_certificates_apart():
    estimate = _run("fast", [True, True, True, False], [1.0, 2.0, 3.0, 4.0])
    sound = _run("sound", [True, False, False, False], [1.25, 2.0, 4.0, 8.0])
    out = audit_summary(estimate, sound)
    assert out["estimate_certificates"] == 3 and out["estimate_broken_by_pgd"] is None  # no attack ran
    assert out["sound_broken_by_pgd"] is None and out["sound_broken_samples"] == []
    estimate.pgd_broken, estimate.violations = numpy.asarray([False, True, True, True]), [1, 2]
    sound.pgd_broken, sound.violations = numpy.asarray([False, True, True, True]), []
    out = audit_summary(estimate, sound)
    assert (out["estimate_broken_by_pgd"], out["estimate_broken_samples"]) == (2, [1, 2])
    assert (out["sound_broken_by_pgd"], out["sound_broken_samples"]) == (0, [])


def test_nothing_certified_by_the_estimates_gives_no_fraction():
    out = audit_summary(_run("fast", [False] * 4, [1.0] * 4), _run("sound", [False] * 4, [2.0] * 4))
    assert out["estimate_certified"] == 0 and out["fraction_confirmed"] is None


def test_runs_of_the_wrong_modes_or_samples_are_refused():
    fast, sound = _run("fast", [True] * 4, [1.0] * 4), _run("sound", [True] * 4, [1.0] * 4)
    with pytest.raises(ValueError, match="fast run with a sound run"):
        audit_summary(sound, fast)
    with pytest.raises(ValueError, match="same samples"):
        audit_summary(fast, _run("sound", [True] * 4, [1.0] * 4, labels=(0, 1, 2, 4)))


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    result = CliRunner().invoke(main, ["train", "--out", str(out), "--arch", "mlp-16", "--limit", "128",
                                       "--eval-limit", "16", "--epochs", "3", "--warmup", "0", "--ramp", "1",
                                       "--eps", "0.5", "--batch-size", "32", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    return str(out / "model.npz")


def test_certify_audit_matches_a_separate_sound_run(trained_model):
    """The audit's sound numbers are those of `certify --mode sound` on the same samples, and
    the estimates never exceed the sound bounds (power iteration estimates from below; sound
    mode's masks, from larger radii, remove no more neurons)."""
    common = [trained_model, "--data", "embedded:test", "--limit", "40", "--eps", "0.5", "--pgd-steps", "0",
              "--quiet", "--json"]
    audited = CliRunner().invoke(main, ["certify", *common, "--iters", "3", "--audit"], catch_exceptions=False)
    assert audited.exit_code == 0, audited.output
    audit = json.loads(audited.stdout)["audit"]
    sound = CliRunner().invoke(main, ["certify", *common, "--mode", "sound", "--seed", str(audit["seed"])],
                               catch_exceptions=False)
    doc = json.loads(sound.stdout)
    assert audit["sound_certified_accuracy_local"] == doc["certified_accuracy_local"]
    assert audit["sound_certified"] == round(doc["certified_accuracy_local"] * doc["n"])
    assert 0 <= audit["sound_confirmed"] <= audit["estimate_certified"] <= 40
    assert audit["min_estimate_over_sound"] <= audit["median_estimate_over_sound"] <= 1.0 + 1e-6


def test_audit_in_sound_mode_is_a_one_line_error(trained_model):
    result = CliRunner().invoke(main, ["certify", trained_model, "--limit", "4", "--eps", "0.1", "--mode", "sound",
                                       "--audit", "--quiet"])
    assert result.exit_code == 2 and "--audit" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------- PGD's verdicts in the audit

EPS = 0.1


@pytest.fixture(scope="module")
def estimate_breaker(tmp_path_factory):
    """Flatten -> Linear(784, 784) = diag(2, 1, ..., 1), bias 10 (every ReLU on over the ball)
    -> ReLU -> Linear(784, 2) with z_0 - z_1 = h_0 - 11 + 1.9 eps, at x = 0.5, label 0. The
    true worst case over the eps-ball lowers h_0 by 2 eps, so no certificate holds; one
    power-iteration step from a random start in 784 dimensions sees mostly the unit singular
    values and estimates the norm at about 1, so fast mode with --iters 1 certifies."""
    import array_api_compat.numpy as xp

    from lipref.layers import Flatten, Linear, ReLU, Sequential
    from lipref.models import save_model
    n = 784
    folder = tmp_path_factory.mktemp("breaker")
    model = Sequential([Flatten((1, 28, 28)), Linear(n, n), ReLU((n,)), Linear(n, 2)]).init_params(
        xp, xp.float64, numpy.random.default_rng(0))
    scale = numpy.ones(n)
    scale[0] = 2.0
    last = numpy.zeros((2, n))
    last[0, 0] = 1.0
    model.set_parameters({"1.weight": numpy.diag(scale), "1.bias": numpy.full(n, 10.0), "3.weight": last,
                          "3.bias": numpy.asarray([1.9 * EPS - 11.0, 0.0])})
    save_model(folder / "m.npz", model)
    numpy.savez(folder / "d.npz", images=numpy.full((1, 1, 28, 28), 0.5), labels=numpy.asarray([0]))
    return str(folder / "m.npz"), str(folder / "d.npz")


def _audit_run(breaker, *extra):
    model, data = breaker
    return CliRunner().invoke(main, ["certify", model, "--data", data, "--eps", str(EPS), "--pgd-steps", "20",
                                     "--audit", "--quiet", *extra], catch_exceptions=False)


def test_a_pgd_break_of_an_estimate_certificate_is_a_finding_not_a_soundness_error(estimate_breaker):
    """`certify --iters 1 --audit` printed SOUNDNESS ERROR and exited 3 when PGD broke an
    estimate's certificate, which estimates can do."""
    result = _audit_run(estimate_breaker, "--iters", "1", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # the estimate certified the sample, PGD broke it, and sound mode (rightly) does not certify it
    assert doc["certified_accuracy_local"] == 1.0 and doc["pgd_accuracy"] == 0.0
    audit = doc["audit"]
    assert audit["estimate_certificates"] == 1 and audit["estimate_broken_by_pgd"] == 1
    assert audit["estimate_broken_samples"] == [0] and audit["sound_certified"] == 0
    assert audit["sound_broken_by_pgd"] == 0 and doc["soundness_violations"] == []
    assert "SOUNDNESS ERROR" not in result.stderr and "PGD broke 1 of the 1 estimate certificates" in result.stderr
    table = _audit_run(estimate_breaker, "--iters", "1")
    assert table.exit_code == 0 and "audit: estimate certificates broken by PGD (1 of 1)" in table.stdout


def test_a_pgd_break_of_a_sound_certificate_still_exits_3(estimate_breaker, monkeypatch):
    """A sound bound made wrong (halved) certifies the sample in the audit's sound run; PGD
    breaks it: SOUNDNESS ERROR, exit code 3. The audit's sound run had no PGD before, so this
    went unreported (exit 0)."""
    import dataclasses

    import lipref.certification as certification
    original = certification.certify_bounds

    def halved_in_sound_mode(bounds, weight, bias, onehot, eps, sound, cap_at_eps):
        if sound:
            bounds = dataclasses.replace(bounds, radius=bounds.radius / 2, lipschitz=bounds.lipschitz / 2)
        return original(bounds, weight, bias, onehot, eps, sound, cap_at_eps)
    monkeypatch.setattr(certification, "certify_bounds", halved_in_sound_mode)
    result = _audit_run(estimate_breaker, "--iters", "200", "--json")
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert doc["certified_accuracy_local"] == 0.0 and doc["audit"]["estimate_broken_by_pgd"] == 0  # converged
    assert doc["audit"]["sound_certified"] == 1 and doc["audit"]["sound_broken_by_pgd"] == 1
    assert doc["soundness_violations"] == [0]
    assert "SOUNDNESS ERROR" in result.stderr and "certified in sound mode by the audit" in result.stderr


def test_the_audit_plot_shows_the_sound_curve_beside_the_estimates(estimate_breaker, tmp_path, monkeypatch):
    """--plot with --audit drew the estimates' curves alone."""
    pytest.importorskip("matplotlib")
    import lipref.plots
    seen = {}
    original = lipref.plots._finish

    def capture(plt, fig, ax, result, title, path):
        seen.update({line.get_label(): line.get_ydata() for line in ax.get_lines()})
        original(plt, fig, ax, result, title, path)
    monkeypatch.setattr(lipref.plots, "_finish", capture)
    plot = tmp_path / "audit.png"
    result = _audit_run(estimate_breaker, "--iters", "1", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = ["global bound, estimates (power iteration, --iters 1)", "local bound, estimates (power iteration, "
              "--iters 1)", "global bound, sound", "local bound, sound"]
    assert [label for label in seen if not label.startswith("_")] == labels
    # at eps the estimate's local curve says certified, the sound one does not
    assert seen[labels[1]][-1] == 1.0 and seen[labels[3]][-1] == 0.0
