"""Certificates against the exact radius, in 3 to 6 dimensions (tests/exact_radius.py).

The ground truth. `exact_radius` brackets the least l2 distance r* from x to a point where the
network predicts another class than the label between two proved bounds, which agree to about
1e-11 here (see its module docstring): `upper` has a witness that the exact forward pass sends
to another class, `lower` a weak-duality certificate for every region. A certificate of
`certify` at eps promises that no point of the closed eps-ball flips; so a certificate at
eps > upper, or a certified radius above upper, is wrong, whatever the reason, and the test
says so with the witness. Nothing of lipref's bound machinery takes part in the ground truth:
only the model's parameters are read (exactly, as stored).

The solver is checked first: on hand-made nets whose radius is known in closed form, against
the dense grid of tests/test_certificate_grid.py on 2-D inputs, and against flips searched
along 900 rays in 3-6 dimensions (none may lie nearer than `lower`; forward passes in float64,
a flip counted beyond 1024 ulp of the logits).

What is drawn (`networks`): input dimension 3-6; ReLU or clipped ReLU; one hidden layer of 2-10
units or two of 2-5; 2-4 classes; weights of scales 0.3-3; a radius scale rho in 0.03-1; around
the first point, neurons dead, linear, saturated (clipped ReLU) or switching within about rho
("one-live": one linear neuron per layer, the others constant far beyond rho, where the local
bound is nearly exact); last-layer columns tied across all classes or two; the last bias puts
the first point's margin at 0.3-2 rho times its linear rate. The first point and two near it;
the label is lipref's prediction (a wrong label on the last point: its radius is 0); radii are
searched up to CAP rho. Each example certifies in fast mode (float32 or float64 models, 150
power iterations) or sound mode (float64) at eps = upper (1 + delta) for each point, and at half
the smallest radius. Fast mode makes no promise about rounding: there a certificate may exceed
upper by 1024 ulp of the model's precision (relative) at most; in sound mode by nothing.
A 0.01% smaller penultimate radius in `certify_bounds` fails this within 100 examples.

The constructions of issue 25 (underflow in the walk; squared weights that underflow; a float64
ONNX or torch model rounded to float32 at import) are certified here against their exact radii.
They fail until the fixes of those bugs are merged (branches sound-underflow, imports-precision).
A one-line refusal (a UserError) is a sound answer for them; a certificate beyond r* is not.
"""
import math
from fractions import Fraction

import numpy
import pytest
from exact_radius import ExactNet, exact_radius
from hypothesis import given, settings
from hypothesis import strategies as st
from test_certificate_grid import disk_grid

from lipref.backend import to_backend, to_host
from lipref.certification import CertifyConfig, certify
from lipref.errors import UserError
from lipref.layers import ClippedReLU, Linear, ReLU, Sequential

CONFIGS = (("float32", "fast"), ("float64", "fast"), ("float64", "sound"))
TOL = {("float32", "fast"): 1024 * 2.0 ** -24, ("float64", "fast"): 1024 * 2.0 ** -53, ("float64", "sound"): 0.0}
DELTAS = (1e-9, 1e-6, 1e-3, 0.05, 0.5)
N_POINTS = 3
N_ITERS = 150  # power-iteration steps: converged on these layers of at most 10 units
CAP = 4.0  # radii are searched up to CAP times the drawn radius scale (about 80% of points are nearer)
GAP = 1e-6  # the relative width the brackets must have (they reach about 1e-9)
EXAMPLES_OTHER = 5  # drawn certificate examples on array-api-strict (about 1.4 s each, NumPy 0.2 s)


def _backend_name(xp):
    return xp.__name__.split(".")[-1]


# ---------------------------------------------------------------- a plain float64 forward pass


