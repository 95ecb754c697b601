"""Underflow and norms without underflow (issue 25, items 1 and 2): the review's networks,
each with its exact class and exact certified radius computed here in rational arithmetic,
certified through the library and at the command line; nothing may be certified beyond the
exact radius, no bound may be 0 where the exact one is not, no radius NaN.

The networks are "diagonal chains": 2 inputs, Linear(2, 2) layers with weight s_l I and bias
b_l, ReLU between them. Where every ReLU is on, logit_i = c x_i + d_i with c = prod_l s_l
and d_i = sum_l b_(l,i) prod_(k > l) s_k, so the margin of class 0 is c (x0 - x1) + d0 - d1,
and the distance to the class change is that margin over c sqrt(2) (the ball's worst point
moves x0 down and x1 up by rho / sqrt(2) each; the ReLUs stay on there, checked per case)."""
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_certificate_grid import N_ITERS, build_case, check_against_grid, float64_twin, networks

from lipref.backend import to_backend, to_host
from lipref.certification import CertifyConfig, certify
from lipref.layers import Flatten, Linear, ReLU, Sequential
from lipref.models import save_model

ROOT = Path(__file__).resolve().parents[1]
I2 = numpy.eye(2)


class Chain:
    """A diagonal chain: scales s_l, biases b_l (pairs), in the stored dtype."""

    def __init__(self, dtype, scales, biases):
        self.dtype = numpy.dtype(dtype)
        self.scales = [self.dtype.type(s) for s in scales]  # the stored values
        self.biases = [numpy.asarray(b, dtype=self.dtype) for b in biases]

    def model(self, xp, dtype=None):
        """The network on backend xp, in dtype (the stored dtype by default; float64 widens
        the stored values exactly)."""
        layers = [Flatten((1, 1, 2))]
        for i in range(len(self.scales)):
            layers.append(Linear(2, 2))
            if i < len(self.scales) - 1:
                layers.append(ReLU((2,)))
        dt = getattr(xp, numpy.dtype(dtype or self.dtype).name)
        model = Sequential(layers).init_params(xp, dt, numpy.random.default_rng(0))
        values = {}
        for i, (s, b) in enumerate(zip(self.scales, self.biases)):
            values[f"{2 * i + 1}.weight"] = to_backend(s * I2.astype(self.dtype), xp, dt)
            values[f"{2 * i + 1}.bias"] = to_backend(b, xp, dt)
        model.set_parameters(values)
        return model

    def slope_and_offsets(self):
        """(c, d0 - d1) of the exact network where every ReLU is on, as Fractions."""
        c, d = Fraction(1), [Fraction(0), Fraction(0)]
        for s, b in zip(self.scales, self.biases):
            s = Fraction(float(s))
            c *= s
            d = [s * d[i] + Fraction(float(b[i])) for i in range(2)]
        return c, d[0] - d[1]

    def exact_class(self, x):
        """The exact network's class at x (2 floats), ReLU applied exactly."""
        h = [Fraction(float(v)) for v in x]
        for i, (s, b) in enumerate(zip(self.scales, self.biases)):
            h = [Fraction(float(s)) * h[k] + Fraction(float(b[k])) for k in range(2)]
            if i < len(self.scales) - 1:
                h = [max(v, Fraction(0)) for v in h]
        return 0 if h[0] > h[1] else 1

    def margin(self, x):
        """Class 0's margin c (x0 - x1) + d0 - d1 at x where every ReLU is on (a Fraction)."""
        c, d = self.slope_and_offsets()
        return c * (Fraction(float(x[0])) - Fraction(float(x[1]))) + d

    def radius_at_most_exact(self, x, radius):
        """Is radius <= the exact distance to class 1, margin / (c sqrt(2))? Exactly:
        (radius c)^2 2 <= margin^2, with a positive margin."""
        c, _ = self.slope_and_offsets()
        m = self.margin(x)
        return m > 0 and math.isfinite(radius) and (Fraction(float(radius)) * c) ** 2 * 2 <= m * m

    def exact_radius(self, x):
        """margin / (c sqrt(2)) as a float (to rounding; `radius_at_most_exact` is exact)."""
        c, _ = self.slope_and_offsets()
        return float(self.margin(x) / c) / math.sqrt(2)


