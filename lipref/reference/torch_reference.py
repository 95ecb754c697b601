"""A PyTorch reference for lipref's bounds, written independently from the paper's definitions.

Huang, Zhang, Shi, Kolter, Anandkumar, "Training Certifiably Robust Neural Networks with
Efficient Local Lipschitz Bounds", NeurIPS 2021. Everything here is torch: torch operations
for the math, torch autograd for the gradients. Nothing is imported from lipref's math; lipref
is only read (layer specs and parameter values) by `to_torch`.

What it computes, for a batch x, a radius eps (l2) and an nn.Sequential classifier whose last
module is nn.Linear:

- `global_norms`: for every affine layer but the last, ||W||_2 of the exact operator (conv2d
  on the layer's input shape, adjoint by conv_transpose2d with the output padding that
  restores that shape), by power iteration on W^T W from given start vectors.
- `network_bounds`: one pass over the layers keeping, per sample, the clean activations h,
  a box [lower, upper] holding the activations of every point of the ball, a radius r with
  ||h(x') - h(x)|| <= r on the ball, and the mask of coordinates that can move. At an affine
  layer the box is interval arithmetic in centre/radius form (W mid + b +- |W| rad)
  intersected with z +- r * ||W_k over movable inputs||. At an activation the masks say
  which neurons are constant on the ball, the previous affine layer's local norm is
  ||diag(rows) W diag(cols)||_2 by masked power iteration (capped by the global norm), r is
  multiplied by it, and the activation's output box is the activation of the box
  intersected with h +- r.
- in torch_margins.py, `gloro_worst_logits`, `gloro_bottom_logit`, `gloro_loss`, `bcp_worst_logits`, `bcp_loss`,
  `gloro_bcp_loss`:
  worst-case logits over the ball from R = eps * L (GloRo: z_j + R ||w_j - w_y||; BCP:
  z_j + max c.d over the ball ||d|| <= R intersected with the penultimate box, as the dual
  value at a multiplier found by bisection: not lipref's sorted-breakpoint solver).

Conventions chosen to match lipref's, where a kink or a tie has to pick one side: at a tie
of an elementwise max/min (intersections, the cap by the global norm, clamps) the gradient
goes to the first argument; sqrt and norms have gradient 0 at 0.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .torch_modules import (  # noqa: F401
    ACTIVATION_MODULES,
    AFFINE_MODULES,
    ClampedMaxMin,
    ClippedReLU,
    input_shapes,
    to_torch,
    torch_sequential,
)

# ---------------------------------------------------------------- affine operators

def affine(module, x, weight, bias):
    """The affine module's map with the given weight and bias (bias may be None). Average
    pooling has no weight: its map is torch's own avg_pool2d (weight and bias unused)."""
    if isinstance(module, nn.AvgPool2d):
        return F.avg_pool2d(x, module.kernel_size, module.stride, module.padding, count_include_pad=True)
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, weight, bias, stride=module.stride, padding=module.padding)
    raise TypeError(f"not an affine module: {type(module).__name__}")


def conv_output_padding(module, in_hw, out_hw):
    """The output_padding that makes conv_transpose2d return the conv's input size in_hw."""
    return tuple(in_hw[d] - ((out_hw[d] - 1) * module.stride[d] - 2 * module.padding[d] + module.kernel_size[d])
                 for d in range(2))


def adjoint(module, u, weight, in_shape):
    """W^T u for the affine module's linear part, u of the output shape, result of in_shape."""
    if isinstance(module, nn.AvgPool2d):  # the adjoint of a linear map is its vector-Jacobian product
        _, vjp = torch.func.vjp(lambda t: affine(module, t, None, None), torch.zeros(in_shape, dtype=u.dtype))
        return vjp(u)[0]
    if isinstance(module, nn.Linear):
        return u @ weight
    if isinstance(module, nn.Conv2d):
        pad = conv_output_padding(module, in_shape[-2:], u.shape[-2:])
        return F.conv_transpose2d(u, weight, None, stride=module.stride, padding=module.padding,
                                  output_padding=pad)
    raise TypeError(f"not an affine module: {type(module).__name__}")


