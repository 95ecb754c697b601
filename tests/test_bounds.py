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

from lipref import primitives as P
from lipref.backend import to_host
from lipref.bounds.lipschitz import network_bounds
from lipref.layers import ClampedMaxMin, ClippedReLU, Conv2d, Flatten, Linear, ReLU, Sequential
from lipref.tape import Var, grad
from support import assert_backend_close

ACTS = ("relu", "clipped_relu", "maxmin")


def _act(kind, shape, theta):
    return {"relu": lambda: ReLU(shape), "clipped_relu": lambda: ClippedReLU(shape, theta),
            "maxmin": lambda: ClampedMaxMin(shape, theta)}[kind]()


def small_model(kind, conv, xp, seed, theta=0.6):
    """A small net (dense or conv) with random weights and random per-neuron thresholds."""
    rng = numpy.random.default_rng(seed)
    if conv:
        c1 = Conv2d((1, 6, 6), 4, 3, 2, 1)
        c2 = Conv2d(c1.out_shape, 4, 3, 1, 1)
        layers = [c1, _act(kind, c1.out_shape, theta), c2, _act(kind, c2.out_shape, theta),
                  Flatten(c2.out_shape), Linear(36, 6), _act(kind, (6,), theta), Linear(6, 3)]
    else:
        layers = [Linear(5, 8), _act(kind, (8,), theta), Linear(8, 6), _act(kind, (6,), theta), Linear(6, 3)]
    model = Sequential(layers).init_params(xp, xp.float64, rng)
    for layer in model.layers:  # random thresholds and biases so that every case occurs
        for name, var in layer.params.items():
            if name in ("threshold", "max"):
                var.value = xp.asarray(rng.uniform(0.05, 1.0, tuple(var.value.shape)), dtype=xp.float64)
            elif name == "min":
                var.value = xp.asarray(rng.uniform(-1.0, -0.05, tuple(var.value.shape)), dtype=xp.float64)
            elif name == "bias":
                var.value = xp.asarray(rng.normal(0, 0.3, tuple(var.value.shape)), dtype=xp.float64)
    return model, rng


def penultimate(model, x):
    h = x
    for layer in model.layers[:-1]:
        h = layer(h, {k: v.value for k, v in layer.params.items()})
    return h


def pre_activations(model, x):
    """Inputs of each activation layer at x (arrays)."""
    out, h = [], x
    for layer in model.layers[:-1]:
        if layer.is_activation:
            out.append(h)
        h = layer(h, {k: v.value for k, v in layer.params.items()})
    return out


def jacobian_norm(model, x_point, xp):
    """Spectral norm of d penultimate / d x at one point (reverse mode, one row at a time)."""
    X = Var(x_point)
    h = penultimate(model, X)
    d = h.value.shape[1]
    rows = []
    for k in range(d):
        seed = numpy.zeros((1, d))
        seed[0, k] = 1.0
        (g,) = grad(h, [X], seed=xp.asarray(seed))
        rows.append(to_host(g).reshape(-1))
    return numpy.linalg.norm(numpy.array(rows), 2)


def ball_points(rng, x_host, eps, n):
    """n points uniformly spread in the l2 ball of radius eps around x (one sample)."""
    d = rng.standard_normal((n,) + x_host.shape[1:])
    d /= numpy.linalg.norm(d.reshape(n, -1), axis=1).reshape((n,) + (1,) * (d.ndim - 1))
    radii = eps * rng.uniform(0, 1, n) ** (1.0 / d[0].size)
    return x_host + d * radii.reshape((n,) + (1,) * (d.ndim - 1))


def project_ball(p, center, eps):
    diff = p - center
    norm = numpy.linalg.norm(diff.reshape(diff.shape[0], -1), axis=1)
    scale = numpy.minimum(1.0, eps / numpy.maximum(norm, 1e-300))
    return center + diff * scale.reshape((-1,) + (1,) * (diff.ndim - 1))