def item1():
    """The review's item 1: 19 float32 layers, nine 1e-37 I, nine 1e37 I, then I with bias
    (0, 0.1). At x = (0.9, 0.1) the exact logits are about (0.9, 0.2): class 0, exact radius
    about 0.4950. float64 underflows the activations (1e-333) and the product of norms to 0."""
    return Chain(numpy.float32, [1e-37] * 9 + [1e37] * 9 + [1.0], [[0, 0]] * 18 + [[0, 0.1]])


def item2(last=1.0):
    """The review's item 2: float64 2 -> 2 -> 2 -> 2 -> 2, weights 1e-170 I (bias 1e-165),
    1e85 I, 1e85 I, `last` I (bias (0.1, 0)). At x = (0.5, 0.5) class 0, exact radius
    0.1 / sqrt(2) (the biases 1e-165 cancel in the margin; the ReLUs are on for x > -1e5).
    The squares of 1e-170 underflow: the first layer's ball bound was 0 wide."""
    return Chain(numpy.float64, [1e-170, 1e85, 1e85, last], [[1e-165, 1e-165], [0, 0], [0, 0], [0.1, 0]])


def tiny_float32():
    """item 2 in float32 for fast mode: weights 1e-30 I (bias 0), 1e15 I, 1e15 I, I (bias
    (0.1, 0)): every activation is a normal float32, but the squares of 1e-30 underflow."""
    return Chain(numpy.float32, [1e-30, 1e15, 1e15, 1.0], [[0, 0], [0, 0], [0, 0], [0.1, 0]])


def subnormal_weights():
    """float64 with a subnormal first weight 2^-1070 (16 eta), then 2^535 I twice, I with
    bias (0.1, 0): the exact network is x -> (x0 + 0.1, x1), exact radius 0.1 / sqrt(2)."""
    return Chain(numpy.float64, [2.0 ** -1070, 2.0 ** 535, 2.0 ** 535, 1.0], [[0, 0], [0, 0], [0, 0], [0.1, 0]])


X1, X2 = numpy.array([0.9, 0.1]), numpy.array([0.5, 0.5])


def _certify(chain, x, label, eps, mode, xp, dtype="float64"):
    model = chain.model(xp, numpy.dtype(dtype))
    images = numpy.asarray(x, dtype=dtype).reshape(1, 1, 1, 2)
    return certify(model, images, numpy.array([label]), eps, CertifyConfig(mode=mode, n_iters=50, pgd_steps=0), seed=1)


def _assert_sound(chain, x, res, eps, slack=0.0):
    """Nothing certified for a class the exact network does not give x; for the exact class,
    no certificate beyond the exact radius and radii at most the exact radius; no NaN.
    slack: the relative excess allowed (fast mode makes no promise about rounding, and its
    logits of 1e5 round their margin of 0.1 at 1e-11)."""
    label = int(res.labels[0])
    for name in ("radius_local", "radius_global", "local_bound", "global_bound"):
        assert not numpy.isnan(getattr(res, name)[0]), (name, res)
    cert = bool(res.certified_local[0]) or bool(res.certified_global[0])
    if label != chain.exact_class(x):
        assert not cert and res.radius_local[0] == 0 and res.radius_global[0] == 0, res
        return
    if cert:
        assert chain.radius_at_most_exact(x, eps / (1 + slack)), f"certified at eps {eps} > {chain.exact_radius(x)}"
    for r in (res.radius_local[0], res.radius_global[0]):
        assert r == 0 or chain.radius_at_most_exact(x, r / (1 + slack)), f"radius {r} > {chain.exact_radius(x)}"


# ---------------------------------------------------------------- the constructions are what they say

