"""Certificates against an independent ground truth: the model itself, on a dense grid.

What a certificate promises. `certify(...)` at radius eps says, for a certified sample x
(`certified_local` or `certified_global`), that the model's prediction cannot change for
any x' with ||x' - x||_2 <= eps; its certified radii (`radius_local`, `radius_global`) say
the same for the balls of those radii. The prediction is the argmax of the logits, ties
to the lowest index (`lipref.bounds.margins.predictions`).

The ground truth. On 2-D inputs the ball is a disk, and the model can simply be evaluated
on it: 60 radii x 120 angles inside the disk, the centre, and 3000 points on the boundary
circle, for every checked ball of every sample, in one batched forward pass of the model
in float64 (`model(x, record=False)`; a float32 model is evaluated through a float64 twin
with the same, exactly converted, parameters). Nothing of lipref's bound machinery
(interval and ball bounds, masks, power iteration, SVD, the ball-and-box support, the
margin arithmetic) takes part: only the forward pass, which is the definition of the
prediction. So a certificate that this check refutes is wrong, whatever the reason.

Why a grid is a valid check, and its limits. The networks here are continuous and
piecewise affine, so the set of points where another class wins is a union of polyhedral
pieces. A certificate that is wrong because a bound is too small (the usual failure) is
wrong on a region that enters the ball through its boundary and grows with eps; the 3000
boundary points resolve angles of 2e-3 rad, so such a region is found as soon as it
reaches about 1e-6 eps into the ball, and the 7200 interior points find regions of area
above about 1/1000 of the disk. A grid is a NECESSARY check, not a proof: a region that
lies strictly inside the disk and between grid points is missed, so passing says "no
counterexample on the grid", never "certified correctly". Failing is conclusive (up to
the rounding tolerance below).

Rounding. fast mode makes no promise about rounding (docs/soundness.md), and a float32
model's prediction is computed in float32; the float64 evaluation of a grid point is itself
rounded. A grid point therefore counts as a counterexample only when another class beats
the sample's prediction there by more than a rounding tolerance, 1024 u times the size of
the logits at that point (max_j (|W| |h| + |b|)_j of the last layer; u = 2^-24 for float32
models, 2^-53 for float64). That is far below the margins the known bugs produce.

What is drawn (`networks`): ReLU, clipped ReLU (a positive threshold per neuron) and
clamped MaxMin (max > min per pair), 1 or 2 hidden layers of width 2-8 (even for MaxMin),
2-4 classes; weights of scales 0.1-10; per-neuron biases (and thresholds) that make
neurons dead, saturated, linear on the whole input envelope, or free to switch; often
exactly one linear neuron per layer (the ball-and-box box then touches the sphere, where
the sorted-breakpoint solver's rounding decides); last-layer columns tied across all
classes or across two (exact zeros in w_j - w_y), and optionally huge, per-class
different weights on dead neurons (1e4 in float32, 1e7 or 1e8 in float64: cancellation in
sums of squares); eps from 1e-3 to 100 times a GloRo-style radius of the points. The test
certifies with fast mode (float32 or float64, 300 power iterations, so the estimates have
converged on these 2-8 wide layers) or sound mode (float64), pgd_steps=0.

The regression tests at the end pin the network that the original `ball_box_support`
certified wrongly (an exact zero in w_1 - w_0 on a dead neuron, the only live neuron's box
corner on the sphere), and its variant with 40 dead neurons of huge weight.
"""
import math

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipref.backend import to_backend, to_host
from lipref.certification import CertifyConfig, certify
from lipref.layers import ClampedMaxMin, ClippedReLU, Linear, ReLU, Sequential, layer_from_spec

N_RADII, N_ANGLES, N_CIRCLE = 60, 120, 3000
EPS_CAP = 2.0  # eps is drawn log-uniformly in [1e-3, EPS_CAP]; points lie in [-1, 1]^2
N_POINTS = 8
N_JITTERED = 5
N_ITERS = 150
N_ITERS_REGRESSION = 100
ULP = {"float32": 2.0 ** -24, "float64": 2.0 ** -53}
TOL_ULPS = 1024
# examples of the main property per backend: a bug that shows in about 1 net in 100
# (with tied columns) escapes 300 examples with probability 0.99^300 = 5%
EXAMPLES = {"numpy": 300}
EXAMPLES_OTHER = 40
CONFIGS = (("float32", "fast"), ("float64", "fast"), ("float64", "sound"))


