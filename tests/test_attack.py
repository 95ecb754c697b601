"""l2 PGD: what it returns is inside the ball and the box and really changes the prediction
where it says so; blocks of samples and threads change nothing, nor what is left of rng."""
import numpy

from lipref.attack import pgd_l2
from lipref.backend import to_host
from lipref.bounds.margins import predictions
from test_bounds import small_model


def test_pgd_points_are_in_the_ball_and_break_the_prediction(xp):
    model, rng = small_model("relu", True, xp, 3)
    x_host = rng.uniform(0, 1, (9,) + model.input_shape)
    x = xp.asarray(x_host)
    labels = predictions(model(x, record=False))
    result = pgd_l2(model, x, labels, 2.0, numpy.random.default_rng(1), n_steps=20)
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