# ---------------------------------------------------------------- norms and power iteration

def per_sample(values, like):
    """(N,) -> (N, 1, ..., 1), broadcastable against `like`."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def sample_norms(x):
    """Euclidean norm of each sample (leading axis), (N,)."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


def safe_sqrt(x):
    """sqrt with gradient 0 (not inf) at 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def safe_norm(x, dim):
    """Euclidean norm over `dim` with gradient 0 at the zero vector."""
    return safe_sqrt((x * x).sum(dim=dim))


def unit_start(v0):
    """v0 / ||v0|| per sample; a zero sample becomes the constant unit vector."""
    norms = per_sample(sample_norms(v0), v0)
    constant = torch.full_like(v0, 1.0 / math.sqrt(v0[0].numel()))
    return torch.where(norms > 0, v0 / torch.where(norms > 0, norms, torch.ones_like(norms)), constant)


def masked_operator(module, weight, rows, cols, in_shape):
    """(apply, apply_adjoint) of v -> rows * W(cols * v), per sample; None masks are all ones."""
    def apply(v):
        out = affine(module, v if cols is None else v * cols, weight, None)
        return out if rows is None else out * rows

    def apply_adjoint(u):
        out = adjoint(module, u if rows is None else u * rows, weight, in_shape)
        return out if cols is None else out * cols
    return apply, apply_adjoint


def power_iteration(apply, apply_adjoint, v0, n_iters):
    """n_iters steps of v <- A^T A v / ||A^T A v|| per sample from v0 (no gradient).
    A sample whose A^T A v is zero keeps its v. Returns the final unit v."""
    with torch.no_grad():
        v = unit_start(v0)
        for _ in range(n_iters):
            w = apply_adjoint(apply(v))
            norms = per_sample(sample_norms(w), w)
            v = torch.where(norms > 0, w / torch.where(norms > 0, norms, torch.ones_like(norms)), v)
    return v


def masked_norm(module, rows, cols, in_shape, v0, n_iters):
    """(sigma, v): sigma = ||rows * W(cols * v)|| per sample, v from power iteration started at
    v0. sigma is differentiable in W with v held fixed (its gradient is then u v^T)."""
    weight = getattr(module, "weight", None)  # None: average pooling, a fixed map
    apply, apply_adjoint = masked_operator(module, None if weight is None else weight.detach(), rows, cols, in_shape)
    v = power_iteration(apply, apply_adjoint, v0, n_iters)
    apply_with_grad, _ = masked_operator(module, weight, rows, cols, in_shape)
    return sample_norms(apply_with_grad(v)), v


def global_norms(net, shapes, vectors, n_iters):
    """({layer index: ||W||_2 estimate, 0-d}, {layer index: final v}) for every affine module
    but the last, by power iteration from vectors[i] of shape (1,) + input shape."""
    norms, new_vectors = {}, {}
    for i, module in enumerate(list(net)[:-1]):
        if isinstance(module, AFFINE_MODULES):
            sigma, v = masked_norm(module, None, None, (1,) + shapes[i], _vector(vectors, i), n_iters)
            norms[i], new_vectors[i] = sigma[0], v
    return norms, new_vectors


def _vector(vectors, i):
    if i not in vectors:
        raise KeyError(f"no power-iteration start vector for layer {i}")
    return vectors[i]


# ---------------------------------------------------------------- masks

def activation_masks(module, lower, upper):
    """(row_mask, output_mask) from the activation's input box, 1 = can change on the ball.

    ReLU: constant where ub <= 0. Clipped ReLU: where ub <= 0 or lb >= threshold. MaxMin,
    per pair (a, b): the max output is constant where max(lb_a, lb_b) >= max (clamped for every
    point), the min output where min(ub_a, ub_b) <= min; both inputs of a pair feed both
    outputs, so the pair's rows are constant only when both outputs are."""
    dtype = lower.dtype
    if isinstance(module, nn.ReLU):
        moving = (upper > 0).to(dtype)
        return moving, moving
    if isinstance(module, ClippedReLU):
        moving = ((upper > 0) & (lower < module.threshold)).to(dtype)
        return moving, moving
    if isinstance(module, ClampedMaxMin):
        lower_a, lower_b = torch.chunk(lower, 2, dim=1)
        upper_a, upper_b = torch.chunk(upper, 2, dim=1)
        top_moves = torch.maximum(lower_a, lower_b) < module.max
        bottom_moves = torch.minimum(upper_a, upper_b) > module.min
        pair_moves = (top_moves | bottom_moves).to(dtype)
        outputs = torch.cat([top_moves.to(dtype), bottom_moves.to(dtype)], dim=1)
        return torch.cat([pair_moves, pair_moves], dim=1), outputs
    raise TypeError(f"not an activation module: {type(module).__name__}")