def _backend_name(xp):
    return xp.__name__.split(".")[-1]


# ---------------------------------------------------------------- the ground truth


def _unit_disk_grid():
    k = numpy.arange(1, N_RADII + 1)[:, None] / N_RADII
    theta = 2 * numpy.pi * (numpy.arange(N_ANGLES)[None, :] + 0.5 * (numpy.arange(N_RADII)[:, None] % 2)) / N_ANGLES
    inner = numpy.stack([(k * numpy.cos(theta)).ravel(), (k * numpy.sin(theta)).ravel()], axis=1)
    phi = 2 * numpy.pi * numpy.arange(N_CIRCLE) / N_CIRCLE
    circle = numpy.stack([numpy.cos(phi), numpy.sin(phi)], axis=1)
    return numpy.concatenate([numpy.zeros((1, 2)), inner, circle])


UNIT_DISK = _unit_disk_grid()


def disk_grid(radius):
    """(P, 2) offsets covering the disk of this radius: the centre, N_RADII x N_ANGLES
    interior points (radii k/N_RADII, k = 1..N_RADII; every other ring's angles shifted
    by half a step) and N_CIRCLE points on the boundary circle."""
    return radius * UNIT_DISK


def float64_twin(model, xp):
    """The same network in float64 on backend xp (float32 values convert exactly)."""
    twin = Sequential([_copy_layer(layer) for layer in model.layers])
    twin.init_params(xp, xp.float64, numpy.random.default_rng(0))
    twin.set_parameters({name: xp.astype(var.value, xp.float64) for name, var in model.parameters().items()})
    return twin


def _copy_layer(layer):
    """A new layer of the same kind and shape (parameters set afterwards)."""
    return layer_from_spec(layer.spec())


def ground_truth_logits(twin, points, xp):
    """(logits, penultimate) of the twin at host points (P, 2) as host float64 arrays: one
    batched forward pass, layer by layer exactly as `Sequential.__call__(x, record=False)`
    runs it (the penultimate activations are kept for the rounding tolerance)."""
    h = to_backend(points.reshape((points.shape[0],) + tuple(twin.input_shape)), xp, xp.float64)  # 2-D, or an image of 2 pixels
    for layer in twin.layers[:-1]:
        h = layer(h, {k: v.value for k, v in layer.params.items()})
    last = twin.layers[-1]
    logits = last(h, {k: v.value for k, v in last.params.items()})
    return to_host(logits), to_host(h)


def counterexamples(twin, xp, centres, radii, expected, ulp):
    """For every ball (centre (2,), radius, expected class), the grid points where another
    class beats `expected` by more than rounding (TOL_ULPS ulp max_j (|W||h| + |b|)_j of
    the last layer at the point): a list of (ball index, point, logits), the first such
    point of each refuted ball. All balls go through one batched forward pass."""
    if not centres:
        return []
    grids = [numpy.asarray(c)[None, :] + disk_grid(r) for c, r in zip(centres, radii)]
    points = numpy.concatenate(grids)
    owner = numpy.repeat(numpy.arange(len(grids)), [g.shape[0] for g in grids])
    want = numpy.asarray(expected)[owner]
    logits, h = ground_truth_logits(twin, points, xp)
    pred = numpy.argmax(logits, axis=1)  # ties: the lowest index, as margins.predictions
    other = numpy.nonzero(pred != want)[0]
    if other.size == 0:
        return []
    last = twin.layers[-1].params
    w, b = (to_host(last[k].value) for k in ("weight", "bias"))
    size = numpy.max(numpy.abs(h[other]) @ numpy.abs(w).T + numpy.abs(b)[None, :], axis=1)
    z = logits[other]
    beaten = z[numpy.arange(other.size), pred[other]] - z[numpy.arange(other.size), want[other]] > TOL_ULPS * ulp * size
    bad, seen = [], set()
    for j in other[beaten]:
        if owner[j] not in seen:
            seen.add(owner[j])
            bad.append((int(owner[j]), points[j].tolist(), logits[j].tolist()))
    return bad


