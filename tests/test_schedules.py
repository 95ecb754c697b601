"""Schedules extended to more epochs (`lipref train --resume --epochs N`): every value the run
has used stays what it was; after the extension point eps and kappa keep their ramp and the
learning rate reaches lr_end at the new last epoch. (The schedules' turning points:
tests/test_losses.py.)"""
import pytest

from lipref.errors import InputError
from lipref.schedules import Schedule, describe_extension, eps_at, extended, kappa_at, lr_at

# warm-up 1, ramp to epoch 4, decay from 5 to lr_end at 10
PLANNED = Schedule(epochs=10, eps_train=1.5, warmup=1, ramp=3, kappa_end=0.1, lr=1e-3, lr_end=1e-5, decay_start=5)


def _grid(end, per_epoch=8):
    return [t / per_epoch for t in range(int(end * per_epoch) + 1)]


def test_an_extension_before_the_decay_is_the_schedule_planned_longer():
    """Extended at epoch 3 (the ramp under way, the decay not started), the schedule is the one a
    run planned for 16 epochs follows, value for value, before and after t0."""
    for start in (5, None):  # an explicit decay start, and the default (the end of the ramp)
        short = Schedule(epochs=10, eps_train=1.5, warmup=1, ramp=3, lr=1e-3, lr_end=1e-5, decay_start=start)
        longer = Schedule(epochs=16, eps_train=1.5, warmup=1, ramp=3, lr=1e-3, lr_end=1e-5, decay_start=start)
        grown = extended(short, 16, t0=3.0)
        assert grown == longer and grown.extensions == ()
        for t in _grid(10):
            assert lr_at(grown, t) == lr_at(short, t) if t <= 3 else lr_at(grown, t) == lr_at(longer, t)
    # a short run whose ramp was still going at its end (no decay yet): the extension is the longer plan
    trial = Schedule(epochs=2, eps_train=1.75, ramp=8, lr=1e-3, lr_end=1e-4)
    assert extended(trial, 15, t0=2.0) == Schedule(epochs=15, eps_train=1.75, ramp=8, lr=1e-3, lr_end=1e-4)


def test_an_extension_during_the_decay_keeps_the_past_and_replans_the_rest():
    t0 = 7.25  # mid-decay, part-way through epoch 8
    grown = extended(PLANNED, 20, t0)
    assert grown.extensions == ((7.25, 10),) and grown.epochs == 20
    for t in _grid(7.25):
        assert (eps_at(grown, t), kappa_at(grown, t), lr_at(grown, t)) == (
            eps_at(PLANNED, t), kappa_at(PLANNED, t), lr_at(PLANNED, t)), t
    reached = lr_at(PLANNED, t0)
    assert PLANNED.lr_end < reached < PLANNED.lr
    assert lr_at(grown, 20) == pytest.approx(PLANNED.lr_end, rel=1e-12)
    after = [lr_at(grown, t) for t in _grid(20) if t > t0]
    assert all(a > b for a, b in zip(after, after[1:])) and after[0] < reached  # decays on, from where it was
    assert lr_at(grown, t0 + 1e-9) == pytest.approx(reached, rel=1e-9)  # continuous at t0
    # half-way through the new decay: the geometric mean of the two ends
    assert lr_at(grown, (t0 + 20) / 2) == pytest.approx((reached * PLANNED.lr_end) ** 0.5, rel=1e-12)
    assert eps_at(grown, 15) == 1.5 and kappa_at(grown, 15) == pytest.approx(0.1)
    assert "decays to 1e-05 at epoch 20" in describe_extension(PLANNED, grown, t0)


def test_a_second_extension_keeps_the_first():
    once = extended(PLANNED, 20, 10.0)  # a finished run: lr_end reached, it stays there
    assert all(lr_at(once, t) == pytest.approx(1e-5, rel=1e-12) for t in _grid(20) if t >= 10)
    twice = extended(once, 30, 12.5)
    assert twice.extensions == ((10.0, 10), (12.5, 20))
    assert [lr_at(twice, t) for t in _grid(12.5)] == [lr_at(once, t) for t in _grid(12.5)]
    assert "stays at --lr-end 1e-05" in describe_extension(PLANNED, once, 10.0)
    with pytest.raises(InputError, match="more epochs"):
        extended(once, 20, 20.0)
    with pytest.raises(InputError, match="in order"):
        Schedule(epochs=10, eps_train=1.0, extensions=((5.0, 8), (4.0, 9)))


def test_a_constant_rate_needs_no_replanning():
    flat = Schedule(epochs=4, eps_train=1.0, ramp=1, lr=1e-3, lr_end=1e-3)
    grown = extended(flat, 9, 4.0)
    assert grown.extensions == () and all(lr_at(grown, t) == 1e-3 for t in _grid(9))
