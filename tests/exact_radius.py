"""The exact l2 robustness radius of a tiny ReLU / clipped-ReLU network: a ground truth.

What it computes. For a network (Linear layers, each hidden one followed by ReLU or clipped
ReLU min(max(t, 0), theta) with theta >= 0; a last Linear layer), an input x and a class y,

    r*(x, y) = inf { ||x' - x||_2 : prediction(x') != y },

the prediction being the argmax of the logits with ties to the lowest index
(`lipref.bounds.margins.predictions`); r* = 0 when the prediction at x is not y. So x' flips
iff z_j(x') >= z_y(x') for some j < y, or z_j(x') > z_y(x') for some j > y.

How. On an activation region R (every neuron fixed to one linear piece: ReLU off / on; clipped
ReLU off / linear / saturated) the network is affine, R is a polytope {A x' <= c}, and the
points of R where class j wins make the polytope R and {g_j >= 0}, g_j = z_j - z_y, affine.
Every point lies in the closure of a full-dimensional region, on which the logits are that
region's affine map (the network is continuous), so the flipping set lies in the union over
full-dimensional R and j != y of R and {g_j >= 0} (leaving out j > y where g_j = 0 on all of R:
those points never flip through j). r* is the least distance from x to that union. The regions
are searched best-first: a tree over the neurons, layer by layer, each node the polytope of the
pieces fixed so far, keyed by its distance from x; a leaf adds one class's {g_j >= 0}. The
search stops when the nearest unexplored node is no nearer than the best witness below.

What is exact and what is rounded. The parameters and x are floats, hence dyadic rationals
(m 2^e), and so are their sums and products: every affine map, region constraint and bound
below is computed exactly in integers (`Dyadic`), the forward pass in `Fraction`. The distances
that steer the search are rounded: each is a least-distance problem min ||d|| s.t.
A (x + d) <= c, solved in float64 by Lawson and Hanson's LDP ("Solving Least Squares Problems",
1974, ch. 23; NNLS by scipy) on rows scaled by powers of two. Rounding can only change which
regions are explored and how tight the answer is, never its validity:

- upper: a witness x_w (floats: the least-distance point of a leaf's polytope shrunk by a hair)
  at which the network, evaluated exactly, predicts another class; upper^2 = ||x_w - x||^2
  exactly. So r* <= upper, proved. (At x_w the leaf's constraints hold strictly and its affine
  logits equal the exact forward pass's, exactly: a check of the region algebra.)
- lower: every node the search did not split (leaves, the unexplored frontier, polytopes found
  empty) gets the weak-duality bound of its multipliers mu >= 0 (valid for any mu >= 0): every
  point of {A x' <= c} satisfies (A^T mu) x' <= mu^T c, so its distance from x is at least
  mu^T (A x - c) / ||A^T mu||, evaluated exactly; lower is the least of these. Left out with no
  bound: only polytopes proved to lie in a hyperplane (a x' <= c and -a x' <= -c' with
  c + c' <= 0, exactly: no interior point), and the second piece of a neuron whose
  pre-activation is exactly constant on the region at a breakpoint (both pieces give the same
  map there). So lower <= r*, proved.

Hence r* lies in [lower, upper]; on these nets the two agree to about 1e-11 relative. A search
past MAX_NODES raises; `cap` stops it at a distance (then upper may be infinite).
"""
import heapq
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy
import scipy.optimize

from lipref.backend import to_host
from lipref.layers import ClippedReLU, Flatten, Linear, ReLU

ZERO = Fraction(0)
SHRINK = (1e-12, 1e-9, 1e-6, 1e-3)  # relative hairs by which a witness's polytope is shrunk, tried in turn
MAX_NODES = 50_000  # a search that needs more raises (never a silent answer)


# ---------------------------------------------------------------- the network, exactly


@dataclass(frozen=True)
class ExactLayer:
    weight: tuple  # rows of Fractions
    bias: tuple
    activation: str = None  # "relu", "clipped_relu" or None (the last layer)
    threshold: tuple = None  # clipped ReLU: theta per neuron


def _exact(values):
    return tuple(Fraction(float(v)) for v in numpy.asarray(values).ravel())  # floats are rationals