# ---------------------------------------------------------------- the drawn networks
#
# Each hidden neuron gets a state, and its bias (and threshold or clamps) are set so that
# the state holds: either on the envelope (the box around every ball: "off", "lin", "sat",
# "free") or on the first point's ball only, with a margin a small fraction of the ball's
# spread there ("t-off", "t-lin", "t-sat": tight). Tight linear neurons keep their
# pre-activation within a few ball radii of zero, so that the box of the penultimate
# activations meets the sphere ||d|| = R where rounding decides (in a binade near R,
# not far above it), which is where the ball-and-box solver's breakpoint logic is tested.
# Pre-activation ranges over the first ball are the interval bound intersected with the
# ball bound (the ball's radius times the row's norm over the live inputs, the radius grown
# by each layer's norm restricted to live rows and columns): valid bounds, so every state
# truly holds where it is claimed.

LIVE = ("lin", "t-lin", "free")
KINDS = {"relu": ("off", "lin", "free", "t-off", "t-lin"),
         "clipped_relu": ("off", "lin", "sat", "free", "t-off", "t-lin", "t-sat"),
         "maxmin": ("lin", "sat", "half-sat", "free", "t-lin", "t-sat")}  # per pair (a_i, a_{i + half})
CONSTANT = {"relu": ("off", "t-off"), "clipped_relu": ("off", "t-off", "sat", "t-sat"),
            "maxmin": ("sat", "t-sat")}


@st.composite
def networks(draw):
    """A drawn case: the structure by hypothesis, the numbers from a drawn seed (so a
    failure prints everything needed to rebuild it with `build_case`)."""
    activation = draw(st.sampled_from(["relu", "clipped_relu", "maxmin"]))
    depth = draw(st.integers(1, 2))
    if activation == "maxmin":
        widths = [2 * draw(st.integers(1, 4)) for _ in range(depth)]
    else:
        widths = [draw(st.integers(2, 8)) for _ in range(depth)]
    return {
        "activation": activation,
        "widths": widths,
        "n_classes": draw(st.integers(2, 4)),
        "config": draw(st.sampled_from(CONFIGS)),
        # "one": one live neuron (MaxMin: one pair, its rows proportional) per layer, the
        # others constant; "rank1": a few live ones with proportional weight rows (the
        # masked layer has rank one, so the box corner lies on the sphere, too)
        "pattern": draw(st.sampled_from(["one", "one", "rank1", "mixed", "free", "constant-heavy"])),
        "ties": draw(st.sampled_from(["none", "all-rows", "two-rows", "mixed", "mixed"])),
        "big_dead": draw(st.booleans()),
        # eps over the GloRo radius of the first point with the local norms of its ball
        "eps_factor": draw(st.sampled_from([1e-3, 0.1, 0.5, 0.9, 0.99, 1.01, 1.1, 1.5, 2.0, 5.0, 100.0])),
        "seed": draw(st.integers(0, 2 ** 32 - 1)),
    }


def _states(rng, act, pattern, n):
    kinds, constant = KINDS[act], CONSTANT[act]
    if pattern in ("one", "rank1"):
        s = [str(v) for v in rng.choice(constant, n)]
        n_live = 1 if pattern == "one" else int(rng.integers(1, n + 1))
        for i in rng.choice(n, n_live, replace=False):
            s[int(i)] = "t-lin" if rng.uniform() < 0.7 else "lin"
        return s
    if pattern == "free":
        return ["free"] * n
    if pattern == "constant-heavy":
        p = numpy.array([4.0 if k in constant else 1.0 for k in kinds])
        return [str(v) for v in rng.choice(kinds, n, p=p / p.sum())]
    return [str(v) for v in rng.choice(kinds, n)]


def _interval(w, lo, hi):
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    c, r = w @ centre, numpy.abs(w) @ half
    return c - r, c + r


