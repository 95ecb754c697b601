"""Blocks of samples and threads (bounds/walk.py: bound_in_blocks, merge_blocks): the bounds do
not depend on how the batch is cut or threaded, and the start vectors are the draws one pass
makes."""
import numpy
import pytest
from networks import drawn_inputs, small_model
from support import assert_backend_close

from lipref.backend import to_host
from lipref.bounds import BoundOptions, GlobalNorms, global_norms, network_bounds


def _same_bounds(a, b, xp):
    """Every per-sample output of two network_bounds results agrees to rounding."""
    pairs = [("logits", a.logits, b.logits), ("lipschitz", a.lipschitz, b.lipschitz),
             ("radius", a.radius, b.radius), ("lower", a.lower, b.lower), ("upper", a.upper, b.upper),
             ("penultimate", a.penultimate, b.penultimate)]
    pairs += [(f"local norm {j}", p, q) for j, (p, q) in enumerate(zip(a.local_norms, b.local_norms, strict=True))]
    for j, (p, q) in enumerate(zip(a.activations, b.activations, strict=True)):
        pairs += [(f"activation {j} {name}", getattr(p, name), getattr(q, name))
                  for name in ("lower", "upper", "row_mask", "output_mask", "constant_fraction")]
    assert sorted(a.local_vectors) == sorted(b.local_vectors)
    pairs += [(f"vector {k}", a.local_vectors[k], b.local_vectors[k]) for k in a.local_vectors]
    for what, p, q in pairs:
        assert_backend_close(p, to_host(q), xp, rtol=1e-10, atol=1e-12, what=what)


@pytest.mark.parametrize("mode", ["fast", "sound"])
@pytest.mark.parametrize("conv", [False, True])
def test_sample_blocks_and_threads_do_not_change_the_bounds(xp, mode, conv):
    """Bounding a batch in blocks of samples, in threads, gives what one pass gives (to
    rounding), and draws the same random start vectors: the rng is left in the same state.
    The thread count changes nothing at all."""
    model, rng = small_model("clipped_relu", conv, xp, 21)
    x = xp.asarray(drawn_inputs(model, rng, 7))
    results, next_draws = [], []
    for threads, block in ((1, 7), (2, 2), (3, 3), (1, 3), (2, None)):
        r = numpy.random.default_rng(5)
        results.append(network_bounds(model, x, 0.4, BoundOptions("local", mode, 12, threads=threads, sample_block=block), rng=r))
        next_draws.append(r.standard_normal())
    assert len(set(next_draws)) == 1
    for other in results[1:]:
        _same_bounds(results[0], other, xp)
    for a, b in ((results[2].lipschitz, results[3].lipschitz), (results[2].lower, results[3].lower)):
        assert numpy.array_equal(to_host(a), to_host(b)), "three threads and one differ"


def test_sample_block_warm_start_is_per_sample(xp):
    """Stored vectors are split with their samples: warm-starting from a blocked run's
    vectors equals warm-starting a single pass from them."""
    model, rng = small_model("relu", True, xp, 8)
    x = xp.asarray(drawn_inputs(model, rng, 5))
    first = network_bounds(model, x, 0.2, BoundOptions("local", "fast", 3, threads=2, sample_block=2), rng=numpy.random.default_rng(0))
    one = network_bounds(model, x, 0.2, BoundOptions("local", "fast", 3, threads=1, sample_block=5), norms=global_norms(model, "fast", 3, None, first.global_vectors), local_vectors=first.local_vectors)
    blocked = network_bounds(model, x, 0.2, BoundOptions("local", "fast", 3, threads=2, sample_block=2), norms=global_norms(model, "fast", 3, None, first.global_vectors), local_vectors=first.local_vectors)
    _same_bounds(one, blocked, xp)


@pytest.mark.parametrize("bound", ["local", "global"])
def test_start_vectors_are_the_draws_network_bounds_makes(xp, bound):
    """start_vectors draws what a fast-mode call would draw, in its order: passing them back
    with rng None gives that call's bounds, and leaves rng where the call leaves it."""
    from lipref.bounds import start_vectors
    model, rng = small_model("relu", True, xp, 12)
    x = xp.asarray(drawn_inputs(model, rng, 4))
    drawn, direct = numpy.random.default_rng(9), numpy.random.default_rng(9)
    global_starts, local_starts = start_vectors(model, 4, bound, drawn)
    given = network_bounds(model, x, 0.3, BoundOptions(bound, "fast", 6), norms=global_norms(model, "fast", 6, None, global_starts), local_vectors=local_starts)
    expected = network_bounds(model, x, 0.3, BoundOptions(bound, "fast", 6), rng=direct)
    assert drawn.standard_normal() == direct.standard_normal()
    _same_bounds(expected, given, xp)
    assert (bound == "local") == bool(local_starts)
