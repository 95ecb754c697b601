"""A probabilistic upper bound on spectral norms: Lanczos from a random start.

`lanczos_upper_bound` holds, per sample, with probability >= 1 - failure_prob over a start
vector drawn from a rotation-invariant distribution (Gaussian) independently of A
(Kuczynski & Wozniakowski 1992), up to the floating-point allowance described in
docs/soundness.md ("Spectral norms").
"""
import math

from ..backend import eigh, namespace
from .rounding import lanczos_rho, lanczos_upper
from .spectral import _flat, _normalise, _sample_dim, norms

# Kuczynski & Wozniakowski (1992), Lanczos with a random start on an n x n symmetric
# positive (semi)definite matrix, k steps: P[(lambda_1 - theta_k) / lambda_1 >= eps]
# <= KW_CONSTANT * sqrt(n) * exp(-sqrt(eps) * (2k - 1)).
KW_CONSTANT = 1.648



# ---------------------------------------------------------------- Lanczos upper bound

def kw_relative_error(n, n_steps, failure_prob):
    """The eps of Kuczynski & Wozniakowski (1992) for the Lanczos algorithm: with
    probability >= 1 - failure_prob over a uniformly random start, the largest Ritz value
    theta after `n_steps` steps on an n x n PSD matrix satisfies theta >= (1 - eps) lambda_1.

    Solves KW_CONSTANT sqrt(n) exp(-sqrt(eps)(2k - 1)) = failure_prob. When n_steps >= n,
    the Krylov space is invariant and contains the start vector, so theta = lambda_1 with
    probability 1 and eps = 0. A value >= 1 means the bound is vacuous."""
    if not (0.0 < failure_prob < 1.0):
        raise ValueError(f"failure_prob must be in (0, 1), got {failure_prob}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if n_steps >= n:
        return 0.0
    root = math.log(KW_CONSTANT * math.sqrt(n) / failure_prob) / (2 * n_steps - 1)
    return root * root


def _orthonormalise(w, basis):
    """Orthogonalise w (B, n) against the orthonormal rows of basis (B, j, n) by two passes
    of classical Gram-Schmidt, then normalise. Returns (unit, norm, ok): ok is False where
    the second pass still lost more than a factor sqrt(2) of the norm -- w lay numerically
    in span(basis) and the result would not be orthogonal (Kahan-Parlett "twice is
    enough", as in Daniel-Gragg-Kaufman-Stewart 1976) -- or where nothing is left."""
    xp = namespace(w)
    before = None
    for _ in range(2):
        before = norms(w)
        coeffs = xp.matmul(basis, w[:, :, None])  # (B, j, 1)
        w = w - xp.matmul(xp.matrix_transpose(basis), coeffs)[:, :, 0]
    unit, norm = _normalise(w)
    ok = (norm > 0) & (norm * math.sqrt(2) >= before)
    return unit, norm, ok


def lanczos_upper_bound(apply, apply_adjoint, v0, n_iters, failure_prob, stop_above=None, check_every=4):
    """Probabilistic upper bound on ||A||_2 per sample by Lanczos on A^T A.

    v0: (B, ...) start vectors, drawn by the caller from a Gaussian (any rotation-invariant
    law) independently of A -- a fresh draw, never a warm start, or the guarantee is void.
    n_iters: Lanczos steps k (each one product with A^T A); full reorthogonalisation.
    failure_prob: the probability, per sample, that the bound fails.
    stop_above: optional scalar or (B,): a bound the caller already has (e.g. the
    deterministic norm of the unmasked operator). The largest Ritz value only grows with
    the steps, so once the bound that k steps would give from today's Ritz value is at
    least stop_above, the final bound cannot beat it: every `check_every` steps, if that
    holds for all samples, the iteration stops early, and such samples get +inf.

    Returns (upper, estimate, v):
      upper (B,): sqrt((max(theta, estimate^2) + delta) (1 + rho) / (1 - eps)), theta the
        largest Ritz value, eps from `kw_relative_error`, rho = sqrt(machine epsilon) a
        floating-point allowance, delta = 2 (n + m)^2 eta one for underflow (m the output
        size, eta the smallest subnormal); +inf where the bound is vacuous (eps >= 1),
        where v0 is zero, where the computation is not finite, or where it cannot beat
        stop_above -- the caller then falls back to another bound.
      estimate (B,): ||A v||, a lower estimate of ||A||_2 (like power iteration's sigma).
      v (B, ...): the unit Ritz vector of theta (a good warm start for power iteration).
    """
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    xp = namespace(v0)
    shape = tuple(v0.shape)
    n = _sample_dim(v0)
    k = min(n_iters, n)  # more than n orthonormal directions do not exist
    eps = kw_relative_error(n, k, failure_prob)
    rho = lanczos_rho(xp, v0.dtype)
    start = _flat(v0)
    q, start_norms = _normalise(start)
    stop = None if stop_above is None or eps >= 1.0 else (stop_above, (1 + rho) / (1 - eps), check_every)
    alphas, betas, basis, beaten = _lanczos_steps(apply, apply_adjoint, start, q, shape, k, stop)

    steps = len(alphas)  # k, or fewer after an early stop
    ritz_values, ritz_vectors = eigh(_tridiagonal(alphas, betas, xp), values_only=False)
    theta = ritz_values[:, -1]
    y = ritz_vectors[:, :, -1]  # (B, steps)
    x = xp.matmul(y[:, None, :], basis[:, :steps, :])[:, 0, :]
    v, _ = _normalise(x)
    v = xp.reshape(v, shape)
    image = apply(v)
    estimate = norms(image)

    lam = xp.maximum(xp.maximum(theta, estimate * estimate), xp.zeros_like(theta))
    inf = xp.full_like(theta, math.inf)
    if eps >= 1.0:
        return inf, estimate, v
    upper = lanczos_upper(lam, eps, n, _sample_dim(image), xp, v0.dtype)  # the rounding allowances (rounding.py)
    good = (start_norms > 0) & xp.isfinite(upper) & ~beaten
    return xp.where(good, upper, inf), estimate, v


def _lanczos_steps(apply, apply_adjoint, start, q, shape, k, stop):
    """Lanczos with full reorthogonalisation from the unit q (B, n): (alphas, betas (one
    more than needed), the basis (B, k, n), the samples whose bound cannot beat stop[0]).
    stop: None, or (stop_above, the bound's factor on theta, check_every)."""
    xp = namespace(q)
    b, n = q.shape
    dtype = q.dtype
    basis = xp.zeros((b, k, n), dtype=dtype)
    alphas, betas = [], []
    q_prev = xp.zeros_like(q)
    beta_prev = xp.zeros((b,), dtype=dtype)
    beaten = xp.zeros((b,), dtype=xp.bool)
    for j in range(k):
        basis[:, j, :] = q
        w = _flat(apply_adjoint(apply(xp.reshape(q, shape))))
        alpha = xp.sum(q * w, axis=1)
        alphas.append(alpha)
        if j == k - 1:
            break
        if stop is not None and (j + 1) % stop[2] == 0:
            beaten = _cannot_beat(alphas, betas, stop[0], stop[1], xp)
            if bool(xp.all(beaten)):
                break
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        w_unit, beta = _next_lanczos_vector(w, start, basis[:, :j + 1, :], j)
        betas.append(beta)
        q_prev, q, beta_prev = q, w_unit, beta
    betas.append(xp.zeros((b,), dtype=dtype))
    return alphas, betas, basis, beaten


def _cannot_beat(alphas, betas, stop_above, factor, xp):
    """theta after k steps >= theta now (the Krylov space only grows), so the bound from
    today's Ritz value is a lower bound on the one the full run would return."""
    b = alphas[0].shape[0]
    theta_now = eigh(_tridiagonal(alphas, betas + [xp.zeros((b,), dtype=alphas[0].dtype)], xp), True)[:, -1]
    return xp.sqrt(xp.maximum(theta_now, xp.zeros_like(theta_now)) * factor) >= stop_above


def _next_lanczos_vector(w, start, basis, j):
    """(q_(j+1), beta_j) from the residual w. Breakdown (w numerically inside span(Q)): the
    Krylov space is (numerically) invariant. Continue in its orthogonal complement from a
    restart vector -- the random start rolled, a fixed function of it -- with coupling
    beta = 0. The span only grows, so the largest Ritz value can only grow
    (docs/soundness.md)."""
    xp = namespace(w)
    w_unit, beta, ok = _orthonormalise(w, basis)
    if not bool(xp.all(ok)):
        restart = xp.roll(start, 7 * j + 1, axis=1)
        r_unit, _, r_ok = _orthonormalise(restart, basis)
        r_unit = xp.where(r_ok[:, None], r_unit, xp.zeros_like(r_unit))  # nothing left: q = 0
        w_unit = xp.where(ok[:, None], w_unit, r_unit)
        beta = xp.where(ok, beta, xp.zeros_like(beta))
    return w_unit, beta


def _tridiagonal(alphas, betas, xp):
    """The Lanczos matrix from the diagonal (list of (B,)) and the couplings (list of (B,),
    beta_j between steps j and j + 1, one more than needed; the last is unused): (B, j, j)."""
    j = len(alphas)
    alpha = xp.stack(alphas, axis=1)
    off = xp.stack(betas[:j], axis=1)
    upper_diag = off[:, :, None] * xp.eye(j, k=1, dtype=alpha.dtype)  # (i, i + 1) = beta_i
    return alpha[:, :, None] * xp.eye(j, dtype=alpha.dtype) + upper_diag + xp.matrix_transpose(upper_diag)