def secant_ascent(model, x_host, eps, xp, rng, steps=40):
    """Gradient ascent over pairs (a, b) in the ball on ||h(a) - h(b)|| / ||a - b||."""
    a = ball_points(rng, x_host, eps, 8)
    b = project_ball(a + 1e-3 * eps * rng.standard_normal(a.shape), x_host, eps)
    best = 0.0
    for _ in range(steps):
        A, B = Var(xp.asarray(a)), Var(xp.asarray(b))
        diff_h = P.reshape(P.subtract(penultimate(model, A), penultimate(model, B)), (a.shape[0], -1))
        num = P.l2_norm(diff_h, 1, False)
        den = numpy.linalg.norm((a - b).reshape(a.shape[0], -1), axis=1)
        ratio = P.divide(num, xp.asarray(den))
        best = max(best, float(numpy.max(to_host(ratio.value))))
        ga, gb = grad(P.sum(ratio, None, False), [A, B])
        step = 0.05 * eps
        ga, gb = to_host(ga), to_host(gb)
        na = numpy.linalg.norm(ga.reshape(a.shape[0], -1), axis=1).reshape((-1,) + (1,) * (a.ndim - 1)) + 1e-300
        nb = numpy.linalg.norm(gb.reshape(b.shape[0], -1), axis=1).reshape((-1,) + (1,) * (b.ndim - 1)) + 1e-300
        a = project_ball(a + step * ga / na, x_host, eps)
        b = project_ball(b + step * gb / nb, x_host, eps)
        too_close = numpy.linalg.norm((a - b).reshape(a.shape[0], -1), axis=1) < 1e-9
        if numpy.any(too_close):
            b[too_close] = project_ball(a[too_close] + 1e-4 * eps, x_host, eps)
    return best


def _inputs(model, rng, n):
    return rng.uniform(-1, 1, (n,) + model.input_shape)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(ACTS), conv=st.booleans(),
       eps=st.sampled_from([0.01, 0.1, 0.5, 2.0]))
def test_local_bound_between_jacobians_and_global(xp, seed, kind, conv, eps):
    model, rng = small_model(kind, conv, xp, seed)
    x_host = _inputs(model, rng, 3)
    res = network_bounds(model, xp.asarray(x_host), eps, "local", "fast", 300, rng)
    local, glob = to_host(res.lipschitz), float(to_host(res.global_lipschitz))
    assert numpy.all(local <= glob * (1 + 1e-9)), (local, glob)
    for s in range(x_host.shape[0]):
        pts = ball_points(rng, x_host[s:s + 1], eps, 6)
        sampled = max(jacobian_norm(model, xp.asarray(pts[j:j + 1]), xp) for j in range(pts.shape[0]))
        ascent = secant_ascent(model, x_host[s:s + 1], eps, xp, rng, steps=15)
        assert sampled <= local[s] * (1 + 1e-6) + 1e-12, (s, sampled, local[s])
        assert ascent <= local[s] * (1 + 1e-6) + 1e-12, (s, ascent, local[s])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(ACTS), conv=st.booleans(),
       eps=st.sampled_from([0.01, 0.1, 0.5, 2.0]))
def test_constant_neurons_never_change_and_bounds_contain_samples(xp, seed, kind, conv, eps):
    model, rng = small_model(kind, conv, xp, seed)
    x_host = _inputs(model, rng, 2)
    res = network_bounds(model, xp.asarray(x_host), eps, "local", "fast", 50, rng)
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


def test_masks_find_constant_neurons(xp):
    """The masks are not vacuous: at small eps most ReLUs that are off stay off."""
    model, rng = small_model("relu", False, xp, 3)
    res = network_bounds(model, xp.asarray(_inputs(model, rng, 8)), 1e-3, "local", "fast", 20, rng)
    assert float(numpy.mean(to_host(res.activations[0].constant_fraction))) > 0.2


def test_global_bound_is_product_of_exact_norms(xp):
    model, rng = small_model("relu", False, xp, 7)
    res = network_bounds(model, xp.asarray(_inputs(model, rng, 2)), 0.1, "global", "fast", 500, rng)
    exact = 1.0
    for layer in model.layers[:-1]:
        if layer.is_affine:
            exact *= numpy.linalg.norm(to_host(layer.params["weight"].value), 2)
    assert_backend_close(res.global_lipschitz, numpy.asarray(exact), xp, rtol=1e-8, what="global bound")


def test_local_norm_of_dense_layer_matches_masked_svd(xp):
    model, rng = small_model("relu", False, xp, 11)
    x_host = _inputs(model, rng, 4)
    res = network_bounds(model, xp.asarray(x_host), 0.3, "local", "fast", 1000, rng)
    w = to_host(model.layers[2].params["weight"].value)  # second affine layer
    rows = to_host(res.activations[1].row_mask)
    cols = to_host(res.activations[0].output_mask)
    for s in range(4):
        masked = w * rows[s][:, None] * cols[s][None, :]
        exact = numpy.linalg.norm(masked, 2)
        glob = numpy.linalg.norm(w, 2)
        assert abs(float(to_host(res.local_norms[1])[s]) - min(exact, glob)) <= 1e-8 * max(glob, 1e-12)