def _relu_like(rng, states, env, ball, clipped):
    """Biases (and thresholds) per neuron. env, ball: (lo, hi) pre-activation ranges
    without bias over the envelope and over the first ball."""
    (elo, ehi), (blo, bhi) = env, ball
    n = elo.shape[0]
    bias, theta = numpy.zeros(n), numpy.zeros(n)
    for i, s in enumerate(states):
        ew, bw = ehi[i] - elo[i] + 1e-3, bhi[i] - blo[i]
        gap = rng.uniform(0.05, 1.0) * ew  # envelope states: margins of the envelope's size
        tight = rng.uniform(1e-3, 1.0) * bw + 1e-9  # tight states: a fraction of the ball's
        theta[i] = rng.uniform(0.05, 2.0) * ew
        if s == "off":
            bias[i] = -ehi[i] - gap
        elif s == "lin":
            bias[i] = -elo[i] + gap
            theta[i] = ehi[i] + bias[i] + rng.uniform(0.05, 1.0) * ew
        elif s == "sat":
            bias[i] = -elo[i] + gap
            theta[i] = rng.uniform(0.05, 0.95) * gap
        elif s == "free":
            bias[i] = -(elo[i] + ehi[i]) / 2 + rng.uniform(-0.5, 0.5) * ew
        elif s == "t-off":
            bias[i] = -bhi[i] - tight
        elif s == "t-lin":
            bias[i] = -blo[i] + tight
            theta[i] = bhi[i] + bias[i] + rng.uniform(1e-3, 1.0) * bw + 1e-9
        elif s == "t-sat":
            theta[i] = rng.uniform(0.1, 2.0) * bw + 1e-3
            bias[i] = -blo[i] + theta[i] + tight
    return bias, (theta if clipped else None)


def _maxmin(rng, states, env, ball, diff_half):
    """Biases (the first neuron of each pair only) and (max, min) clamps per pair, with
    max > min: "lin" and "t-lin" (a > b, clamps out of reach: linear), "sat" and "t-sat"
    (a > b, both outputs clamped: constant), "half-sat" (the max output clamped, the min
    free), "free". diff_half: a bound on the spread of a_i - b_i over the first ball."""
    (elo, ehi), (blo, bhi) = env, ball
    half = elo.shape[0] // 2
    bias, top, bottom = numpy.zeros(2 * half), numpy.zeros(half), numpy.zeros(half)
    for i, s in enumerate(states):
        j = i + half
        scale = ehi[i] - elo[i] + ehi[j] - elo[j] + 1e-3
        bscale = bhi[i] - blo[i] + bhi[j] - blo[j]
        u = rng.uniform(0.05, 1.0, 3)
        t = rng.uniform(1e-3, 1.0, 3) * bscale + 1e-9
        if s == "lin":  # a above b on the envelope, clamps out of reach: linear
            bias[i] = ehi[j] - elo[i] + u[0] * scale
            top[i], bottom[i] = ehi[i] + bias[i] + u[1] * scale, elo[j] - u[2] * scale
        elif s == "half-sat":  # the max clamped, the min free
            bias[i] = rng.uniform(-0.5, 0.5) * scale
            top[i] = min(elo[i] + bias[i], elo[j]) - u[0] * scale
            bottom[i] = top[i] - u[1] * scale
        elif s == "sat":  # a above b, the max clamp below a, the min clamp above b: constant
            bias[i] = ehi[j] - elo[i] + u[0] * scale
            bottom[i] = ehi[j] + rng.uniform(0.05, 0.45) * u[0] * scale
            top[i] = ehi[j] + rng.uniform(0.55, 0.95) * u[0] * scale
        elif s == "free":
            bias[i] = rng.uniform(-0.5, 0.5) * scale
            mid = (elo[i] + ehi[i] + elo[j] + ehi[j]) / 4 + bias[i] / 2
            top[i] = mid + rng.uniform(-0.3, 1.0) * scale
            bottom[i] = top[i] - rng.uniform(0.05, 1.5) * scale
        elif s == "t-lin":  # a - b just above 0 on the first ball, clamps just out of reach
            centre = (blo[i] + bhi[i]) / 2 - (blo[j] + bhi[j]) / 2
            bias[i] = -centre + diff_half[i] + t[0]
            top[i], bottom[i] = bhi[i] + bias[i] + t[1], blo[j] - t[2]
        else:  # "t-sat": min a just above max b on the first ball, both clamped
            bias[i] = bhi[j] - blo[i] + t[0]
            bottom[i] = bhi[j] + rng.uniform(0.05, 0.45) * t[0]
            top[i] = bhi[j] + rng.uniform(0.55, 0.95) * t[0]
    return bias, top, bottom