def test_the_constructions_exact_classes_and_radii():
    assert item1().exact_class(X1) == 0 and abs(item1().exact_radius(X1) - 0.495) < 1e-3
    for chain in (item2(), tiny_float32(), subnormal_weights()):
        assert chain.exact_class(X2) == 0
        assert abs(chain.exact_radius(X2) - 0.1 / math.sqrt(2)) < 1e-6
        r = chain.exact_radius(X2)
        # the exact class changes just beyond the radius along (-1, 1), not just before it
        step = numpy.array([-1.0, 1.0]) / math.sqrt(2)
        assert chain.exact_class(X2 + step * r * (1 + 1e-6)) == 1
        assert chain.exact_class(X2 + step * r * (1 - 1e-6)) == 0
    assert item1().exact_class(X1 + numpy.array([-1.0, 1.0]) / math.sqrt(2) * 0.4951) == 1
    # float64 arithmetic meets the underflow: the computed network predicts class 1 at X1
    import array_api_compat.numpy as xp
    logits = to_host(item1().model(xp, numpy.dtype("float64"))(xp.asarray(X1.reshape(1, 1, 1, 2)), record=False))
    assert int(numpy.argmax(logits[0])) == 1


# ---------------------------------------------------------------- through the library

EPS_SWEEP = (1e-3, 0.05, 0.1, 0.3, 0.5, 2.0, 10.0)


@pytest.mark.parametrize("label", [0, 1])
def test_item1_sound_mode_never_certifies_the_underflowed_class(xp, label):
    """Was: local = global = 0, radius_global inf, class 1 certified at any eps."""
    chain = item1()
    for eps in EPS_SWEEP:
        res = _certify(chain, X1, label, eps, "sound", xp)
        _assert_sound(chain, X1, res, eps)
        assert res.local_bound[0] > 0 and res.global_bound[0] > 0, "a product of nonzero norms became 0"
        assert res.local_bound[0] <= res.global_bound[0]


@pytest.mark.parametrize("mode", ["sound", "fast"])
def test_item2_tiny_float64_weights_keep_their_ball_bound(xp, mode):
    """Was: the first layer's row norms were 0 (squares of 1e-170), its box a point, and
    both modes certified eps 0.5 where the exact radius is 0.0707."""
    chain = item2()
    for eps in EPS_SWEEP:
        res = _certify(chain, X2, 0, eps, mode, xp)
        _assert_sound(chain, X2, res, eps, 0.0 if mode == "sound" else 1e-9)
    assert bool(_certify(chain, X2, 0, 0.05, mode, xp).certified_local[0]), "below the exact radius: certified"


def test_float32_weights_below_1e_23_in_fast_mode(xp):
    """Fast mode, float32: the squares of 1e-30 underflowed to 0 the same way."""
    chain = tiny_float32()
    for eps in (0.08, 0.1, 0.3, 0.5):
        res = _certify(chain, X2, 0, eps, "fast", xp, "float32")
        assert not res.certified_local[0] and not res.certified_global[0], eps
        # fast mode computes the radius in float32: up to its rounding
        assert res.radius_global[0] <= chain.exact_radius(X2) * (1 + 1e-5)
    assert bool(_certify(chain, X2, 0, 0.05, "fast", xp, "float32").certified_local[0])


def test_subnormal_weights_in_sound_mode(xp):
    chain = subnormal_weights()
    for eps in EPS_SWEEP:
        _assert_sound(chain, X2, _certify(chain, X2, 0, eps, "sound", xp), eps)


@pytest.mark.parametrize("mode", ["sound", "fast"])
@pytest.mark.parametrize("last", [1e160, 1e-170])
def test_radii_of_huge_and_tiny_last_layers(xp, mode, last):
    """item 2 with last layer 1e160 I (sound mode's radius was NaN: the squares of the class
    differences overflowed) or 1e-170 I (the radius was +inf: they underflowed to 0)."""
    chain = item2(last)
    for eps in (0.05, 0.5):
        res = _certify(chain, X2, 0, eps, mode, xp)
        _assert_sound(chain, X2, res, eps, 0.0 if mode == "sound" else 1e-9)
        assert math.isfinite(res.radius_global[0]), res.radius_global


# ---------------------------------------------------------------- at the command line

def _run_cli(args):
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py")] + args, capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def _save(tmp_path, chain, x, labels):
    import array_api_compat.numpy as xp
    model = tmp_path / "model.npz"
    save_model(model, chain.model(xp))
    data = tmp_path / "data.npz"
    numpy.savez(data, images=numpy.repeat(numpy.asarray(x, dtype=numpy.float64).reshape(1, 1, 1, 2), len(labels), 0),
                labels=numpy.asarray(labels))
    return str(model), str(data)