@pytest.mark.parametrize("stride, c, o, k", [(1, 2, 3, 3), (2, 2, 3, 3), (1, 1, 8, 3), (2, 3, 2, 4), (3, 2, 2, 2)])
def test_conv_power_iteration_on_the_grid_matches_the_layer_layout(xp, stride, c, o, k):
    """Conv layers iterate on their padded space-to-depth grid (conv_grid) with the masked
    Gram shortcut; that must give what power iteration on the layer's own layout gives
    (apply_adjoint(apply(v)) every step): the same sigma and v, from a stored start vector
    that ignores today's column mask, and from a zero start (the constant unit vector, on
    the layer's entries), for 0 steps too; and never more than the exact masked norm."""
    from lipref.bounds import spectral
    from lipref.bounds.lipschitz import _operator, masked_power_iteration
    rng = numpy.random.default_rng(5)
    layer = Conv2d((c, 7, 7), o, k, stride, 1)
    w = xp.asarray(rng.standard_normal((o, c, k, k)))
    rows = xp.asarray((rng.random((4,) + layer.out_shape) < 0.6).astype(numpy.float64))
    cols = xp.asarray((rng.random((4, c, 7, 7)) < 0.6).astype(numpy.float64))
    v0_host = rng.standard_normal((4, c, 7, 7))
    v0_host[2] = 0.0
    v0 = xp.asarray(v0_host)
    apply, apply_adjoint, _ = _operator(layer, w, rows, cols)
    for n_iters in (0, 1, 7):
        on_grid = masked_power_iteration(layer, w, rows, cols, v0, n_iters)
        sigma, _, v = spectral.power_iteration(apply, apply_adjoint, v0, n_iters)
        assert_backend_close(on_grid[0], to_host(sigma), xp, rtol=1e-12, atol=1e-12, what=f"sigma, {n_iters} steps")
        assert_backend_close(on_grid[1], to_host(v), xp, rtol=1e-12, atol=1e-12, what=f"v, {n_iters} steps")
        assert tuple(on_grid[1].shape) == (4, c, 7, 7)
    dense = numpy.stack([numpy.linalg.norm(_materialise(layer, to_host(w), to_host(rows)[s], to_host(cols)[s]), 2)
                         for s in range(4)])
    assert numpy.all(to_host(on_grid[0]) <= dense * (1 + 1e-12))
    assert numpy.all(to_host(on_grid[0]) >= 0.5 * dense)  # 7 steps from a random start: near, not equal


def _materialise(layer, w, rows, cols):
    """The dense matrix of rows * conv(cols * x) (NumPy, float64)."""
    n_in = int(numpy.prod(layer.in_shape))
    basis = numpy.eye(n_in).reshape((n_in,) + layer.in_shape) * cols[None]
    out = P.conv2d(basis, w, None, layer.stride, layer.padding) * rows[None]
    return out.reshape(n_in, -1).T


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(ACTS), conv=st.booleans(),
       eps=st.sampled_from([0.05, 0.5]))
def test_sound_mode_bounds_converged_fast_mode(xp, seed, kind, conv, eps):
    model, rng = small_model(kind, conv, xp, seed)
    x = xp.asarray(_inputs(model, rng, 3))
    fast = network_bounds(model, x, eps, "local", "fast", 400, numpy.random.default_rng(seed))
    sound = network_bounds(model, x, eps, "local", "sound", 40, numpy.random.default_rng(seed))
    sound_global = float(to_host(sound.global_lipschitz))
    assert float(to_host(fast.global_lipschitz)) <= sound_global * (1 + 1e-12)
    assert numpy.all(to_host(sound.lipschitz) <= sound_global * (1 + 1e-12))
    # sound norms use sound radii, so masks can only be fewer; the bound can only be larger
    assert numpy.all(to_host(fast.lipschitz) <= to_host(sound.lipschitz) * (1 + 1e-9))


