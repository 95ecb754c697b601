"""Training schedules as plain functions of the (fractional) epoch t = epoch + step / steps.

The paper's recipe: `warmup` epochs of clean training (eps = 0, kappa = 1); then, over
`ramp` epochs, eps grows linearly 0 -> eps_train and kappa moves linearly kappa_start ->
kappa_end (1 -> 0 for BCP; 0 -> 0, the robust loss alone, in the official GloRo recipe),
interpolated within each epoch; afterwards both stay at their end values. The learning rate
is constant until `decay_start`, then decays exponentially to `lr_end` at the last epoch.

A run extended to more epochs (`extended`) keeps every value it has already used: eps and
kappa do not depend on the last epoch; a decay that has not started yet simply ends at the
new last epoch; a decay under way is re-planned from the rate at the extension point t0,
lr(t) = lr(t0) (lr_end / lr(t0))^((t - t0) / (epochs - t0)) for t > t0 (an entry (t0,
epochs before) of `extensions`).
"""
import math
from dataclasses import dataclass, replace

from .errors import InputError


@dataclass(frozen=True)
class Schedule:
    epochs: int
    eps_train: float
    warmup: float = 0.0
    ramp: float = 0.0
    kappa_end: float = 0.0
    lr: float = 1e-3
    lr_end: float = 1e-3
    decay_start: float = None  # None: decay over the epochs after the ramp
    kappa_start: float = 1.0
    extensions: tuple = ()  # ((t0, epochs before), ...): decays re-planned when the run was extended at t0

    def __post_init__(self):
        if self.epochs < 1:
            raise InputError(f"epochs must be >= 1, got {self.epochs}")
        if self.eps_train < 0:
            raise InputError(f"eps_train must be >= 0, got {self.eps_train}")
        if self.warmup < 0 or self.ramp < 0:
            raise InputError(f"warmup and ramp must be >= 0, got {self.warmup}, {self.ramp}")
        if not (0.0 <= self.kappa_end <= 1.0 and 0.0 <= self.kappa_start <= 1.0):
            raise InputError(f"kappa_start and kappa_end must be in [0, 1], got {self.kappa_start}, {self.kappa_end}")
        if self.lr <= 0 or self.lr_end <= 0:
            raise InputError(f"learning rates must be > 0, got {self.lr}, {self.lr_end}")
        object.__setattr__(self, "extensions", tuple((float(t0), int(e)) for t0, e in self.extensions))
        ends = [t0 for t0, _ in self.extensions] + [self.epochs]
        if any(not 0 <= a < b for a, b in zip(ends, ends[1:])):
            raise InputError(f"extensions must start before the last epoch, in order, got {self.extensions}")


def ramp_fraction(schedule, t):
    """0 before the ramp, 1 after it, linear in t during it."""
    if t < schedule.warmup:
        return 0.0
    if schedule.ramp == 0:
        return 1.0
    return min(1.0, (t - schedule.warmup) / schedule.ramp)


def eps_at(schedule, t):
    """Training radius at fractional epoch t (0 during warm-up)."""
    if t < schedule.warmup:
        return 0.0
    return schedule.eps_train * ramp_fraction(schedule, t)


def kappa_at(schedule, t):
    """Weight of the clean loss at fractional epoch t (1 during warm-up)."""
    if t < schedule.warmup:
        return 1.0
    return schedule.kappa_start + (schedule.kappa_end - schedule.kappa_start) * ramp_fraction(schedule, t)


def decay_start(schedule):
    """The epoch where the learning rate starts to decay (`decay_start`, by default the end of
    the ramp, at most the last epoch)."""
    if schedule.decay_start is not None:
        return schedule.decay_start
    return min(schedule.warmup + schedule.ramp, float(schedule.epochs))


def _before_extension(schedule):
    """(the schedule the last extension extended, that extension's t0)."""
    t0, epochs = schedule.extensions[-1]
    return replace(schedule, epochs=epochs, extensions=schedule.extensions[:-1]), t0


def lr_at(schedule, t):
    """Learning rate: constant until decay_start, then exponential decay reaching lr_end at
    t = epochs; after an extension at t0, the decay from lr(t0) re-planned to end at t = epochs."""
    if schedule.extensions:
        before, t0 = _before_extension(schedule)
        start = lr_at(before, min(t, t0))
        if t <= t0:
            return start
        return start * (schedule.lr_end / start) ** min(1.0, (t - t0) / (schedule.epochs - t0))
    start = decay_start(schedule)
    if t <= start or start >= schedule.epochs:
        return schedule.lr
    frac = min(1.0, (t - start) / (schedule.epochs - start))
    return schedule.lr * (schedule.lr_end / schedule.lr) ** frac


def decays_by(schedule, t0):
    """Whether the learning rate has left `lr` at some t <= t0 (so that a new last epoch would
    change it there)."""
    if schedule.lr == schedule.lr_end:
        return False
    return bool(schedule.extensions) or t0 > decay_start(schedule)


def extended(schedule, epochs, t0):
    """`schedule` run on to `epochs` (> schedule.epochs) from t0, the fractional epoch trained
    so far, with the same eps, kappa and learning rate at every t <= t0: a decay that has not
    started by t0 ends at the new last epoch (the schedule a run planned for `epochs` from the
    start would follow); one under way is re-planned from lr(t0) (an entry in `extensions`)."""
    if not schedule.epochs < epochs:
        raise InputError(f"an extension needs more epochs than {schedule.epochs}, got {epochs}")
    if not 0 <= t0 <= schedule.epochs:
        raise InputError(f"an extension starts within the run's {schedule.epochs} epochs, got t0 = {t0}")
    if not decays_by(schedule, t0):
        return replace(schedule, epochs=epochs)
    return replace(schedule, epochs=epochs, extensions=schedule.extensions + ((t0, schedule.epochs),))


def describe_extension(old, new, t0):
    """One line saying how `new` (from `extended`) continues `old` after t0."""
    ramp_end = old.warmup + old.ramp
    eps = (f"eps and kappa follow their ramp to epoch {ramp_end:g}" if ramp_end > t0 else
           "eps and kappa stay at their end values")
    if old.lr == old.lr_end:
        lr = f"the learning rate stays {old.lr:g}"
    elif math.isclose(lr_at(old, t0), old.lr_end, rel_tol=1e-9):
        lr = f"the learning rate stays at --lr-end {old.lr_end:g}, reached at epoch {old.epochs}"
    elif new.extensions == old.extensions:
        lr = f"the learning-rate decay from epoch {decay_start(new):g} now ends at epoch {new.epochs}"
    else:
        lr = (f"the learning rate, {lr_at(old, t0):g} at epoch {t0:g}, now decays to {new.lr_end:g} at epoch "
              f"{new.epochs}")
    return f"{eps}; {lr}"