class ExactNet:
    """A network whose parameters are the given floats as exact rationals."""

    def __init__(self, layers):
        self.layers = tuple(layers)
        for layer in self.layers[:-1]:
            if layer.activation not in ("relu", "clipped_relu") or (layer.threshold and min(layer.threshold) < 0):
                raise ValueError(f"hidden layers need ReLU or clipped ReLU with theta >= 0, got {layer.activation}")

    @classmethod
    def from_arrays(cls, weights, biases, activations, thresholds=None):
        """Layers from arrays: weights[i] (out, in), biases[i], activations[i] for every hidden layer."""
        thresholds = thresholds or [None] * len(activations)
        layers = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            w = numpy.asarray(w)
            act = activations[i] if i < len(activations) else None
            theta = _exact(thresholds[i]) if act == "clipped_relu" else None
            layers.append(ExactLayer(tuple(_exact(row) for row in w), _exact(b), act, theta))
        return cls(layers)

    @classmethod
    def from_model(cls, model):
        """The parameters of a lipref Sequential (Flatten, Linear, ReLU, ClippedReLU), exactly."""
        weights, biases, acts, thetas = [], [], [], []
        for layer in model.layers:
            values = {k: to_host(v.value) for k, v in layer.params.items()}
            if isinstance(layer, Linear):
                weights.append(values["weight"])
                biases.append(values["bias"])
            elif isinstance(layer, (ReLU, ClippedReLU)) and len(acts) == len(weights) - 1:
                acts.append("relu" if isinstance(layer, ReLU) else "clipped_relu")
                thetas.append(values.get("threshold"))
            elif not (isinstance(layer, Flatten) and not weights):
                raise TypeError(f"exact radii cover Linear + ReLU / clipped ReLU only, not {type(layer).__name__}")
        return cls.from_arrays(weights, biases, acts, thetas)

    def logits(self, x):
        """The logits at x (a sequence of Fractions or floats), exactly."""
        h = [Fraction(v) for v in x]
        for layer in self.layers:
            h = [sum((w * v for w, v in zip(row, h)), b) for row, b in zip(layer.weight, layer.bias)]
            if layer.activation is not None:
                h = [max(v, ZERO) for v in h]
            if layer.activation == "clipped_relu":
                h = [min(v, t) for v, t in zip(h, layer.threshold)]
        return h

    def prediction(self, x):
        z = self.logits(x)
        return z.index(max(z))  # the first index of the largest: ties to the lowest index


# ---------------------------------------------------------------- exact affine maps and constraints


def _log2(power):
    assert power & (power - 1) == 0, "not a dyadic rational"  # floats are dyadic: m / 2^k
    return power.bit_length() - 1


class Dyadic:
    """A vector of dyadic rationals m_i 2^e: Python integers m sharing one exponent e. Floats are
    dyadic, and so are sums and products of dyadics: the affine maps and bounds below stay exact
    with integer arithmetic alone (Fraction's gcds made the search several times slower).
    An affine function of x' is a Dyadic of its n coefficients then its constant."""
    __slots__ = ("m", "e")

    def __init__(self, m, e):
        self.m, self.e = tuple(m), e

    @classmethod
    def of(cls, values):
        ratios = [Fraction(v) for v in values]
        k = max(_log2(r.denominator) for r in ratios)
        return cls((r.numerator << (k - _log2(r.denominator)) for r in ratios), -k)

    def __add__(self, other):
        e = min(self.e, other.e)
        return Dyadic(((a << (self.e - e)) + (b << (other.e - e)) for a, b in zip(self.m, other.m)), e)

    def times(self, scalar):
        """self * scalar (a dyadic Fraction, float or int)."""
        s = scalar if isinstance(scalar, Fraction) else Fraction(scalar)
        return Dyadic((v * s.numerator for v in self.m), self.e - _log2(s.denominator))

    def plus_constant(self, value):
        """The affine function self + value (a dyadic Fraction or float)."""
        s = value if isinstance(value, Fraction) else Fraction(value)
        e = min(self.e, -_log2(s.denominator))
        m = [v << (self.e - e) for v in self.m]
        m[-1] += s.numerator << (-_log2(s.denominator) - e)
        return Dyadic(m, e)

    def at(self, point):
        """The affine function's value at point (a Dyadic of the n coordinates then 1): (m, e)."""
        return sum(a * b for a, b in zip(self.m, point.m)), self.e + point.e


