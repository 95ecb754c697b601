"""l2 PGD: what it returns is inside the ball and the box and really changes the prediction
where it says so; blocks of samples and threads change nothing, nor what is left of rng."""
import numpy
import pytest
from networks import small_model

from lipref.pgd import pgd_l2
from lipref.backend import to_host
from lipref.bounds.certificate import predictions
from lipref.errors import InputError
from lipref.certification import CertifyConfig, certify


def test_pgd_points_are_in_the_ball_and_break_the_prediction(xp):
    model, rng = small_model("relu", True, xp, 3)
    x_host = rng.uniform(0, 1, (9,) + model.input_shape)
    x = xp.asarray(x_host)
    labels = predictions(model(x, record=False))
    result = pgd_l2(model, x, labels, 2.0, numpy.random.default_rng(1), n_steps=20, domain=(0.0, 1.0))
    adv, success, dist = (to_host(a) for a in (result.adversarial, result.success, result.distance))
    assert success.any(), "PGD broke nothing at a large radius"
    assert numpy.all(dist <= 2.0 * (1 + 1e-12)) and numpy.all((adv >= 0) & (adv <= 1))
    assert numpy.allclose(dist, numpy.sqrt(((adv - x_host) ** 2).reshape(9, -1).sum(axis=1)))
    new = to_host(predictions(model(xp.asarray(adv), record=False)))
    assert numpy.all((new != to_host(labels)) == success)


def test_pgd_blocks_and_threads_change_nothing(xp):
    model, rng = small_model("clipped_relu", True, xp, 4)
    x = xp.asarray(rng.uniform(0, 1, (7,) + model.input_shape))
    labels = predictions(model(x, record=False))
    results, next_draws = [], []
    for threads, block in ((1, 7), (2, 2), (3, 3), (1, 3)):
        r = numpy.random.default_rng(2)
        results.append(pgd_l2(model, x, labels, 0.8, r, n_steps=6, restarts=2, threads=threads, sample_block=block))
        next_draws.append(r.standard_normal())
    assert len(set(next_draws)) == 1
    for other in results[1:]:
        for a, b in ((results[0].adversarial, other.adversarial), (results[0].success, other.success)):
            numpy.testing.assert_allclose(to_host(b), to_host(a), rtol=1e-12, atol=1e-12)
    assert numpy.array_equal(to_host(results[2].adversarial), to_host(results[3].adversarial))


def _one_input_model(xp, weight, bias, dtype="float64"):
    """x (1 feature) -> logits (0, weight x + bias): class 1 iff weight x + bias > 0."""
    from lipref.layers import Linear, Sequential
    model = Sequential([Linear(1, 2)]).init_params(xp, getattr(xp, dtype), numpy.random.default_rng(0))
    model.set_parameters({"0.weight": xp.asarray(numpy.array([[0.0], [weight]]), dtype=getattr(xp, dtype)),
                          "0.bias": xp.asarray(numpy.array([0.0, bias]), dtype=getattr(xp, dtype))})
    return model


def test_pgd_stays_in_the_ball_for_data_outside_zero_one(xp):
    """x = 5, logit margin x - 3, eps 0.5: the prediction cannot change in the ball. PGD used
    to clip to [0, 1] always, left the ball (to 1) and reported the true certificate as a
    soundness error; with the domain unbounded it stays in the ball and breaks nothing."""
    from lipref.certification import certify
    model = _one_input_model(xp, 1.0, -3.0)
    images, labels = numpy.array([[5.0]]), numpy.array([1])
    result = certify(model, images, labels, 0.5, CertifyConfig(mode="sound", n_iters=20, pgd_steps=20), rng=numpy.random.default_rng(0))
    assert result.certified_local[0] and result.certified_global[0]
    assert not result.pgd_broken[0] and result.violations == []
    attack = pgd_l2(model, xp.asarray(images), xp.asarray(labels), 0.5, numpy.random.default_rng(1), 20)
    assert float(to_host(attack.distance)[0]) <= 0.5


def test_a_domain_that_does_not_hold_the_data_is_an_error(xp):
    model = _one_input_model(xp, 1.0, -3.0)
    with pytest.raises(InputError, match="outside the domain"):
        pgd_l2(model, xp.asarray(numpy.array([[5.0]])), xp.asarray(numpy.array([1])), 0.5,
               numpy.random.default_rng(1), 5, domain=(0.0, 1.0))


@pytest.mark.parametrize("step", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_step_size_that_is_not_positive_and_finite_is_an_error(xp, step):
    """A NaN step made NaN points, which PGD counted as adversarial."""
    model = _one_input_model(xp, 1.0, -3.0)
    with pytest.raises(InputError, match="step size"):
        pgd_l2(model, xp.asarray(numpy.array([[5.0]])), xp.asarray(numpy.array([1])), 0.5,
               numpy.random.default_rng(1), 5, step_size=step)
