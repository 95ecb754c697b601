"""Every bound checked against what it bounds, on small drawn networks in float64.

- local <= global, per sample;
- local >= the largest Jacobian spectral norm of x -> penultimate found by sampling points
  in the ball, and >= the largest secant ratio ||h(a) - h(b)|| / ||a - b|| found by
  gradient ascent over pairs of points in the ball (what a Lipschitz bound on the ball
  promises; for piecewise-linear nets the Jacobian itself has zero gradient);
- a neuron marked constant has the same activation value at every sampled point;
- pre-activation bounds contain every sampled pre-activation;
- sound mode >= converged fast mode >= sampled Jacobians; local sound <= global sound.
"""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networks import (
    ACTS,
    ball_points,
    drawn_inputs,
    jacobian_norm,
    pre_activations,
    secant_ascent,
    small_model,
)
from support import assert_backend_close, examples

from lipref import primitives as P
from lipref.backend import to_host
from lipref.bounds import BoundOptions, GlobalNorms, global_norms, network_bounds
from lipref.layers import ReLU
from lipref.tape import grad


@pytest.mark.property  # its @given is built per backend (fewer draws off NumPy), out of conftest's sight
def test_local_bound_between_jacobians_and_global(xp):
    @settings(max_examples=examples(xp, 12, 3), deadline=None)
    @given(seed=st.integers(0, 10_000), kind=st.sampled_from(ACTS), conv=st.sampled_from([False, True, "pool"]),
           eps=st.sampled_from([0.01, 0.1, 0.5, 2.0]))
    def run(seed, kind, conv, eps):
        model, rng = small_model(kind, conv, xp, seed)
        x_host = drawn_inputs(model, rng, 3)
        res = network_bounds(model, xp.asarray(x_host), eps, BoundOptions("local", "fast", 300), rng=rng)
        local, glob = to_host(res.lipschitz), float(to_host(res.global_lipschitz))
        assert numpy.all(local <= glob * (1 + 1e-9)), (local, glob)
        for s in range(x_host.shape[0]):
            pts = ball_points(rng, x_host[s:s + 1], eps, 6)
            sampled = max(jacobian_norm(model, xp.asarray(pts[j:j + 1]), xp) for j in range(pts.shape[0]))
            ascent = secant_ascent(model, x_host[s:s + 1], eps, xp, rng, steps=15)
            assert sampled <= local[s] * (1 + 1e-6) + 1e-12, (s, sampled, local[s])
            assert ascent <= local[s] * (1 + 1e-6) + 1e-12, (s, ascent, local[s])
    run()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(ACTS), conv=st.sampled_from([False, True, "pool"]),
       eps=st.sampled_from([0.01, 0.1, 0.5, 2.0]))
def test_constant_neurons_never_change_and_bounds_contain_samples(xp, seed, kind, conv, eps):
    model, rng = small_model(kind, conv, xp, seed)
    x_host = drawn_inputs(model, rng, 2)
    res = network_bounds(model, xp.asarray(x_host), eps, BoundOptions("local", "fast", 50), rng=rng)
    for s in range(x_host.shape[0]):
        pts = numpy.concatenate([x_host[s:s + 1], ball_points(rng, x_host[s:s + 1], eps, 64)])
        # points on the sphere too: the extreme case of the ball
        sphere = x_host[s:s + 1] + eps * (lambda d: d / numpy.linalg.norm(d.reshape(16, -1), axis=1).reshape(
            (16,) + (1,) * (d.ndim - 1)))(rng.standard_normal((16,) + x_host.shape[1:]))
        pts = numpy.concatenate([pts, sphere])
        pres = pre_activations(model, xp.asarray(pts))
        for act_bounds, pre in zip(res.activations, pres):
            lo = to_host(act_bounds.lower)[s]
            up = to_host(act_bounds.upper)[s]
            pre_h = to_host(pre)
            assert numpy.all(pre_h >= lo - 1e-9) and numpy.all(pre_h <= up + 1e-9)
            layer = act_bounds.layer
            out = to_host(layer(pre, {k: v.value for k, v in layer.params.items()}))
            constant = to_host(act_bounds.output_mask)[s] == 0
            spread = out.max(axis=0) - out.min(axis=0)
            assert numpy.all(spread[constant] == 0), "a neuron marked constant changed inside the ball"


def test_global_bound_is_product_of_exact_norms(xp):
    model, rng = small_model("relu", False, xp, 7)
    res = network_bounds(model, xp.asarray(drawn_inputs(model, rng, 2)), 0.1, BoundOptions("global", "fast", 500), rng=rng)
    exact = 1.0
    for layer in model.layers[:-1]:
        if layer.is_affine:
            exact *= numpy.linalg.norm(to_host(layer.params["weight"].value), 2)
    assert_backend_close(res.global_lipschitz, numpy.asarray(exact), xp, rtol=1e-8, what="global bound")


def test_local_norm_of_dense_layer_matches_masked_svd(xp):
    model, rng = small_model("relu", False, xp, 11)
    x_host = drawn_inputs(model, rng, 4)
    res = network_bounds(model, xp.asarray(x_host), 0.3, BoundOptions("local", "fast", 1000), rng=rng)
    w = to_host(model.layers[2].params["weight"].value)  # second affine layer
    rows = to_host(res.activations[1].row_mask)
    cols = to_host(res.activations[0].output_mask)
    for s in range(4):
        masked = w * rows[s][:, None] * cols[s][None, :]
        exact = numpy.linalg.norm(masked, 2)
        glob = numpy.linalg.norm(w, 2)
        assert abs(float(to_host(res.local_norms[1])[s]) - min(exact, glob)) <= 1e-8 * max(glob, 1e-12)