def _act_host(act, pre, extra):
    if act == "relu":
        return numpy.maximum(pre, 0)
    if act == "clipped_relu":
        return numpy.minimum(numpy.maximum(pre, 0), extra[0])
    half = pre.shape[-1] // 2
    a, b = pre[..., :half], pre[..., half:]
    return numpy.concatenate([numpy.minimum(numpy.maximum(a, b), extra[0]),
                              numpy.maximum(numpy.minimum(a, b), extra[1])], axis=-1)


def _masked_norm(w, rows, cols):
    sub = w[numpy.ix_(rows, cols)]
    return float(numpy.linalg.norm(sub, 2)) if sub.size else 0.0


def build_case(case, xp):
    """(model on xp in the case's dtype, host points (N, 2), host labels, eps). The first
    point's ball is the designed one (tight states, the margin set against eps)."""
    rng = numpy.random.default_rng(case["seed"])
    dtype = case["config"][0]
    np_dtype = getattr(numpy, dtype)
    act = case["activation"]
    eps = float(np_dtype(10.0 ** rng.uniform(-3, math.log10(EPS_CAP))))  # exact in the dtype
    # the designed point, N_JITTERED copies moved by ~1e-5 eps (the states and the margin
    # still hold there, the roundings differ), and random points
    points = rng.uniform(-1, 1, (N_POINTS, 2))
    points[1:1 + N_JITTERED] = points[0] + 1e-5 * eps * rng.uniform(-1, 1, (N_JITTERED, 2))
    points = points.astype(numpy.float32).astype(numpy.float64)
    env = (points.min(axis=0) - eps, points.max(axis=0) + eps)  # holds every ball
    ball = (points[0] - eps, points[0] + eps)  # the first ball's box ...
    value, radius = points[0], eps  # ... its centre, and the radius of its image
    live_in = numpy.ones(2, dtype=bool)
    layers, params, index, fan_in = [], {}, 0, 2
    for width in case["widths"]:
        n_states = width // 2 if act == "maxmin" else width
        states = _states(rng, act, case["pattern"], n_states)
        per_neuron = states + states if act == "maxmin" else states
        w = rng.normal(size=(width, fan_in)) * 10.0 ** rng.uniform(-1, 1)
        live_rows = numpy.array([s in LIVE or s == "half-sat" for s in per_neuron])
        if case["pattern"] == "rank1" or case["pattern"] == "one" and act == "maxmin":
            direction = rng.normal(size=fan_in)
            w[live_rows] = rng.uniform(0.3, 2.0, (int(live_rows.sum()), 1)) * numpy.sign(
                rng.uniform(-1, 1, (int(live_rows.sum()), 1))) * direction
        pre = w @ value
        spread = radius * numpy.sqrt((w * w) @ live_in)  # the ball bound's half-width
        ilo, ihi = _interval(w, *ball)
        bball = (numpy.maximum(pre - spread, ilo), numpy.minimum(pre + spread, ihi))
        benv = _interval(w, *env)
        layers.append(Linear(fan_in, width))
        params[f"{index}.weight"] = w
        if act == "maxmin":
            h = width // 2
            diff = w[:h] - w[h:]
            diff_half = numpy.minimum(radius * numpy.sqrt((diff * diff) @ live_in),
                                      (bball[1] - bball[0])[:h] / 2 + (bball[1] - bball[0])[h:] / 2)
            b, top, bottom = _maxmin(rng, states, benv, bball, diff_half)
            extra = (top, bottom)
            layers.append(ClampedMaxMin((width,), 1.0))
            params[f"{index + 1}.max"], params[f"{index + 1}.min"] = top, bottom
            # which outputs can move on the first ball: both of lin, t-lin and free pairs,
            # the min of half-sat ones; the rows they read: both of each such pair
            live_out = numpy.array([s in LIVE for s in states] + [s in LIVE or s == "half-sat" for s in states])
            rows = numpy.array([s in LIVE or s == "half-sat" for s in per_neuron])
            zero_out = numpy.zeros(width, dtype=bool)
        else:
            b, theta = _relu_like(rng, states, benv, bball, act == "clipped_relu")
            extra = (theta,)
            layers.append(ReLU((width,)) if theta is None else ClippedReLU((width,), 1.0))
            if theta is not None:
                params[f"{index + 1}.threshold"] = theta
            live_out = rows = numpy.array([s in LIVE for s in states])
            zero_out = numpy.array([s in ("off", "t-off") for s in states])
        params[f"{index}.bias"] = b
        radius = radius * _masked_norm(w, rows, live_in)  # MaxMin is 1-Lipschitz on its pairs
        value = _act_host(act, pre + b, extra)
        ball = (_act_host(act, bball[0] + b, extra), _act_host(act, bball[1] + b, extra))
        env = (_act_host(act, benv[0] + b, extra), _act_host(act, benv[1] + b, extra))
        live_in, index, fan_in = live_out, index + 2, width
    k = case["n_classes"]
    w_last = rng.normal(size=(k, fan_in)) * 10.0 ** rng.uniform(-1, 1)
    # the last bias (below) puts class y ahead of s at the first point
    y, s = (int(v) for v in rng.choice(k, 2, replace=False))
    # ties: a column with the same weight in every row, or in two rows (often y and s),
    # for most constant columns and a few live ones (all of them would make rows equal)
    for col in range(fan_in):
        tie = case["ties"] if case["ties"] != "mixed" else str(rng.choice(["none", "all-rows", "two-rows"]))
        if rng.uniform() > (0.2 if live_in[col] else 0.7):
            continue
        if tie == "all-rows":
            w_last[:, col] = w_last[int(rng.integers(k)), col]
        elif tie == "two-rows":
            r1, r2 = (y, s) if rng.uniform() < 0.5 else rng.choice(k, 2, replace=False)
            w_last[r2, col] = w_last[r1, col]
    if case["big_dead"] and numpy.any(zero_out):
        big = 1e4 if dtype == "float32" else float(rng.choice([1e7, 1e8]))
        cols = numpy.nonzero(zero_out)[0]
        w_last[:, cols] = big * rng.uniform(0.5, 1.5, (k, cols.shape[0]))
        if rng.uniform() < 0.5:  # and every other one tied across classes
            w_last[:, cols[::2]] = w_last[:1, cols[::2]]
    # the margin at the first point: eps / eps_factor times the local GloRo rate
    # (radius / eps) ||(w_s - w_y) on live inputs||; the other classes further behind
    rate = radius / eps * float(numpy.linalg.norm((w_last[s] - w_last[y])[live_in]))
    gap = eps * rate / case["eps_factor"] if rate > 0 else eps * 10.0 ** rng.uniform(-3, 0)
    target = -gap * (1 + rng.uniform(0, 3, k))
    target[y], target[s] = 0.0, -gap
    params[f"{index}.weight"] = w_last
    params[f"{index}.bias"] = target - w_last @ value
    layers.append(Linear(fan_in, k))
    model = Sequential(layers)
    model.init_params(xp, getattr(xp, dtype), numpy.random.default_rng(0))
    model.set_parameters({name: to_backend(numpy.asarray(v, dtype=np_dtype), xp, getattr(xp, dtype))
                          for name, v in params.items()})
    logits = to_host(model(to_backend(points, xp, getattr(xp, dtype)), record=False))
    labels = numpy.argmax(logits, axis=1)
    wrong = rng.uniform(size=N_POINTS) < 0.3  # a few wrong labels: never certified, radius 0
    wrong[:1 + N_JITTERED] = False  # (not on the designed points)
    labels = numpy.where(wrong, (labels + 1 + rng.integers(0, k - 1, N_POINTS)) % k, labels)
    return model, points, labels.astype(numpy.int64), eps


