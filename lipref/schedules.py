"""Training schedules as plain functions of the (fractional) epoch t = epoch + step / steps.

The paper's recipe: `warmup` epochs of clean training (eps = 0, kappa = 1); then, over
`ramp` epochs, eps grows linearly 0 -> eps_train and kappa moves linearly kappa_start ->
kappa_end (1 -> 0 for BCP; 0 -> 0, the robust loss alone, in the official GloRo recipe),
interpolated within each epoch; afterwards both stay at their end values. The learning rate
is constant until `decay_start`, then decays exponentially to `lr_end` at the last epoch.
"""
from dataclasses import dataclass

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


def lr_at(schedule, t):
    """Learning rate: constant until decay_start, then exponential decay reaching lr_end at
    t = epochs."""
    start = schedule.decay_start
    if start is None:
        start = min(schedule.warmup + schedule.ramp, float(schedule.epochs))
    if t <= start or start >= schedule.epochs:
        return schedule.lr
    frac = min(1.0, (t - start) / (schedule.epochs - start))
    return schedule.lr * (schedule.lr_end / schedule.lr) ** frac
