"""Kernel: the ball-and-box multiplier by sorted breakpoints, registered for
"ball_box_multiplier".

The plain definition (bounds/certificate.py, `ball_box_multiplier`) bisects on lam for 200
steps; this finds the same lam with one sort. tests/test_ball_box.py checks both against
the true maximum and against each other on exact zeros, ties, breakpoints on the sphere,
boxes inside the ball and 1e8 weight ratios. Certificates never depend on which lam is
found: they use the weak-duality bound (margins.ball_box_upper_bound), an upper bound for
any lam.
"""
from ..backend import namespace
from .registry import register


@register("ball_box_multiplier")
def sorted_breakpoint_multiplier(c, lo, hi, corner):
    """(lam, inside) of the scaled problem (max |c_i| = 1, box within [-1, 1], R = 1): the
    multiplier where ||clip(lam c, lo, hi)|| = 1, by sorted breakpoints (lo and hi enter
    through `corner`, c's corner of the box; inside: the corner lies in the ball).

    Coordinate i sits at its corner once lam >= t_i = corner_i / c_i (never for c_i = 0).
    With the t_i sorted, on piece k (t_(k-1) <= lam <= t_k) the first k coordinates are at
    their corners and ||d||^2 = S_k + lam^2 C_k (S_k: their sum of corner^2, a prefix sum;
    C_k: the others' sum of c^2, a suffix sum, so no cancellation); the first piece whose
    end reaches 1 holds lam = sqrt((1 - S_k) / C_k), clamped into [t_(k-1), t_k] (rounding
    may say "reached" one piece late, when the sphere is met at a breakpoint)."""
    xp = namespace(c)
    moving = c != 0
    t = xp.where(moving, corner / xp.where(moving, c, xp.ones_like(c)), xp.full_like(c, xp.inf))
    order = xp.argsort(t, axis=1)
    t_sorted = xp.take_along_axis(t, order, axis=1)
    corner_sq = xp.take_along_axis(corner * corner, order, axis=1)
    c_sq = xp.take_along_axis(c * c, order, axis=1)
    clipped_sq = xp.cumulative_sum(corner_sq, axis=1, include_initial=True)[:, :-1]  # S_k
    free_sq = xp.flip(xp.cumulative_sum(xp.flip(c_sq, axis=1), axis=1), axis=1)  # C_k
    has_free = free_sq > 0  # where C_k == 0 the rest have c = 0: the piece is flat
    grow = xp.where(has_free, t_sorted, xp.zeros_like(t_sorted)) * xp.sqrt(free_sq)
    reached = clipped_sq + grow * grow >= 1
    inside = ~xp.any(reached, axis=1)
    k = xp.argmax(xp.astype(reached, xp.int8), axis=1)[:, None]  # the first piece that reaches 1
    t_start = xp.take_along_axis(xp.concat([xp.zeros_like(t_sorted[:, :1]), t_sorted], axis=1), k, axis=1)[:, 0]
    t_end = xp.take_along_axis(t_sorted, k, axis=1)[:, 0]
    s_k = xp.take_along_axis(clipped_sq, k, axis=1)[:, 0]
    c_k = xp.take_along_axis(free_sq, k, axis=1)[:, 0]
    on_piece = xp.sqrt(xp.maximum(1 - s_k, xp.zeros_like(s_k)) / xp.where(c_k > 0, c_k, xp.ones_like(c_k)))
    lam = xp.where(c_k > 0, xp.minimum(xp.maximum(on_piece, t_start), t_end), t_start)
    return lam, inside