# ---------------------------------------------------------------- the property


def check_case(case, xp):
    """Certify the drawn points and hold every certificate and radius against the grid."""
    model, points, labels, eps = build_case(case, xp)
    dtype, mode = case["config"]
    res = certify(model, points, labels, eps, CertifyConfig(mode=mode, n_iters=N_ITERS, batch_size=N_POINTS, pgd_steps=0), rng=numpy.random.default_rng(case["seed"] + 1))
    check_against_grid(res, float64_twin(model, xp), xp, points, labels, eps, dtype, mode)
    return res


def check_against_grid(res, twin, xp, points, labels, eps, dtype, mode):
    """Hold every certificate and certified radius of `res` (a Certification of `points`, of a
    model in `dtype` certified in `mode`) against the grid of the float64 network `twin`,
    which computes the certified model's classes."""
    centres, radii, expected, what = [], [], [], []
    for i in range(len(points)):
        pred = int(res.predictions[i])
        cert_l, cert_g = bool(res.certified_local[i]), bool(res.certified_global[i])
        r_l, r_g = float(res.radius_local[i]), float(res.radius_global[i])
        assert not (math.isnan(r_l) or math.isnan(r_g)), f"sample {i}: radius NaN ({r_l}, {r_g})"
        if cert_l or cert_g or r_l > 0 or r_g > 0:
            assert pred == int(labels[i]), (
                f"sample {i}: certified or given a radius ({cert_l}, {cert_g}, {r_l}, {r_g}) "
                f"with label {int(labels[i])} != prediction {pred}")
        assert r_l <= eps, f"sample {i}: local radius {r_l} above eps {eps} (a local bound holds on the eps-ball only)"
        if cert_l:
            assert r_l >= eps, f"sample {i}: certified at eps {eps} with local radius {r_l}"
        if cert_g:
            assert r_g >= eps, f"sample {i}: certified at eps {eps} with global radius {r_g}"
        balls = []
        if cert_l or cert_g:
            balls.append((eps, f"certified at eps (local {cert_l}, global {cert_g})"))
        if 0 < r_l and not (cert_l and r_l == eps):
            balls.append((r_l, "radius_local"))
        if 0 < r_g:
            capped = min(r_g, 4 * eps)
            if not ((cert_l or cert_g) and capped == eps):
                balls.append((capped, f"radius_global {r_g} (checked up to 4 eps)"))
        for r, why in balls:
            centres.append(points[i])
            radii.append(r)
            expected.append(pred)
            what.append(f"sample {i} x={points[i].tolist()} label {int(labels[i])} prediction {pred}: {why}, r={r}")
    bad = counterexamples(twin, xp, centres, radii, expected, ULP[dtype])
    assert not bad, (f"{dtype} {mode} eps={eps}: the prediction changes inside a certified ball:\n" +
                     "\n".join(f"  {what[i]}: at {p} logits {z}" for i, p, z in bad))