def test_sound_global_norms_are_certified_and_reused(xp):
    """sound_global_norms: per affine layer >= the exact norm of the materialised operator
    (scipy) and within 1e-6 of it (conv layers by the Cholesky certificate, dense by SVD);
    network_bounds given them uses them, and computes the same ones itself from the same rng."""
    import scipy.linalg
    from lipref.bounds.lipschitz import sound_global_norms
    model, rng = small_model("relu", True, xp, 4)
    norms = sound_global_norms(model, numpy.random.default_rng(0))
    affine = [layer for layer in model.layers[:-1] if layer.is_affine]
    assert len(norms) == len(affine)
    for layer, bound in zip(affine, norms):
        w = to_host(layer.params["weight"].value)
        if isinstance(layer, Conv2d):
            matrix = _materialise(layer, w, numpy.ones(layer.out_shape), numpy.ones(layer.in_shape))
        else:
            matrix = w
        exact = scipy.linalg.svdvals(matrix)[0]
        assert exact <= float(to_host(bound)) <= exact * (1 + 1e-6), (type(layer).__name__, float(to_host(bound)), exact)
    x = xp.asarray(_inputs(model, rng, 3))
    given_norms = network_bounds(model, x, 0.3, "local", "sound", 20, numpy.random.default_rng(1), sound_norms=norms)
    computed = network_bounds(model, x, 0.3, "local", "sound", 20, numpy.random.default_rng(0))
    for a, b in zip(given_norms.global_norms, computed.global_norms):  # the same certificate, given or not
        assert_backend_close(a, float(to_host(b)), xp, rtol=1e-12, atol=0, what="global norm")
    assert numpy.all(to_host(given_norms.lipschitz) <= float(to_host(given_norms.global_lipschitz)) * (1 + 1e-12))


def test_unknown_layer_is_an_error(xp):
    model, rng = small_model("relu", False, xp, 1)

    class Strange(ReLU):
        pass
    model.layers[1] = type("Weird", (), {"is_affine": False, "is_activation": False, "in_shape": (8,),
                                         "out_shape": (8,), "params": {}})()
    with pytest.raises(TypeError, match="unknown layers are an error"):
        network_bounds(model, xp.asarray(_inputs(model, rng, 1)), 0.1, "local", "fast", 5, rng)


def test_bad_arguments(xp):
    model, rng = small_model("relu", False, xp, 1)
    x = xp.asarray(_inputs(model, rng, 1))
    with pytest.raises(ValueError, match="eps"):
        network_bounds(model, x, -0.1, "local", "fast", 5, rng)
    with pytest.raises(ValueError, match="input shape"):
        network_bounds(model, xp.asarray(numpy.zeros((1, 4))), 0.1, "local", "fast", 5, rng)
    with pytest.raises(ValueError, match="float64"):
        network_bounds(model, xp.astype(x, xp.float32), 0.1, "local", "sound", 5, rng)
    with pytest.raises(ValueError, match="record must be False"):
        network_bounds(model, x, 0.1, "local", "sound", 5, rng, record=True)
    with pytest.raises(ValueError, match="threads and sample_block"):
        network_bounds(model, x, 0.1, "local", "fast", 5, rng, threads=0)
    with pytest.raises(ValueError, match="threads and sample_block"):
        network_bounds(model, x, 0.1, "local", "fast", 5, rng, sample_block=0)
    with pytest.raises(ValueError, match="global_iters"):
        network_bounds(model, x, 0.1, "local", "fast", 5, rng, global_iters=-1)
    with pytest.raises(ValueError, match=r"global_iters=0 takes .* layers \[0, 2\]"):
        network_bounds(model, x, 0.1, "local", "fast", 5, rng, global_iters=0)


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
    x = xp.asarray(_inputs(model, rng, 7))
    results, next_draws = [], []
    for threads, block in ((1, 7), (2, 2), (3, 3), (1, 3), (2, None)):
        r = numpy.random.default_rng(5)
        results.append(network_bounds(model, x, 0.4, "local", mode, 12, r, threads=threads, sample_block=block))
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
    x = xp.asarray(_inputs(model, rng, 5))
    first = network_bounds(model, x, 0.2, "local", "fast", 3, numpy.random.default_rng(0), threads=2, sample_block=2)
    one = network_bounds(model, x, 0.2, "local", "fast", 3, None, first.local_vectors, first.global_vectors,
                         threads=1, sample_block=5)
    blocked = network_bounds(model, x, 0.2, "local", "fast", 3, None, first.local_vectors, first.global_vectors,
                             threads=2, sample_block=2)
    _same_bounds(one, blocked, xp)


@pytest.mark.parametrize("bound", ["local", "global"])
def test_start_vectors_are_the_draws_network_bounds_makes(xp, bound):
    """start_vectors draws what a fast-mode call would draw, in its order: passing them back
    with rng None gives that call's bounds, and leaves rng where the call leaves it."""
    from lipref.bounds.lipschitz import start_vectors
    model, rng = small_model("relu", True, xp, 12)
    x = xp.asarray(_inputs(model, rng, 4))
    drawn, direct = numpy.random.default_rng(9), numpy.random.default_rng(9)
    global_starts, local_starts = start_vectors(model, 4, bound, drawn)
    given = network_bounds(model, x, 0.3, bound, "fast", 6, None, local_starts, global_starts)
    expected = network_bounds(model, x, 0.3, bound, "fast", 6, direct)
    assert drawn.standard_normal() == direct.standard_normal()
    _same_bounds(expected, given, xp)
    assert (bound == "local") == bool(local_starts)