def forward(params, points):
    """Logits of the network `params` [(W, b, activation, theta)] at points (P, n), float64."""
    h = numpy.asarray(points, dtype=numpy.float64)
    for w, b, act, theta in params:
        h = h @ numpy.asarray(w, dtype=numpy.float64).T + numpy.asarray(b, dtype=numpy.float64)
        if act is not None:
            h = numpy.maximum(h, 0.0)
        if act == "clipped_relu":
            h = numpy.minimum(h, numpy.asarray(theta, dtype=numpy.float64))
    return h


def clearly_flipped(params, points, label):
    """Which points another class beats `label` at by more than 1024 ulp of the logits' size
    (so float64 rounding never makes a flip)."""
    z = forward(params, points)
    size = 1.0 + numpy.max(numpy.abs(z), axis=1)
    others = numpy.delete(z, label, axis=1)
    return numpy.max(others, axis=1) - z[:, label] > 1024 * 2.0 ** -53 * size


def exact_net(params):
    return ExactNet.from_arrays([p[0] for p in params], [p[1] for p in params], [p[2] for p in params[:-1]],
                                [p[3] for p in params[:-1]])


def lipref_model(params, xp, dtype):
    """The lipref Sequential of `params` on backend xp with parameters of dtype."""
    layers, values = [], {}
    for w, b, act, theta in params:
        index = len(layers)
        layers.append(Linear(w.shape[1], w.shape[0]))
        values[f"{index}.weight"], values[f"{index}.bias"] = w, b
        if act == "relu":
            layers.append(ReLU((w.shape[0],)))
        elif act == "clipped_relu":
            layers.append(ClippedReLU((w.shape[0],), 1.0))
            values[f"{index + 1}.threshold"] = theta
    model = Sequential(layers)
    model.init_params(xp, getattr(xp, dtype), numpy.random.default_rng(0))
    model.set_parameters({k: to_backend(numpy.asarray(v), xp, getattr(xp, dtype)) for k, v in values.items()})
    return model


# ---------------------------------------------------------------- the solver: closed forms


def _net(*layers):
    return [(numpy.asarray(w, dtype=float), numpy.asarray(b, dtype=float), act, theta) for w, b, act, theta in layers]