# ---------------------------------------------------------------- the walk

def larger(a, b):
    """Elementwise max, gradient to a at a tie."""
    return torch.where(a >= b, a, b)


def smaller(a, b):
    """Elementwise min, gradient to a at a tie."""
    return torch.where(a <= b, a, b)


@dataclass
class ActivationRecord:
    """What the walk found at one activation module."""
    index: int
    lower: torch.Tensor  # pre-activation box over the ball
    upper: torch.Tensor
    row_mask: torch.Tensor
    output_mask: torch.Tensor


@dataclass
class ReferenceBounds:
    logits: torch.Tensor
    penultimate: torch.Tensor
    lower: torch.Tensor  # box of the penultimate activations over the ball
    upper: torch.Tensor
    lipschitz: torch.Tensor  # (N,) bound of x -> penultimate on the ball (local or global)
    radius: torch.Tensor  # (N,) eps * lipschitz
    global_lipschitz: torch.Tensor  # 0-d, product of the global norms
    local_norms: list = field(default_factory=list)  # per affine layer but the last, (N,)
    global_norms: list = field(default_factory=list)  # per affine layer but the last, 0-d
    activations: list = field(default_factory=list)
    local_vectors: dict = field(default_factory=dict)
    global_vectors: dict = field(default_factory=dict)


