"""`lipref.audit.audit_summary` and `lipref certify --audit`: estimates' certificates against
sound ones on the same samples."""
import json

import numpy
import pytest
from click.testing import CliRunner

from cli import main
from lipref.audit import audit_summary
from lipref.certify import Certification


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