HAND_MADE = {
    # z_1 = x . (1, 2, 3) - 7, z_0 = 0 at x = (1, 1, 1): the plane at distance 1 / sqrt(14)
    "linear": (_net(([[0, 0, 0], [1, 2, 3]], [0, -7], None, None)), [1, 1, 1], 0, (1, 14)),
    # z_1 = 4 relu(x_0 - 1/2) + relu(x_1), z_0 = 1 at 0: nearest in the region x_0 >= 1/2, at 3 / sqrt(17)
    # (the region of x itself only reaches z_1 = 1 at distance 1)
    "other region": (_net((numpy.eye(3), [-0.5, 0, 0], "relu", None), ([[0, 0, 0], [4, 1, 0]], [1, 0], None, None)),
                     [0, 0, 0], 0, (9, 17)),
    # z_1 = 3 clip(x_0, 1/2) + x_1, z_0 = 1.2 at (-1, -1, 0): a corner of two regions, (1/2, -0.3)
    "clipped corner": (_net((numpy.eye(3), [0, 10, 0], "clipped_relu", [0.5, 100, 1]),
                            ([[0, 0, 0], [3, 1, 0]], [1.2, -10], None, None)), [-1, -1, 0], 0, (274, 100)),
    # z_0 = clip(x_0, 1/2), z_1 = 1/2, label 1 at (-1, 0, 0): the tie at x_0 = 1/2 goes to class 0
    "tie to the lower index": (_net((numpy.eye(3), [0, 0, 0], "clipped_relu", [0.5, 1, 1]),
                                    ([[1, 0, 0], [0, 0, 0]], [0, 0.5], None, None)), [-1, 0, 0], 1, (9, 4)),
    # the same with the classes swapped: the tie never flips label 0, which therefore never changes
    "tie to the label": (_net((numpy.eye(3), [0, 0, 0], "clipped_relu", [0.5, 1, 1]),
                              ([[0, 0, 0], [1, 0, 0]], [0.5, 0], None, None)), [-1, 0, 0], 0, None),
    # tests/test_certificate_grid.py's regression net (2-D): radius 1/3
    "grid regression": (_net((numpy.eye(2), [1, -100], "relu", None), ([[3, 1], [0, 1]], [-3.5, 0], None, None)),
                        [0.5, 0.5], 0, (1, 9)),
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_the_solver_finds_the_closed_form_radius(name):
    params, x, label, square = HAND_MADE[name]
    r = exact_radius(exact_net(params), x, label)
    if square is None:
        assert r.lower_sq == math.inf and r.upper_sq == math.inf, (r.lower, r.upper)
        return
    truth = Fraction(*square)
    assert r.lower_sq <= truth <= r.upper_sq, (r.lower, math.sqrt(truth), r.upper)
    assert r.upper <= r.lower * (1 + 1e-9), (r.lower, r.upper)


# ---------------------------------------------------------------- the drawn networks

STATES = {"relu": ("off", "on", "free", "free"), "clipped_relu": ("off", "on", "sat", "free", "free", "top")}


@st.composite
def networks(draw, dims=(3, 6)):
    """A drawn case: the structure by hypothesis, the numbers from a drawn seed (a failure
    prints everything needed to rebuild it with `build_case`)."""
    depth = draw(st.integers(1, 2))
    return {
        "dim": draw(st.integers(*dims)),
        "activation": draw(st.sampled_from(["relu", "clipped_relu"])),
        "widths": [draw(st.integers(2, 10))] if depth == 1 else [draw(st.integers(2, 5)) for _ in range(2)],
        "n_classes": draw(st.integers(2, 4)),
        "ties": draw(st.sampled_from(["none", "all-rows", "two-rows"])),
        # "one-live": one linear neuron per layer, the others dead or saturated far from the
        # points: the local bound is then nearly exact, and certificates come close to r*
        "pattern": draw(st.sampled_from(["mixed", "mixed", "one-live"])),
        "config": draw(st.sampled_from(CONFIGS)),
        "delta": draw(st.sampled_from(DELTAS)),
        "seed": draw(st.integers(0, 2 ** 32 - 1)),
    }


def _states(rng, act, pattern, width):
    if pattern == "one-live":
        states = rng.choice(["off", "sat"] if act == "clipped_relu" else ["off"], width)
        states[rng.integers(width)] = "on"
        return states
    return rng.choice(STATES[act], width)


def _hidden_layer(rng, act, pattern, value, jac, width, rho):
    """(W, b, theta) of a layer whose neurons, at the activations `value` of the first point
    (Jacobian `jac`), are dead, linear, saturated or switch within a ball of radius about rho."""
    w = rng.normal(size=(width, value.shape[0])) * 10.0 ** rng.uniform(-0.5, 0.5)
    spread = rho * numpy.linalg.norm(w @ jac, axis=1)
    spread = numpy.where(spread > 0, spread, rho)
    reach = (1.5, 4.0) if pattern == "mixed" else (5.0, 12.0)  # one-live: the others stay constant
    far, near = spread * rng.uniform(*reach, width), spread * rng.uniform(-0.7, 0.7, width)
    theta = numpy.zeros(width)
    offset = numpy.zeros(width)  # the pre-activation at the first point
    for i, state in enumerate(_states(rng, act, pattern, width)):
        offset[i] = {"off": -far[i], "free": near[i]}.get(state, far[i])
        theta[i] = {"sat": 0.5 * far[i] * rng.uniform(0.1, 0.9), "top": max(far[i] + near[i], 0.0),
                    "free": 3 * far[i]}.get(state, 2 * far[i])
    return w, offset - w @ value, theta


def build_case(case):
    """(params, points, rho): the network as [(W, b, activation, theta)] in the model's dtype,
    N_POINTS points (float64 arrays holding values of that dtype), the drawn radius scale."""
    rng = numpy.random.default_rng(case["seed"])
    act, n, k = case["activation"], case["dim"], case["n_classes"]
    dtype = numpy.dtype(case["config"][0])
    rho = 10.0 ** rng.uniform(-1.5, 0.0)
    x0 = rng.uniform(-1, 1, n).astype(dtype).astype(numpy.float64)
    value, jac, params = x0, numpy.eye(n), []
    for width in case["widths"]:
        drawn = _hidden_layer(rng, act, case["pattern"], value, jac, width, rho)
        w, b, theta = (a.astype(dtype).astype(numpy.float64) for a in drawn)
        params.append((w, b, act, theta if act == "clipped_relu" else None))
        pre = w @ value + b
        live = (pre > 0) & ((pre < theta) if act == "clipped_relu" else True)
        value, jac = forward(params[-1:], value[None, :])[0], live[:, None] * (w @ jac)
    w = rng.normal(size=(k, value.shape[0])) * 10.0 ** rng.uniform(-0.5, 0.5)
    y, s = (int(v) for v in rng.choice(k, 2, replace=False))
    for col in range(value.shape[0]):  # tied columns: exact zeros in w_j - w_y
        if case["ties"] == "all-rows" and rng.uniform() < 0.4:
            w[:, col] = w[int(rng.integers(k)), col]
        elif case["ties"] == "two-rows" and rng.uniform() < 0.5:
            w[s, col] = w[y, col]
    rate = float(numpy.linalg.norm((w[s] - w[y]) @ jac))
    gap = rho * (rate if rate > 0 else 1.0) * rng.uniform(0.3, 2.0)
    target = -gap * (1 + rng.uniform(0, 3, k))
    target[y], target[s] = 0.0, -gap
    params.append((w.astype(dtype).astype(numpy.float64), (target - w @ value).astype(dtype).astype(numpy.float64),
                   None, None))
    jitter = rng.normal(size=(N_POINTS - 1, n)) * 0.5 * rho / math.sqrt(n)
    points = numpy.concatenate([x0[None, :], x0 + jitter]).astype(dtype).astype(numpy.float64)
    return params, points, rho


# ---------------------------------------------------------------- the solver: grids and rays


def _check_bracket(params, x, label, rho):
    """The bracket of (x, label): tight, and no flip nearer than `lower` on a dense grid of the
    disk (2-D) or along rays (random directions, and directions near the witness's)."""
    r = exact_radius(exact_net(params), x, label, cap=CAP * rho)
    if r.upper_sq == math.inf:
        return r  # beyond the cap: nothing to compare
    assert r.upper - r.lower <= GAP * r.upper, (r.lower, r.upper)
    if r.upper_sq == 0:
        return r
    radius = r.lower * (1 - 1e-9)
    if len(x) == 2:
        points = x + disk_grid(radius)
    else:
        rng = numpy.random.default_rng(0)
        aim = (numpy.asarray(r.witness) - x) / r.upper
        directions = numpy.concatenate([rng.normal(size=(600, len(x))),
                                        aim + rng.normal(size=(300, len(x))) * rng.uniform(1e-4, 0.3, (300, 1))])
        directions /= numpy.linalg.norm(directions, axis=1, keepdims=True)
        steps = radius * numpy.linspace(0.0, 1.0, 40)
        points = (x + steps[:, None, None] * directions[None]).reshape(-1, len(x))
    flipped = clearly_flipped(params, points, label)
    assert not flipped.any(), (f"a flip at {points[flipped][0].tolist()}, nearer than the proved lower bound "
                               f"{r.lower} (upper {r.upper})")
    return r


@settings(print_blob=True)
@given(case=networks(dims=(2, 6)))
def test_no_flip_lies_nearer_than_the_lower_bound(case):
    """The solver's bracket on drawn networks (2-6 dimensions): tight, and its lower bound holds
    on the dense grid of test_certificate_grid (2-D) or along 900 rays (3-6 D)."""
    params, points, rho = build_case(case)
    for x in points:
        label = int(numpy.argmax(forward(params, x[None, :])[0]))
        _check_bracket(params, x, label, rho)


# ---------------------------------------------------------------- the certificates


def certify_against_exact(model, points, labels, radii, eps, mode, tol, seed, norms=None, refusal_ok=False):
    """certify(...) at eps; every certificate and certified radius held against the exact radii:
    none may exceed upper (1 + tol). Returns the Certification, or None when certify refuses with
    a one-line UserError and refusal_ok (a sound answer for the constructions below; on the drawn
    networks a refusal fails). norms: the run's GlobalNorms, when computed already."""
    try:
        res = certify(model, points, labels, float(eps), CertifyConfig(mode=mode, n_iters=N_ITERS, batch_size=points.shape[0], pgd_steps=0), seed=seed, norms=norms)
    except UserError as exc:
        if not refusal_ok:
            raise
        assert "\n" not in str(exc), f"a refusal must be one line: {exc}"
        return None
    wrong = []
    for i, r in enumerate(radii):
        claims = [(float(res.radius_local[i]), "radius_local"), (float(res.radius_global[i]), "radius_global")]
        if res.certified_local[i] or res.certified_global[i]:
            claims.append((float(eps), f"certified (local {bool(res.certified_local[i])}, "
                                       f"global {bool(res.certified_global[i])}) at eps"))
        for value, what in claims:
            assert not math.isnan(value), f"sample {i}: {what} is NaN"
            if r.refutes(value / (1 + tol)):
                wrong.append(f"sample {i} x={points[i].tolist()} label {int(labels[i])}: {what} {value!r}, but the "
                             f"exact radius lies in [{r.lower!r}, {r.upper!r}]: {list(r.witness)} flips to class "
                             f"{r.flip_class}")
    assert not wrong, f"{mode} at eps {eps!r}:\n  " + "\n  ".join(wrong)
    return res


def check_case(case, xp):
    """Certify a drawn case at eps = upper (1 + delta) for each point and at half the least
    radius; returns the ratios (largest certified radius) / r* at the eps just above r*."""
    params, points, rho = build_case(case)
    dtype, mode = case["config"]
    model = lipref_model(params, xp, dtype)
    net = ExactNet.from_model(model)  # the parameters as the model stores them, exactly
    labels = numpy.argmax(to_host(model(to_backend(points, xp, getattr(xp, dtype)), record=False)), axis=1)
    labels[-1] = (labels[-1] + 1) % case["n_classes"]  # a wrong label: radius 0
    radii = [exact_radius(net, x, int(y), cap=CAP * rho) for x, y in zip(points, labels)]
    finite = [r.upper for r in radii if 0 < r.upper < math.inf]
    norms = CertifyConfig(mode=mode, n_iters=N_ITERS).global_norms(model, case["seed"])  # what certify computes first, once
    ratios = []
    for i, r in enumerate(radii):
        if 0 < r.upper < math.inf:
            res = certify_against_exact(model, points, labels, radii, r.upper * (1 + case["delta"]), mode,
                                        TOL[case["config"]], case["seed"], norms)
            ratios.append(max(float(res.radius_local[i]), float(res.radius_global[i])) / r.upper)
    if finite:
        certify_against_exact(model, points, labels, radii, 0.5 * min(finite), mode, TOL[case["config"]],
                              case["seed"], norms)
    return ratios


@pytest.mark.property  # hypothesis runs inside (per backend), so conftest cannot see it: marked by hand
def test_certificates_never_exceed_the_exact_radius(xp):
    """Every certificate and certified radius of `certify` on drawn networks in 3-6 dimensions
    is at most the exact radius (see the module docstring for what is drawn and checked). The
    profile's examples on NumPy, at most EXAMPLES_OTHER elsewhere (the same code, slower)."""
    n = settings().max_examples if _backend_name(xp) == "numpy" else min(settings().max_examples, EXAMPLES_OTHER)

    @settings(max_examples=n, print_blob=True)
    @given(case=networks())
    def run(case):
        check_case(case, xp)

    run()


# ---------------------------------------------------------------- where the bound is tight

TIGHT = {
    "linear": HAND_MADE["linear"][:3],
    # one live neuron h (4.5 at x; the others dead far away), z = (5.5, 2 h - 4, -h): the local bound
    # is exact, and r* = 0.25 / ||(1, -2, 2, 1)||
    "one live neuron": (_net(([[1, -2, 2, 1], [1, 1, 0, 0], [0, 1, 1, 0]], [5, -50, -50], "relu", None),
                             ([[0, 0, 0], [2, 3, -1], [-1, 0, 4]], [5.5, -4, 0], None, None)),
                        [0.1, 0.2, -0.3, 0.4], 0),
}


@pytest.mark.parametrize("dtype,mode", CONFIGS)
@pytest.mark.parametrize("name", sorted(TIGHT))
def test_certificates_reach_the_exact_radius_where_the_bound_is_tight(xp, dtype, mode, name):
    """Where the local bound is exact (no hidden layer; one live neuron) the certificate reaches
    r* to within 1e-6 (float32: 1e-3), and never beyond: the check above has teeth."""
    params, x, label = TIGHT[name]
    points, labels = numpy.asarray([x], dtype=dtype).astype(numpy.float64), numpy.asarray([label])
    model = lipref_model(params, xp, dtype)
    r = exact_radius(ExactNet.from_model(model), points[0], label)
    below = r.lower * (1 - (1e-6 if dtype == "float64" else 1e-3))
    res = certify_against_exact(model, points, labels, [r], below, mode, TOL[(dtype, mode)], 1)
    assert bool(res.certified_local[0]), f"not certified at {below}, below r* = {r.lower}"
    certify_against_exact(model, points, labels, [r], r.upper * (1 + 1e-6), mode, TOL[(dtype, mode)], 1)


# ---------------------------------------------------------------- issue 25's constructions


def check_construction(xp, params, x, eps_list, mode, model=None, dtype="float64", tol=0.0):
    """Certify x with every class as its label, at each eps, against the exact radii of the
    network `params` (the construction's own values; `model`: lipref's model of it)."""
    net = exact_net(params)
    k = params[-1][0].shape[0]
    model = lipref_model(params, xp, dtype) if model is None else model
    x = numpy.asarray(x, dtype=numpy.float64)
    points, labels = numpy.repeat(x.reshape((1,) + model.input_shape), k, axis=0), numpy.arange(k)
    radii = [exact_radius(net, x.ravel(), y) for y in range(k)]
    for eps in eps_list:
        certify_against_exact(model, points, labels, radii, eps, mode, tol, 1, refusal_ok=True)
    return radii


def test_underflow_in_the_walk_is_no_certificate(xp):
    """Issue 25 item 1: 19 layers of width 2, nine 1e-37 I, nine 1e37 I, then I with bias (0, 0.1)
    (float32 values), at x = (0.9, 0.1): exactly class 0 with radius 0.495; sound mode predicted
    class 1 and certified it at any eps."""
    f32, eye = numpy.float32, numpy.eye(2, dtype=numpy.float32)
    params = [(eye * f32(1e-37), numpy.zeros(2, f32), "relu", None)] * 9
    params += [(eye * f32(1e37), numpy.zeros(2, f32), "relu", None)] * 9
    params += [(eye, numpy.array([0, 0.1], f32), None, None)]
    radii = check_construction(xp, params, [0.9, 0.1], [0.1, 0.3, 0.5, 1.0], "sound")
    assert radii[1].upper == 0 and 0.494 < radii[0].lower <= radii[0].upper < 0.496, (radii[0].lower, radii[1].upper)


@pytest.mark.parametrize("dtype,mode", [("float64", "sound"), ("float32", "fast")])
def test_squared_weights_that_underflow_are_no_certificate(xp, dtype, mode):
    """Issue 25 item 2: 2 -> 2 -> 2 -> 2 -> 2, ReLU, weights 1e-170 I (bias 1e-165), 1e85 I, 1e85 I,
    I (bias (0.1, 0)) in float64; in float32, 1e-24 I, 1e12 I, 1e12 I, I: the squares of the first
    weights underflow to 0 in the ball bound. At x = (0.5, 0.5) the class changes at 0.1 / sqrt(2)
    exactly; sound mode certified eps 0.5, and fast mode float32 the same."""
    small, big, bias = (1e-170, 1e85, 1e-165) if dtype == "float64" else (1e-24, 1e12, 0.0)
    t, eye = numpy.dtype(dtype).type, numpy.eye(2, dtype=dtype)
    zero = numpy.zeros(2, dtype)
    params = [(eye * t(small), numpy.full(2, bias, dtype), "relu", None), (eye * t(big), zero, "relu", None),
              (eye * t(big), zero, "relu", None), (eye, numpy.array([0.1, 0], dtype), None, None)]
    radii = check_construction(xp, params, [0.5, 0.5], [0.05, 0.1, 0.5], mode, dtype=dtype, tol=TOL[(dtype, mode)])
    assert abs(radii[0].upper - 0.1 / math.sqrt(2)) < 1e-6, radii[0].upper


PRECISION_W = numpy.array([[1 + 2.0 ** -30, 0.0], [1.0, 0.0]])
PRECISION_B = numpy.array([2.0 ** -35, 0.0])
PRECISION_X = [1.5 - 2.0 ** -5, 0.0]  # z_0 - z_1 = 2^-30 (x_0 + 2^-5): class 1 beyond 1.5


def _check_file(xp, path, eps_list):
    """The precision construction as a file: loaded as `lipref certify` loads it (float64, sound
    mode), certified against the file's own float64 model; refusing to load it is sound, too."""
    from lipref.importing import load_any_model
    try:
        model = load_any_model(str(path), xp, xp.float64)
    except UserError as exc:
        assert "\n" not in str(exc), exc
        return None
    return check_construction(xp, [(PRECISION_W, PRECISION_B, None, None)], PRECISION_X, eps_list, "sound",
                              model=model)


def test_a_float64_onnx_model_is_certified_as_the_file_holds_it(xp, tmp_path):
    """Issue 25 item 3: ONNX Flatten -> Gemm with DOUBLE W = [[1 + 2^-30, 0], [1, 0]], b = (2^-35, 0):
    the class changes at distance 1.5 from x; importing it as float32 certified eps 2."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'lipref[onnx]')")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "b"], ["z"], transB=1)],
        "precision", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 1, 1, 2])],
        [helper.make_tensor_value_info("z", TensorProto.DOUBLE, ["N", 2])],
        [numpy_helper.from_array(PRECISION_W, "W"), numpy_helper.from_array(PRECISION_B, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    evaluate = ReferenceEvaluator(proto)  # ONNX's own: class 0 at x, class 1 just beyond 1.5 from it
    for x0, expected in ((PRECISION_X[0], 0), (PRECISION_X[0] - 1.5 - 2.0 ** -20, 1)):
        assert numpy.argmax(evaluate.run(None, {"x": numpy.array([[[[x0, 0.0]]]])})[0][0]) == expected
    radii = _check_file(xp, tmp_path / "m.onnx", [1.0, 1.4, 1.6, 2.0])
    assert radii is None or abs(radii[0].lower - 1.5) < 1e-12, radii[0].lower


def test_a_float64_torch_checkpoint_is_certified_as_the_file_holds_it(xp, tmp_path):
    """Issue 25 item 3: the same layer as a float64 torch checkpoint (`model.double()`)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'lipref[torch]')")
    net = torch.nn.Sequential(torch.nn.Linear(2, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(PRECISION_W))
        net[0].bias.copy_(torch.from_numpy(PRECISION_B))
    torch.save({"state_dict": net.state_dict()}, str(tmp_path / "m.pth"))
    radii = _check_file(xp, tmp_path / "m.pth", [1.0, 1.4, 1.6, 2.0])
    assert radii is None or abs(radii[0].lower - 1.5) < 1e-12, radii[0].lower