@pytest.mark.property  # its @given is built per backend (fewer draws off NumPy), out of conftest's sight
def test_sound_mode_bounds_converged_fast_mode(xp):
    @settings(max_examples=examples(xp, 8, 3), deadline=None)
    @given(seed=st.integers(0, 10_000), kind=st.sampled_from(ACTS), conv=st.sampled_from([False, True, "pool"]),
           eps=st.sampled_from([0.05, 0.5]))
    def run(seed, kind, conv, eps):
        model, rng = small_model(kind, conv, xp, seed)
        x = xp.asarray(drawn_inputs(model, rng, 3))
        fast = network_bounds(model, x, eps, BoundOptions("local", "fast", 400), rng=numpy.random.default_rng(seed))
        sound = network_bounds(model, x, eps, BoundOptions("local", "sound", 40), rng=numpy.random.default_rng(seed))
        sound_global = float(to_host(sound.global_lipschitz))
        assert float(to_host(fast.global_lipschitz)) <= sound_global * (1 + 1e-12)
        assert numpy.all(to_host(sound.lipschitz) <= sound_global * (1 + 1e-12))
        # sound norms use sound radii, so masks can only be fewer; the bound can only be larger
        assert numpy.all(to_host(fast.lipschitz) <= to_host(sound.lipschitz) * (1 + 1e-9))
    run()


def test_unknown_layer_is_an_error(xp):
    model, rng = small_model("relu", False, xp, 1)

    class Strange(ReLU):
        pass
    model.layers[1] = type("Weird", (), {"is_affine": False, "is_activation": False, "in_shape": (8,),
                                         "out_shape": (8,), "params": {}})()
    with pytest.raises(TypeError, match="unknown layers are an error"):
        network_bounds(model, xp.asarray(drawn_inputs(model, rng, 1)), 0.1, BoundOptions("local", "fast", 5), rng=rng)


def test_bad_arguments(xp):
    model, rng = small_model("relu", False, xp, 1)
    x = xp.asarray(drawn_inputs(model, rng, 1))
    with pytest.raises(ValueError, match="eps"):
        network_bounds(model, x, -0.1, BoundOptions("local", "fast", 5), rng=rng)
    with pytest.raises(ValueError, match="input shape"):
        network_bounds(model, xp.asarray(numpy.zeros((1, 4))), 0.1, BoundOptions("local", "fast", 5), rng=rng)
    with pytest.raises(ValueError, match="float64"):
        network_bounds(model, xp.astype(x, xp.float32), 0.1, BoundOptions("local", "sound", 5), rng=rng)
    with pytest.raises(ValueError, match="record must be False"):
        network_bounds(model, x, 0.1, BoundOptions("local", "sound", 5, record=True), rng=rng)
    with pytest.raises(ValueError, match="threads and sample_block"):
        network_bounds(model, x, 0.1, BoundOptions("local", "fast", 5, threads=0), rng=rng)
    with pytest.raises(ValueError, match="threads and sample_block"):
        network_bounds(model, x, 0.1, BoundOptions("local", "fast", 5, sample_block=0), rng=rng)


class _Starts:
    """An rng that hands out the given global start vectors, in layer order."""
    def __init__(self, starts):
        self.queue = [numpy.asarray(to_host(v)) for v in starts.values()]

    def standard_normal(self, shape):
        return self.queue.pop(0)


@pytest.mark.parametrize("bound", ["local", "global"])
def test_global_iteration_once_then_only_on_the_tape(xp, bound):
    """Training runs the global power iteration once per step (global_norms) and gives every
    block the GlobalNorms: the bounds and their gradients are those of a call that runs the
    iteration itself, and the norms are those at the vectors kept (a 0-step iteration from
    them gives the same, bit for bit)."""
    from lipref.bounds import global_norms, start_vectors
    model, rng = small_model("clipped_relu", True, xp, 14)
    x = xp.asarray(drawn_inputs(model, rng, 4))
    global_starts, local_starts = start_vectors(model, 4, bound, numpy.random.default_rng(2))
    itself = network_bounds(model, x, 0.3, BoundOptions(bound, "fast", 9, record=True),
                            local_vectors=local_starts, rng=_Starts(global_starts))
    norms = global_norms(model, "fast", 9, None, global_starts)
    converged = norms.vectors
    again = global_norms(model, "fast", 0, None, converged)
    for a, b in zip(again.norms, norms.norms):
        assert float(to_host(a)) == float(to_host(b))
    once = network_bounds(model, x, 0.3, BoundOptions(bound, "fast", 9, record=True), norms,
                          local_vectors=local_starts)
    params = list(model.parameters().values())
    expected = grad(P.sum(itself.lipschitz, None, False), params)
    got = grad(P.sum(once.lipschitz, None, False), params)
    for j, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert_backend_close(a, to_host(b), xp, rtol=1e-10, atol=1e-12, what=f"gradient {j}")
    assert_backend_close(once.lipschitz.value, to_host(itself.lipschitz.value), xp, rtol=1e-12, what="bound")
    for k in converged:
        assert_backend_close(once.global_vectors[k], to_host(itself.global_vectors[k]), xp, rtol=1e-12, atol=1e-14,
                             what=f"global vector {k}")