@pytest.mark.parametrize("bound", ["local", "global"])
def test_global_iteration_once_then_only_on_the_tape(xp, bound):
    """Training runs the global power iteration once per step (global_norms) and gives every
    block its vectors with global_iters=0: the bounds and their gradients are those of a
    call that runs the iteration itself."""
    from lipref.bounds.lipschitz import global_norms, start_vectors
    model, rng = small_model("clipped_relu", True, xp, 14)
    x = xp.asarray(_inputs(model, rng, 4))
    global_starts, local_starts = start_vectors(model, 4, bound, numpy.random.default_rng(2))
    itself = network_bounds(model, x, 0.3, bound, "fast", 9, None, local_starts, global_starts, record=True)
    converged = global_norms(model, "fast", 9, None, global_starts, False)[1]
    once = network_bounds(model, x, 0.3, bound, "fast", 9, None, local_starts, converged, record=True,
                          global_iters=0)
    params = list(model.parameters().values())
    expected = grad(P.sum(itself.lipschitz, None, False), params)
    got = grad(P.sum(once.lipschitz, None, False), params)
    for j, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert_backend_close(a, to_host(b), xp, rtol=1e-10, atol=1e-12, what=f"gradient {j}")
    assert_backend_close(once.lipschitz.value, to_host(itself.lipschitz.value), xp, rtol=1e-12, what="bound")
    for k in converged:
        assert_backend_close(once.global_vectors[k], to_host(itself.global_vectors[k]), xp, rtol=1e-12, atol=1e-14,
                             what=f"global vector {k}")


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), conv=st.booleans(), eps=st.sampled_from([0.0, 0.01, 0.3, 2.0]))
def test_interval_shortcuts_equal_the_plain_formulas(xp, seed, conv, eps):
    """What the walk computes more cheaply equals what it stands for:
    - affine_interval takes the halves on the weights: bitwise the plain centre/radius form;
    - row norms of an all-ones mask, once for the batch: the per-sample ones;
    - the first layer's box x +- eps: uniform_box_interval equals the interval intersected
      with the ball bound (to rounding: the plain form's centre is ((x+eps)+(x-eps))/2)."""
    from lipref.bounds.interval import (affine, affine_interval, ball_interval, intersect, row_norms,
                                        uniform_box_interval, weight_forms)
    rng = numpy.random.default_rng(seed)
    layer = Conv2d((2, 7, 6), 3, 3, 2, 1) if conv else Linear(9, 5)
    shape_w = (3, 2, 3, 3) if conv else (5, 9)
    params = {"weight": xp.asarray(rng.standard_normal(shape_w)), "bias": xp.asarray(rng.standard_normal(shape_w[0]))}
    forms = weight_forms(params)
    n = 4
    x = xp.asarray(rng.uniform(-1, 1, (n,) + layer.in_shape))
    lower = xp.asarray(to_host(x) - rng.uniform(0, 1, (n,) + layer.in_shape))
    upper = xp.asarray(to_host(x) + rng.uniform(0, 1, (n,) + layer.in_shape))
    w, b = params["weight"], params["bias"]
    lo, up = affine_interval(layer, forms, b, lower, upper)
    mid, rad = (upper + lower) * 0.5, (upper - lower) * 0.5
    c, r = affine(layer, mid, w, b), affine(layer, rad, xp.abs(w), None)
    assert numpy.array_equal(to_host(lo), to_host(c - r)) and numpy.array_equal(to_host(up), to_host(c + r))

    ones = xp.ones((n,) + layer.in_shape, dtype=xp.float64)
    norms_once = row_norms(layer, forms, None)
    assert tuple(norms_once.shape) == (1,) + layer.out_shape
    # to rounding: BLAS may sum a one-row product in another order than a four-row one
    assert_backend_close(row_norms(layer, forms, ones), numpy.broadcast_to(to_host(norms_once), (n,) + layer.out_shape),
                         xp, rtol=1e-14, atol=0, what="row norms")

    z = affine(layer, x, w, b)
    radius = xp.asarray(eps * rng.uniform(0.5, 3.0, n))
    lo_u, up_u = uniform_box_interval(layer, forms, z, eps, radius, norms_once)
    lo_p, up_p = intersect(*affine_interval(layer, forms, b, x - eps, x + eps), *ball_interval(z, radius, norms_once))
    assert_backend_close(lo_u, to_host(lo_p), xp, rtol=0, atol=1e-13, what="lower")
    assert_backend_close(up_u, to_host(up_p), xp, rtol=0, atol=1e-13, what="upper")
