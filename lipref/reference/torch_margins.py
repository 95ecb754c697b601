"""The reference's last layer: worst-case logits over the ball (GloRo's and the ball-and-box
form) and the robust losses, in torch (see torch_reference.py for the conventions)."""
import math

import torch
import torch.nn.functional as F

from .torch_reference import larger, safe_norm, smaller


def class_differences(weight, labels):
    """(N, K, D): w_j - w_y for every sample and class j."""
    return weight.unsqueeze(0) - weight[labels].unsqueeze(1)


def gloro_worst_logits(logits, weight, labels, radius):
    """z_j + R ||w_j - w_y|| (z_y at j = y)."""
    return logits + safe_norm(class_differences(weight, labels), dim=2) * radius.unsqueeze(1)


def gloro_bottom_logit(logits, weight, labels, radius):
    """GloRo's extra logit, max over j != y of the worst-case logits, (N, 1)."""
    worst = gloro_worst_logits(logits, weight, labels, radius)
    own = F.one_hot(labels, logits.shape[1]).bool()
    return worst.masked_fill(own, -math.inf).max(dim=1, keepdim=True).values


def gloro_loss(logits, weight, labels, radius):
    """Mean cross-entropy over [z, bottom logit] with the true label (GloRo)."""
    augmented = torch.cat([logits, gloro_bottom_logit(logits, weight, labels, radius)], dim=1)
    return F.cross_entropy(augmented, labels)


def ball_box_support(c, lo, hi, radius, n_steps=200):
    """max c.d subject to ||d|| <= R and lo <= d <= hi (lo <= 0 <= hi), per row.

    c, lo, hi: (M, D); radius: (M,). For mu = 1/lam >= 0, weak duality gives
    max <= g(lam) = R^2 / (2 lam) + sum_i max_(lo_i <= d_i <= hi_i) (c_i d_i - d_i^2 / (2 lam)),
    the inner maxima at d_i = clip(lam c_i, lo_i, hi_i), with equality at the lam where
    ||d|| = R (or at mu = 0, the box corner, when the box lies in the ball). lam is found by
    bisection (geometric, on the problem scaled to max |c| = 1, R = 1; ||clip(lam c)|| grows
    with lam) and detached: g is stationary in lam there, so autograd through g with lam
    fixed gives the gradient of the maximum (envelope theorem). An algorithm independent of
    lipref's sorted breakpoints."""
    with torch.no_grad():
        top = c.abs().amax(dim=1)
        degenerate = (top == 0) | (radius == 0)
        s = torch.where(degenerate, torch.ones_like(top), top).unsqueeze(1)
        r = torch.where(degenerate, torch.ones_like(radius), radius).unsqueeze(1)
        cs = c / s
        los, his = (lo / r).clamp(-1, 0), (hi / r).clamp(0, 1)
        corner = torch.where(cs > 0, his, torch.where(cs < 0, los, torch.zeros_like(cs)))
        inside = (corner * corner).sum(dim=1) <= 1
        t = torch.where(cs != 0, corner / torch.where(cs != 0, cs, torch.ones_like(cs)), torch.zeros_like(cs))
        below = 1 / torch.where(degenerate, torch.ones_like(top), cs.norm(dim=1))
        above = torch.maximum(torch.where(torch.isfinite(t), t, torch.zeros_like(t)).amax(dim=1), below)
        for _ in range(n_steps):
            mid = below.sqrt() * above.sqrt()
            short = (torch.minimum(torch.maximum(mid.unsqueeze(1) * cs, los), his) ** 2).sum(dim=1) <= 1
            below, above = torch.where(short, mid, below), torch.where(short, above, mid)
        lam = (above * r[:, 0] / s[:, 0]).unsqueeze(1)  # back in the problem's units
        use_box = inside | degenerate
        lam = torch.where(use_box.unsqueeze(1), torch.ones_like(lam), lam)
    d = torch.minimum(torch.maximum(lam * c, lo), hi)
    dual = radius * radius / (2 * lam[:, 0]) + (c * d - d * d / (2 * lam)).sum(dim=1)
    corner = torch.where(c > 0, hi, torch.where(c < 0, lo, torch.zeros_like(c)))
    at_corner = (c * corner).sum(dim=1)
    value = torch.where(inside & ~degenerate, at_corner, dual)
    return torch.where(degenerate, torch.zeros_like(value), value)


def bcp_worst_logits(logits, weight, labels, radius, penultimate, lower, upper):
    """z_j + max over d in the ball ||d|| <= R and the box [lower - h, upper - h] of
    (w_j - w_y).d, per sample and class (z_y at j = y)."""
    diff = class_differences(weight, labels)
    n, k, dim = diff.shape
    gap_lo, gap_hi = lower - penultimate, upper - penultimate
    zero = torch.zeros_like(gap_lo)
    lo = smaller(gap_lo, zero).unsqueeze(1).expand(n, k, dim).reshape(n * k, dim)
    hi = larger(gap_hi, zero).unsqueeze(1).expand(n, k, dim).reshape(n * k, dim)
    r = radius.unsqueeze(1).expand(n, k).reshape(n * k)
    support = ball_box_support(diff.reshape(n * k, dim), lo, hi, r)
    return logits + support.reshape(n, k)


def bcp_loss(bounds, weight, labels):
    """Mean cross-entropy of the ball-and-box worst-case logits."""
    worst = bcp_worst_logits(bounds.logits, weight, labels, bounds.radius, bounds.penultimate,
                             bounds.lower, bounds.upper)
    return F.cross_entropy(worst, labels)


def gloro_bcp_loss(bounds, weight, labels):
    """GloRo's loss whose bottom logit is max_{j != y} of the ball-and-box worst-case logits."""
    worst = bcp_worst_logits(bounds.logits, weight, labels, bounds.radius, bounds.penultimate,
                             bounds.lower, bounds.upper)
    own = F.one_hot(labels, worst.shape[1]).bool()
    bottom = worst.masked_fill(own, -math.inf).max(dim=1, keepdim=True).values
    return F.cross_entropy(torch.cat([bounds.logits, bottom], dim=1), labels)


def robust_loss(kind, bounds, weight, labels):
    """The robust loss `kind` ("gloro", "bcp", "gloro-bcp") of a network_bounds result."""
    if kind == "gloro":
        return gloro_loss(bounds.logits, weight, labels, bounds.radius)
    return {"bcp": bcp_loss, "gloro-bcp": gloro_bcp_loss}[kind](bounds, weight, labels)