@pytest.mark.property  # its @given is built per backend, out of conftest's sight: CI's plain-definitions pass runs it
def test_certificates_hold_on_a_dense_grid(xp):
    """Every certificate and certified radius of `certify` on drawn 2-D networks holds on a
    dense grid of its ball (see the module docstring for what is drawn and why the grid
    is a valid, necessary check). 300 examples on NumPy, 40 elsewhere."""
    n = EXAMPLES.get(_backend_name(xp), EXAMPLES_OTHER)

    @settings(max_examples=n, print_blob=True)
    @given(case=networks())
    def run(case):
        check_case(case, xp)

    run()


# ---------------------------------------------------------------- the regression nets


REG_X = numpy.array([[0.5, 0.5]])
REG_LABEL = numpy.array([0])
TRUE_RADIUS = 1.0 / 3.0
SWEEP = numpy.linspace(0.34, 0.95, 30)


def regression_net(xp, dtype, n_dead=0, big=0.0):
    """Linear(2, 2) weight I, bias (1, -100); ReLU; Linear(2, 2) weight [[3, 1], [0, 1]],
    bias (-3.5, 0). At x = (0.5, 0.5) the second neuron is dead on every ball here and the
    margin z_0 - z_1 = 3 relu(x_0 + 1) - 3.5 is 1 at x and 0 at x - e_0 / 3, so the
    certified radius is 1/3 (w_1 - w_0 = (-3, 0): an exact zero on the dead neuron). With
    n_dead > 0: that many more dead neurons (bias -100), last-layer weights big x U(0.5, 1.5),
    different per class."""
    width = 2 + n_dead
    w1 = numpy.zeros((width, 2))
    w1[0, 0] = w1[1, 1] = 1.0
    b1 = numpy.full(width, -100.0)
    b1[0] = 1.0
    w2 = numpy.zeros((2, width))
    w2[:, :2] = [[3.0, 1.0], [0.0, 1.0]]
    if n_dead:
        rng = numpy.random.default_rng(4)
        w1[2:] = rng.uniform(-1, 1, (n_dead, 2))
        w2[:, 2:] = big * rng.uniform(0.5, 1.5, (2, n_dead))
    b2 = numpy.array([-3.5, 0.0])
    model = Sequential([Linear(2, width), ReLU((width,)), Linear(width, 2)])
    model.init_params(xp, getattr(xp, dtype), numpy.random.default_rng(0))
    model.set_parameters({name: to_backend(v, xp, getattr(xp, dtype)) for name, v in
                          {"0.weight": w1, "0.bias": b1, "2.weight": w2, "2.bias": b2}.items()})
    return model


