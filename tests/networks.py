"""Small drawn networks and ground truth in their l2 balls, shared by the bounds' tests:
the networks (ReLU, clipped ReLU, MaxMin; dense or conv), points of the ball, Jacobian norms
by sampling, secant ratios by gradient ascent, and masked layers written out as matrices."""
import numpy

from lipref import primitives as P
from lipref.backend import to_host
from lipref.layers import AvgPool2d, ClampedMaxMin, ClippedReLU, Conv2d, Flatten, Linear, ReLU, Sequential
from lipref.tape import Var, grad

ACTS = ("relu", "clipped_relu", "maxmin")


def _act(kind, shape, theta):
    return {"relu": lambda: ReLU(shape), "clipped_relu": lambda: ClippedReLU(shape, theta),
            "maxmin": lambda: ClampedMaxMin(shape, theta)}[kind]()


def small_model(kind, conv, xp, seed, theta=0.6):
    """A small net (dense, conv, or conv = "pool": conv with average pools, one between an
    activation and a conv, one right before the flatten) with random weights and random
    per-neuron thresholds."""
    rng = numpy.random.default_rng(seed)
    if conv == "pool":
        c1 = Conv2d((1, 6, 6), 4, 3, 1, 1)
        p1 = AvgPool2d(c1.out_shape, 2, 2, 0)
        c2 = Conv2d(p1.out_shape, 4, 3, 1, 1)
        p2 = AvgPool2d(c2.out_shape, 3, 1, 1)
        layers = [c1, _act(kind, c1.out_shape, theta), p1, c2, _act(kind, c2.out_shape, theta), p2,
                  Flatten(p2.out_shape), Linear(36, 6), _act(kind, (6,), theta), Linear(6, 3)]
    elif conv:
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


def drawn_inputs(model, rng, n):
    return rng.uniform(-1, 1, (n,) + model.input_shape)

def materialise(layer, w, rows, cols):
    """The dense matrix of rows * conv(cols * x) (NumPy, float64)."""
    n_in = int(numpy.prod(layer.in_shape))
    basis = numpy.eye(n_in).reshape((n_in,) + layer.in_shape) * cols[None]
    out = P.conv2d(basis, w, None, layer.stride, layer.padding) * rows[None]
    return out.reshape(n_in, -1).T
