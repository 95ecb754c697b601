"""Training losses, written with the primitives so that the tape differentiates them.

- `clean_loss`: mean softmax cross-entropy of the logits.
- `gloro_loss`: GloRo's loss, the cross-entropy over the logits plus one extra "bottom"
  logit max_{j != y} z_j + R ||w_j - w_y|| (the worst-case logit of the other classes), with
  the label y. Small when z_y beats every class even after the worst move within the ball.
- `bcp_loss`: the cross-entropy over the worst-case logits of the ball-and-box last layer.
- `gloro_bcp_loss`: GloRo's form with the bottom logit taken from the ball-and-box
  worst-case logits instead of R ||w_j - w_y|| (never larger, so never a looser loss).
- `mixed_loss`: kappa * clean + (1 - kappa) * robust, the paper's schedule mixes the two.
- `sparsity_loss`: pushes clipped neurons to be constant on the ball (off or saturated).

All take a `NetworkBounds` built with record=True and one-hot labels; all return scalars.
"""
from . import primitives as P
from .backend import namespace
from .bounds import margins as M
from .bounds.rules import mean as _mean
from .bounds.rules import rule_of
from .errors import InputError
from .tape import value_of

ROBUST_LOSSES = ("gloro", "bcp", "gloro-bcp")


def clean_loss(logits, onehot):
    """Mean cross-entropy of the logits."""
    return _mean(P.softmax_cross_entropy(logits, onehot))


def _with_bottom_logit(logits, bottom, onehot):
    """Cross-entropy over [z, bottom] with the true class y: GloRo's form of a robust loss."""
    xp = namespace(value_of(onehot))
    n = value_of(onehot).shape[0]
    augmented = P.concat([logits, bottom], 1)
    target = xp.concat([onehot, xp.zeros((n, 1), dtype=onehot.dtype)], axis=1)
    return _mean(P.softmax_cross_entropy(augmented, target))


def _bcp_worst(bounds, last_weight, onehot):
    return M.bcp_worst_logits(bounds.logits, last_weight, onehot, bounds.radius, bounds.penultimate,
                              bounds.lower, bounds.upper)


def gloro_loss(bounds, last_weight, onehot):
    """Cross-entropy over [z, bottom logit] with the true class y (GloRo, Leino et al. 2021)."""
    bottom = M.gloro_bottom_logit(bounds.logits, last_weight, onehot, bounds.radius)
    return _with_bottom_logit(bounds.logits, bottom, onehot)


def gloro_bcp_loss(bounds, last_weight, onehot):
    """GloRo's loss whose bottom logit is max_{j != y} of the ball-and-box worst-case logits,
    z_j + max_{d in ball and box} (w_j - w_y) . d (the official MNIST recipe, `--gloro` there)."""
    bottom = M.bottom_logit(_bcp_worst(bounds, last_weight, onehot), onehot)
    return _with_bottom_logit(bounds.logits, bottom, onehot)


def bcp_loss(bounds, last_weight, onehot):
    """Cross-entropy over the ball-and-box worst-case logits (the paper's tighter last layer)."""
    return _mean(P.softmax_cross_entropy(_bcp_worst(bounds, last_weight, onehot), onehot))


ROBUST = {"gloro": gloro_loss, "bcp": bcp_loss, "gloro-bcp": gloro_bcp_loss}


def robust_loss(kind, bounds, last_weight, onehot):
    if kind not in ROBUST:
        raise InputError(f"unknown robust loss {kind!r}; choose one of {', '.join(ROBUST_LOSSES)}")
    return ROBUST[kind](bounds, last_weight, onehot)


def mixed_loss(kind, bounds, last_weight, onehot, kappa):
    """kappa * clean cross-entropy + (1 - kappa) * robust loss (kappa in [0, 1])."""
    return mixed_loss_terms(kind, bounds, last_weight, onehot, kappa)[0]


def mixed_loss_terms(kind, bounds, last_weight, onehot, kappa):
    """(`mixed_loss`, its clean cross-entropy, its robust loss or None where kappa = 1 leaves
    it out), the terms as the tape holds them (training reports each)."""
    if not 0.0 <= kappa <= 1.0:
        raise InputError(f"kappa must be in [0, 1], got {kappa}")
    clean = clean_loss(bounds.logits, onehot)
    if kappa == 1.0:
        return clean, clean, None
    robust = robust_loss(kind, bounds, last_weight, onehot)
    if kappa == 0.0:
        return robust, clean, robust
    return P.add(P.multiply(clean, kappa), P.multiply(robust, 1.0 - kappa)), clean, robust


def sparsity_loss(activations, saturation_weight=0.1):
    """Sum over activation layers of each rule's sparsity term (bounds/rules.py), which is zero
    once every neuron is constant on the ball: ReLU mean(relu(ub)); clipped ReLU mean(relu(ub))
    + c mean(relu(theta - lb)), c = saturation_weight (the paper's code uses 0.1); clamped
    MaxMin both halves clamped. `activations`: NetworkBounds.activations from a walk with
    record=True."""
    terms = [rule_of(a.layer).sparsity(a.params, a.lower, a.upper, saturation_weight) for a in activations]
    if not terms:
        raise InputError("the model has no activation layers, so there is nothing to sparsify")
    total = terms[0]
    for term in terms[1:]:
        total = P.add(total, term)
    return total