def _cli_certify(model, data, eps, mode, *extra):
    return _run_cli(["certify", model, "--data", data, "--eps", repr(eps), "--mode", mode, "--pgd-steps", "0",
                     "--json", "--quiet", "--seed", "1", *extra])


def test_item1_at_the_command_line(tmp_path):
    """The float32 model file, certified in sound mode (float64) with labels 0 (the exact
    class) and 1 (what float64 computes): nothing is certified at any eps."""
    model, data = _save(tmp_path, item1(), X1, [0, 1])
    for eps in (0.01, 0.5, 10.0):
        doc = _cli_certify(model, data, eps, "sound")
        assert doc["certified_accuracy_local"] == 0 and doc["certified_accuracy_global"] == 0, (eps, doc)


@pytest.mark.parametrize("mode", ["sound", "fast"])
def test_item2_at_the_command_line(tmp_path, mode):
    """The float64 model file: certified below the exact radius 0.0707 only."""
    chain = item2()
    model, data = _save(tmp_path, chain, X2, [0])
    for eps in (0.05, 0.08, 0.5):
        doc = _cli_certify(model, data, eps, mode, "--dtype", "float64")
        expected = 1.0 if chain.radius_at_most_exact(X2, eps) else 0.0
        assert doc["certified_accuracy_local"] == expected and doc["certified_accuracy_global"] <= expected, (eps, doc)


# ---------------------------------------------------------------- scaled by powers of two

SHIFTS = (0, -300, -600, -900, -1000, -1040, -1060, -1074, -1090)


def scaled_by_powers_of_two(model, xp, shifts):
    """(the model with its layers' outputs scaled by 2^A_l, its exact float64 twin). Affine
    layer l gets weight W 2^(A_l - A_(l-1)) and bias b 2^A_l (its activation's thresholds
    and clamps 2^A_l too), A_l = shifts[l] with each step A_l - A_(l-1) kept in [-1100, 960]
    so that no parameter overflows; stored in float64, where they may round or underflow.
    ReLU, clipped ReLU and MaxMin are positively homogeneous, so the stored network is
    2^A_last times the twin, whose parameters are the stored ones scaled back, exactly
    (scaling up by a power of two is exact): the same classes everywhere."""
    stored, back = {}, {}
    previous, level = 0, 0
    shifts = iter(shifts)
    for i, layer in enumerate(model.layers):
        if layer.is_affine:
            level = previous + int(numpy.clip(next(shifts) - previous, -1100, 960))
        for name, var in layer.params.items():
            k = level - previous if name == "weight" else level
            stored[f"{i}.{name}"] = numpy.ldexp(to_host(var.value), k)
            back[f"{i}.{name}"] = numpy.ldexp(stored[f"{i}.{name}"], -k)
        if layer.is_affine:
            previous = level
    scaled = float64_twin(model, xp)
    scaled.set_parameters({k: to_backend(v, xp, xp.float64) for k, v in stored.items()})
    twin = float64_twin(model, xp)
    twin.set_parameters({k: to_backend(v, xp, xp.float64) for k, v in back.items()})
    assert all(numpy.all(numpy.isfinite(v)) for v in stored.values())
    return scaled, twin


@settings(deadline=None, print_blob=True)
@given(case=networks(), shifts=st.lists(st.sampled_from(SHIFTS), min_size=3, max_size=3))
def test_scaling_towards_underflow_never_certifies_falsely(xp, case, shifts):
    """A drawn network of tests/test_certificate_grid.py (float64, sound mode) with its layers
    scaled by powers of two down to and past the smallest subnormal: activations, weights,
    products and norms underflow. Every certificate and radius sound mode gives the scaled
    network holds on the dense grid of the exact twin's balls."""
    case = dict(case, config=("float64", "sound"))
    model, points, labels, eps = build_case(case, xp)
    scaled, twin = scaled_by_powers_of_two(model, xp, shifts)
    res = certify(scaled, points, labels, eps, CertifyConfig(mode="sound", n_iters=N_ITERS, batch_size=len(points), pgd_steps=0), seed=case["seed"])
    check_against_grid(res, twin, xp, points, labels, eps, "float64", "sound")