def _float(m, k):
    """m 2^k in float64, rounded (m an integer of any size): for the float solver only."""
    shift = max(abs(m).bit_length() - 64, 0)
    return math.ldexp(m >> shift, k + shift)


def _combine(weights, affines, bias):
    """sum_i weights[i] affines[i] + bias, exactly."""
    out = Dyadic([0] * len(affines[0].m), 0)
    for w, f in zip(weights, affines):
        if w:
            out = out + f.times(w)
    return out.plus_constant(bias)


class Row:
    """The constraint f(x') <= 0 (f affine, not constant), f scaled exactly by a power of two so
    that its largest coefficient lies in [1, 2); its value at the sample x (> 0: x violates it);
    float64 copies for the solver; and, for exact parallel tests, direction . x' + level <= 0
    with direction the coefficients' primitive integer vector (the same for positive multiples)."""
    __slots__ = ("f", "excess", "direction", "level", "a_float", "excess_float")

    def __init__(self, f, x):
        coefs = f.m[:-1]
        top = max(abs(v) for v in coefs).bit_length() - 1
        self.f = Dyadic(f.m, -top)
        self.excess = self.f.at(x)
        g = math.gcd(*coefs)
        self.direction, self.level = tuple(v // g for v in coefs), Fraction(f.m[-1], g)
        self.a_float = numpy.array([_float(v, -top) for v in coefs])
        self.excess_float = _float(*self.excess)


def at_most(affine, t, x):
    """The Row of affine(x') <= t, or True / False when affine is constant (exactly)."""
    f = affine.plus_constant(-t)
    if not any(f.m[:-1]):
        return f.m[-1] <= 0
    return Row(f, x)


def at_least(affine, t, x):
    return at_most(affine.times(-1), -t, x)


# ---------------------------------------------------------------- the float solver


def least_distance(rows, n, hair=0.0):
    """(d, mu): d the float64 least-norm step with f(x + d) <= -hair for every row (scaled; d None
    when the solver finds none), mu >= 0 multipliers of the scaled rows. Lawson and Hanson's LDP:
    with the rows a . d + excess + hair <= 0, u >= 0 minimising ||E u - e_(n+1)|| for
    E = [-A, excess + hair]^T (NNLS: an active-set method, scipy's), r = E u - e_(n+1) and
    d = -r[:n] / r[n]; r = 0 when there is no d, and u is then a Farkas certificate. Its results
    are checked exactly, never trusted (module docstring)."""
    if not rows:
        return numpy.zeros(n), numpy.zeros(0)
    E = numpy.vstack([-numpy.array([r.a_float for r in rows]).T,
                      numpy.array([r.excess_float for r in rows])[None, :] + hair])
    norms = numpy.linalg.norm(E, axis=0)  # unit columns: a positive scaling of each row
    f = numpy.zeros(E.shape[0])
    f[-1] = 1.0
    u = scipy.optimize.nnls(E / norms, f)[0]
    r = E / norms @ u - f
    mu = u / norms
    if numpy.linalg.norm(r) < 1e-12 or r[-1] >= 0:
        return None, mu  # empty (or farther than 1e12): mu is then a Farkas certificate
    return -r[:-1] / r[-1], mu


def certified_lower_sq(rows, mu, x):
    """A proved lower bound on the squared distance from x to {f(x') <= 0 for every row}: every
    point there has F(x') = sum_i mu_i f_i(x') <= 0 (mu >= 0), so its distance from x is at least
    F(x) / ||coefficients of F||; exact (infinity when F is a positive constant: proved empty)."""
    used = [r.f.times(float(m)) for m, r in zip(mu, rows) if m > 0]
    if not used:
        return ZERO
    F = used[0]
    for f in used[1:]:
        F = F + f
    t, e = F.at(x)
    norm_sq = sum(v * v for v in F.m[:-1])
    if t <= 0:
        return ZERO
    return math.inf if norm_sq == 0 else Fraction(t * t, norm_sq) * Fraction(2) ** (2 * (e - F.e))


# ---------------------------------------------------------------- the search


@dataclass
class Node:
    """A polytope of the search: the pieces fixed so far (or a leaf: a whole region and one
    class's {g_j >= 0}), with the float least-distance step from x and its multipliers."""
    rows: tuple
    levels: dict  # direction -> the largest level of its rows (exact hyperplane detection)
    layer: int  # the hidden layer being decided (len(net.layers) - 1: all decided)
    inputs: tuple  # affine inputs of that layer
    pre: tuple = None  # its affine pre-activations (the logits once all are decided), when needed
    outputs: tuple = ()  # affine outputs of its decided neurons
    flip: int = None  # a leaf: the class j
    step: object = None
    mu: object = None
    distance: float = 0.0


@dataclass
class ExactRadius:
    """r* lies in [sqrt(lower_sq), sqrt(upper_sq)], both proved (module docstring); the witness
    (floats) flips to flip_class at distance sqrt(upper_sq) exactly."""
    lower_sq: object  # Fraction, or math.inf
    upper_sq: object
    witness: tuple = None
    flip_class: int = None
    nodes: int = 0

    @property
    def lower(self):
        return _sqrt(self.lower_sq)

    @property
    def upper(self):
        return _sqrt(self.upper_sq)

    def refutes(self, eps):
        """True when a flipping point lies within the closed eps-ball, proved: eps > upper, exactly."""
        if math.isnan(eps):
            raise ValueError("a NaN radius")
        return self.upper_sq != math.inf and (eps == math.inf or Fraction(float(eps)) ** 2 > self.upper_sq)


def _sqrt(square):
    return math.inf if square > 10 ** 300 else math.sqrt(square)


def _constant(value, n):
    return Dyadic([0] * (n + 1), 0).plus_constant(value)


def _to_fraction(m, e):
    return Fraction(m) * Fraction(2) ** e


def _pieces(layer, k, pre, x):
    """[(rows, output)] of neuron k's linear pieces (a row may be True / False: constant)."""
    n = len(x.m) - 1
    if layer.activation == "relu":
        return [([at_most(pre, 0, x)], _constant(0, n)), ([at_least(pre, 0, x)], pre)]
    theta = layer.threshold[k]
    return [([at_most(pre, 0, x)], _constant(0, n)), ([at_least(pre, 0, x), at_most(pre, theta, x)], pre),
            ([at_least(pre, theta, x)], _constant(theta, n))]


def _child(node, rows, **changes):
    """node with `rows` added (None when they make it empty or flat, proved exactly), its
    least-distance step inherited when the parent's step satisfies the new rows."""
    if False in rows:
        return None
    levels, added = dict(node.levels), []
    for row in (r for r in rows if r is not True):
        opposite = tuple(-v for v in row.direction)
        if opposite in levels and row.level + levels[opposite] >= 0:
            return None  # d.x' + l1 <= 0 and -d.x' + l2 <= 0 with l1 + l2 >= 0: in a hyperplane, or empty
        if row.direction not in levels or row.level > levels[row.direction]:
            levels[row.direction] = row.level  # the tightest of parallel rows
            added.append(row)
    child = Node(node.rows + tuple(added), levels, **{"layer": node.layer, "inputs": node.inputs, "pre": node.pre,
                                                      "outputs": node.outputs, **changes})
    if node.step is not None and all(r.a_float @ node.step + r.excess_float <= 0 for r in added):
        child.step, child.mu = node.step, numpy.concatenate([node.mu, numpy.zeros(len(added))])
    else:
        child.step, child.mu = least_distance(child.rows, len(node.step))
    child.distance = math.inf if child.step is None else float(numpy.linalg.norm(child.step))
    return child


def _leaves(node, label, x):
    """A decided region's leaves: one per class j != label that can flip there, {g_j >= 0}."""
    out = []
    for j, z_j in enumerate(node.pre):
        if j == label:
            continue
        g = z_j + node.pre[label].times(-1)
        if not any(g.m[:-1]) and (g.m[-1] < 0 or (g.m[-1] == 0 and j > label)):
            continue  # g_j constant, and j never wins with it here
        out.append(_child(node, [at_least(g, 0, x)], flip=j))
    return out


def _children(net, node, label, x):
    """The children of an interior node: the next neuron's pieces, or each class's leaf."""
    layer = net.layers[node.layer]
    if node.pre is None:  # computed on expansion only: most nodes are never expanded
        node.pre = tuple(_combine(w, node.inputs, b) for w, b in zip(layer.weight, layer.bias))
    if layer.activation is None:
        return _leaves(node, label, x)
    k = len(node.outputs)
    pieces = _pieces(layer, k, node.pre[k], x)
    if not any(node.pre[k].m[:-1]):  # constant on the region: the first piece that holds (they agree at a kink)
        pieces = [next(p for p in pieces if all(r is True for r in p[0]))]
    out = []
    for rows, output in pieces:
        outputs = node.outputs + (output,)
        if len(outputs) < len(node.pre):
            out.append(_child(node, rows, outputs=outputs))
        else:  # the layer is decided: on to the next one
            out.append(_child(node, rows, layer=node.layer + 1, inputs=outputs, pre=None, outputs=()))
    return out


def _witness(net, node, label, xf):
    """(x_w, ||x_w - x||^2) for a leaf: the least-distance point of its polytope shrunk by a hair,
    checked exactly (strictly inside, the leaf's logits equal the network's, another class wins);
    None when no hair gives one."""
    for hair in SHRINK:
        step, _ = least_distance(node.rows, len(xf), hair * (1 + float(numpy.max(numpy.abs(xf))) + node.distance))
        if step is None:
            continue
        xw = xf + step
        point = Dyadic.of(list(xw) + [1.0])
        if not all(r.f.at(point)[0] < 0 for r in node.rows):
            continue
        q = [Fraction(float(v)) for v in xw]
        affine = [_to_fraction(*z.at(point)) for z in node.pre]
        assert affine == net.logits(q), f"the region's affine logits differ from the network's at {xw.tolist()}"
        assert net.prediction(q) != label, f"the witness {xw.tolist()} does not flip"
        return tuple(xw.tolist()), sum(((a - Fraction(float(b))) ** 2 for a, b in zip(q, xf)), ZERO)
    return None


def exact_radius(net, x, label, cap=math.inf):
    """The ExactRadius of (x, label) (module docstring); the search stops at distance `cap`
    (then lower >= about cap and upper may be infinite)."""
    xf = numpy.asarray(x, dtype=numpy.float64).ravel()
    prediction = net.prediction(xf.tolist())
    if prediction != label:
        return ExactRadius(ZERO, ZERO, tuple(xf.tolist()), prediction)
    n = xf.shape[0]
    x1 = Dyadic.of(xf.tolist() + [1.0])
    identity = tuple(Dyadic([int(i == k) for i in range(n + 1)], 0) for k in range(n))
    root = Node((), {}, 0, identity, step=numpy.zeros(n), mu=numpy.zeros(0))
    tick = itertools.count(1)  # heap ties: first in, first out (nodes themselves do not compare)
    heap, settled, best, count = [(0.0, 0, root)], [], None, 0
    while heap and heap[0][0] <= cap and (best is None or heap[0][0] < math.sqrt(best[1])):
        node = heapq.heappop(heap)[2]
        count += 1
        if count > MAX_NODES:
            raise RuntimeError(f"exact_radius: more than {MAX_NODES} nodes")
        if node.flip is not None:  # a leaf: settled, and perhaps a nearer witness
            settled.append(node)
            found = _witness(net, node, label, xf)
            if found is not None and (best is None or found[1] < best[1]):
                best = found + (node.flip,)
            continue
        for child in filter(None, _children(net, node, label, x1)):
            if child.step is None:
                settled.append(child)
            else:
                heapq.heappush(heap, (child.distance, next(tick), child))
    settled += [entry[2] for entry in heap]
    lower_sq = min((certified_lower_sq(s.rows, s.mu, x1) for s in settled), default=math.inf)
    if best is None:
        return ExactRadius(lower_sq, math.inf, nodes=count)
    assert lower_sq <= best[1], "the proved lower bound exceeds the witness: a bug in the search"
    return ExactRadius(lower_sq, best[1], best[0], best[2], count)
