"""Auditing a model certified the way its authors did: power-iteration estimates of the
local bound (the paper's evaluation) against sound upper bounds on the same samples.

A certificate from an estimate is only as good as the estimate: power iteration converges
to each masked layer's norm from below, so the estimated bound can be lower than the true
one, and a sample it certifies may not be certifiable. `audit_summary` says how many of the
estimate's certificates a sound run confirms and how far the estimates sit below the sound
bounds (docs/auditing.md).

PGD checks both runs, and its verdicts differ: an estimate's certificate that PGD breaks is a
finding of the audit (what estimates can do), counted; a sound certificate that PGD breaks
is a soundness error (a bug in lipref, or a failed assumption of docs/soundness.md)."""
from .backend import host


def audit_summary(estimate, sound):
    """Compare two `certify.Certification`s of the same samples, `estimate` in fast mode
    and `sound` in sound mode: {estimate_certified (count), sound_confirmed (how many of
    those the sound run certifies too), sound_certified (count), fraction_confirmed,
    median_estimate_over_sound (of the local bounds; below 1: the estimate is lower),
    min_estimate_over_sound, sound_only (certified soundly but not by the estimate)}, and
    PGD's verdicts (`pgd_verdicts`)."""
    if estimate.mode != "fast" or sound.mode != "sound":
        raise ValueError(f"audit compares a fast run with a sound run, got {estimate.mode} and {sound.mode}")
    if estimate.labels.shape != sound.labels.shape or not bool(host.all(estimate.labels == sound.labels)):
        raise ValueError("audit compares two runs on the same samples")
    by_estimate, by_sound = estimate.certified_local, sound.certified_local
    confirmed = int(host.sum(by_estimate & by_sound))
    n_estimate = int(host.sum(by_estimate))
    positive = sound.local_bound > 0
    ratio = estimate.local_bound[positive] / sound.local_bound[positive]
    return {
        "estimate_certified": n_estimate,
        "sound_confirmed": confirmed,
        "sound_certified": int(host.sum(by_sound)),
        "fraction_confirmed": confirmed / n_estimate if n_estimate else None,
        "sound_only": int(host.sum(by_sound & ~by_estimate)),
        "median_estimate_over_sound": float(host.median(ratio)) if ratio.size else None,
        "min_estimate_over_sound": float(host.min(ratio)) if ratio.size else None,
        **pgd_verdicts(estimate, sound),
    }


def pgd_verdicts(estimate, sound):
    """{estimate_certificates (samples certified by an estimate, local or global bound),
    estimate_broken_by_pgd (how many of those PGD broke inside the ball: a finding, since
    estimates can sit below the true norms; None when no attack ran), estimate_broken_samples,
    sound_broken_by_pgd (soundly certified samples PGD broke: soundness errors; None when no
    attack ran), sound_broken_samples}. The indices are the runs' `violations`."""
    by_estimate = estimate.certified_local | estimate.certified_global
    return {
        "estimate_certificates": int(host.sum(by_estimate)),
        "estimate_broken_by_pgd": None if estimate.pgd_broken is None else len(estimate.violations),
        "estimate_broken_samples": list(estimate.violations),
        "sound_broken_by_pgd": None if sound.pgd_broken is None else len(sound.violations),
        "sound_broken_samples": list(sound.violations),
    }