def _check_regression(xp, dtype, mode, n_dead=0, big=0.0):
    model = regression_net(xp, dtype, n_dead, big)
    twin = float64_twin(model, xp)
    # the network is what the docstring says: the prediction flips just beyond 1/3 along
    # -e_0 (independent of lipref's bounds), and not on a grid of the ball of radius 1/3
    beyond = REG_X - numpy.array([[TRUE_RADIUS * (1 + 1e-9), 0.0]])
    z = to_host(twin(to_backend(beyond, xp, xp.float64), record=False))
    assert int(numpy.argmax(z[0])) == 1, z
    assert not counterexamples(twin, xp, [REG_X[0]], [TRUE_RADIUS], [0], ULP[dtype])

    def run(eps):
        return certify(model, REG_X, REG_LABEL, float(eps), CertifyConfig(mode=mode, n_iters=N_ITERS_REGRESSION, batch_size=1, pgd_steps=0), rng=numpy.random.default_rng(3))

    # float64: strictly at most 1/3 (the double nearest 1/3 is below it). float32 rounds
    # the radius to the nearest float32, which for 1/3 is above it; fast mode makes no
    # promise about rounding, so a float32 radius may exceed 1/3 by 4 float32 ulps at most
    radius_cap = TRUE_RADIUS if dtype == "float64" else TRUE_RADIUS * (1 + 4 * ULP["float32"])
    res = run(0.3)
    assert bool(res.certified_local[0]), "the local bound must certify eps 0.3 < 1/3"
    assert float(res.radius_local[0]) >= 0.3
    wrong = []
    for eps in SWEEP if _backend_name(xp) == "numpy" else SWEEP[::4]:
        res = run(eps)
        cert = bool(res.certified_local[0]) or bool(res.certified_global[0])
        r_l, r_g = float(res.radius_local[0]), float(res.radius_global[0])
        if cert or r_l > radius_cap or r_g > radius_cap:
            wrong.append(f"eps {eps:.4f}: certified local {bool(res.certified_local[0])} "
                         f"global {bool(res.certified_global[0])}, radius local {r_l!r} global {r_g!r}")
    assert not wrong, f"{dtype} {mode}: the true certified radius is 1/3, yet\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("dtype,mode", CONFIGS)
def test_tied_column_on_a_dead_neuron_is_not_certified_beyond_one_third(xp, dtype, mode):
    """The net of `regression_net`: certified at eps 0.3, never in [0.34, 0.95], radius <= 1/3
    (float32: up to rounding to float32, see `_check_regression`)."""
    _check_regression(xp, dtype, mode)


@pytest.mark.parametrize("dtype,mode,big", [("float32", "fast", 1e4), ("float64", "fast", 1e7),
                                            ("float64", "fast", 1e8), ("float64", "sound", 1e7),
                                            ("float64", "sound", 1e8)])
def test_huge_weights_on_dead_neurons_do_not_cancel_the_margin(xp, dtype, mode, big):
    """The same net with 40 more dead neurons whose last-layer weights are `big` (different
    per class): their squares swamp the live neuron's in a sum of squares, which must not
    change the certificate."""
    _check_regression(xp, dtype, mode, n_dead=40, big=big)


def test_the_grid_finds_a_flip_just_inside_the_boundary(xp):
    """The ground truth itself can fail: on the regression net the ball of radius
    1/3 (1 + 1e-6) holds a flipping sliver of depth 1e-6 / 3 near -e_0, found by the
    boundary circle; the ball of radius 0.3 holds none."""
    twin = float64_twin(regression_net(xp, "float64"), xp)
    bad = counterexamples(twin, xp, [REG_X[0], REG_X[0]], [TRUE_RADIUS * (1 + 1e-6), 0.3], [0, 0],
                          ULP["float64"])
    assert [b[0] for b in bad] == [0], bad
    assert bad[0][1][0] < REG_X[0, 0] - 0.3