class _Walk:
    """The state of one pass over the layers (see the module docstring)."""

    def __init__(self, x, eps, bound, n_iters, shapes, local_vectors, gnorms):
        self.eps, self.bound, self.n_iters, self.shapes = float(eps), bound, n_iters, shapes
        self.local_vectors, self.gnorms = local_vectors, gnorms
        self.n = x.shape[0]
        self.h, self.lower, self.upper = x, x - self.eps, x + self.eps
        self.cols = torch.ones_like(x)
        self.lipschitz = torch.ones(self.n, dtype=x.dtype, device=x.device)
        self.pending = None  # (index, module, input mask) of an affine layer awaiting its row mask
        self.local_norms, self.new_vectors, self.activations = [], {}, []

    def radius(self):
        return self.lipschitz * self.eps

    def affine_layer(self, i, module):
        self.close(None)
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        z = affine(module, self.h, weight, bias)
        mid, rad = (self.upper + self.lower) * 0.5, (self.upper - self.lower) * 0.5
        centre = affine(module, mid, weight, bias)
        if weight is None:  # average pooling: weights 1/k^2 >= 0, so |W| = W; ||row||^2 = (inputs counted) / k^4
            spread = affine(module, rad, None, None)
            row_norms = safe_sqrt(affine(module, self.cols, None, None)) / module.kernel_size
        else:
            spread = affine(module, rad, weight.abs(), None)
            row_norms = safe_sqrt(affine(module, self.cols, weight * weight, None))
        ball = row_norms * per_sample(self.radius(), z)
        self.lower = larger(centre - spread, z - ball)
        self.upper = smaller(centre + spread, z + ball)
        self.h = z
        self.pending = (i, module, self.cols)
        self.cols = torch.ones_like(z)  # an affine layer's outputs can all move

    def activation_layer(self, i, module):
        rows, outputs = activation_masks(module, self.lower.detach(), self.upper.detach())
        self.close(rows)
        self.activations.append(ActivationRecord(i, self.lower, self.upper, rows, outputs))
        self.h = module(self.h)
        r = per_sample(self.radius(), self.h)
        self.lower = larger(module(self.lower), self.h - r)
        self.upper = smaller(module(self.upper), self.h + r)
        self.cols = outputs

    def flatten_layer(self):
        self.close(None)
        self.h, self.lower, self.upper, self.cols = (t.flatten(1) for t in (self.h, self.lower, self.upper, self.cols))

    def close(self, rows):
        """Multiply the bound by the pending affine layer's norm (rows None: all rows move)."""
        if self.pending is None:
            return
        i, module, cols = self.pending
        self.pending = None
        cap = self.gnorms[i]
        if self.bound == "local":
            if rows is None:
                rows = torch.ones((self.n,) + self.shapes[i + 1], dtype=self.h.dtype, device=self.h.device)
            sigma, v = masked_norm(module, rows, cols, (self.n,) + self.shapes[i],
                                   _vector(self.local_vectors, i), self.n_iters)
            self.new_vectors[i] = v
            sigma = smaller(sigma, cap)
        else:
            sigma = cap * torch.ones(self.n, dtype=self.h.dtype, device=self.h.device)
        self.local_norms.append(sigma)
        self.lipschitz = self.lipschitz * sigma


def network_bounds(net, x, eps, n_iters, local_vectors, global_vectors, bound="local", shapes=None):
    """Logits at x and the bound of x -> penultimate activations over the l2 ball of radius eps.

    net: nn.Sequential of nn.Linear, nn.Conv2d, nn.Flatten, nn.ReLU, ClippedReLU, ClampedMaxMin,
    last module nn.Linear. local_vectors / global_vectors: {layer index: start vectors},
    (N,) + input shape and (1,) + input shape. bound: "local" or "global". shapes: from
    `input_shapes` (computed when None). Differentiable in the parameters by torch autograd."""
    if bound not in ("local", "global"):
        raise ValueError(f"bound must be 'local' or 'global', got {bound!r}")
    modules = list(net)
    if not isinstance(modules[-1], nn.Linear):
        raise ValueError("the last module must be nn.Linear")
    shapes = shapes or input_shapes(net, tuple(x.shape[1:]))
    gnorms, gvectors = global_norms(net, shapes, global_vectors, n_iters)
    walk = _Walk(x, eps, bound, n_iters, shapes, local_vectors, gnorms)
    for i, module in enumerate(modules[:-1]):
        if isinstance(module, AFFINE_MODULES):
            walk.affine_layer(i, module)
        elif isinstance(module, ACTIVATION_MODULES):
            walk.activation_layer(i, module)
        elif isinstance(module, nn.Flatten):
            walk.flatten_layer()
        else:
            raise TypeError(f"no bound for module {type(module).__name__}")
    walk.close(None)
    last = modules[-1]
    glob = torch.ones((), dtype=x.dtype, device=x.device)
    for g in gnorms.values():
        glob = glob * g
    return ReferenceBounds(logits=F.linear(walk.h, last.weight, last.bias), penultimate=walk.h,
                           lower=walk.lower, upper=walk.upper, lipschitz=walk.lipschitz, radius=walk.radius(),
                           global_lipschitz=glob, local_norms=walk.local_norms,
                           global_norms=list(gnorms.values()), activations=walk.activations,
                           local_vectors=walk.new_vectors, global_vectors=gvectors)


# ---------------------------------------------------------------- worst-case logits and losses
