"""Spectral norms of linear operators: estimates (power iteration) and upper bounds.

An operator A is given by two functions acting on batches, `apply(v)` and
`apply_adjoint(u)`: the leading axis indexes samples and every sample has its own
operator (e.g. a masked layer m_out * W(m_in * v)). All math takes its array namespace
from its inputs, so it runs on NumPy, CuPy and array-api-strict.

What each function guarantees (the arguments are in docs/soundness.md, "Spectral norms"):

- `power_iteration`: sigma = ||A v|| for a unit v, a LOWER estimate of ||A||_2. Fast, no
  guarantee of being close; the returned v warm-starts the next call.
- `lanczos_upper_bound`: a PROBABILISTIC upper bound. For a start vector drawn from a
  rotation-invariant distribution (Gaussian) independently of A, each sample's bound holds
  with probability >= 1 - failure_prob (Kuczynski & Wozniakowski 1992), up to the
  floating-point allowance described in the docs.
- `dense_spectral_norm_upper`, `gram_iteration_upper`, `conv_spectral_norm_upper`,
  `gram_cholesky_upper`, `conv_spectral_norm_certified`: DETERMINISTIC upper bounds, with
  rounding margins derived from the standard model of IEEE floating-point arithmetic (no
  overflow, no reduced-precision matmul modes).

No host NumPy here: small dense eigenproblems go to xp.linalg; only a namespace without a
linalg extension falls back to the host (see `_eigh`).
"""
import functools
import math

from .. import primitives as P
from ..backend import cholesky_or_none, namespace

# Kuczynski & Wozniakowski (1992), Lanczos with a random start on an n x n symmetric
# positive (semi)definite matrix, k steps: P[(lambda_1 - theta_k) / lambda_1 >= eps]
# <= KW_CONSTANT * sqrt(n) * exp(-sqrt(eps) * (2k - 1)).
KW_CONSTANT = 1.648


# ---------------------------------------------------------------- small helpers

def _unit_roundoff(xp, dtype):
    """u = eps / 2: |fl(x op y) - (x op y)| <= u |x op y| in round-to-nearest."""
    return float(xp.finfo(dtype).eps) / 2


def _gamma(k, u):
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k roundings."""
    ku = k * u
    if ku >= 0.5:
        raise ValueError(f"problem too large for a rounding bound ({k} operations at unit roundoff {u})")
    return ku / (1 - ku)


def _flat(x):
    """(B, ...) -> (B, n)."""
    xp = namespace(x)
    return xp.reshape(x, (x.shape[0], -1))


def _sample_dim(x):
    n = 1
    for d in x.shape[1:]:
        n *= d
    return n


def _norms(x):
    """Per-sample Euclidean norm, (B,).

    Fast path: the plain sum of squares, as dot products (`vecdot`: one pass over x and no
    temporary, 4x faster than summing x * x on 4c3f's iterates) over pieces of each sample,
    then summed (`_pieces_per_sample`; any order of summation keeps the gamma_n error bound
    docs/soundness.md uses). Where a sum is so small that underflowed squares could matter
    (below tiny * n / eps), or not finite (overflow), all norms are recomputed with the
    largest entry scaled out first, so that vectors with entries near 1e-160 (float64) or
    1e-20 (float32) keep an accurate norm."""
    return _norms_and_range(x)[0]


def _norms_and_range(x):
    """(`_norms(x)`, its smallest and its largest entry as Python floats): the extremes
    come from the checks the norms need anyway, so callers that test the range (power
    iteration, at every step) need no more array calls for it. NaN if a norm is NaN."""
    xp = namespace(x)
    n, dim = x.shape[0], _sample_dim(x)
    if n == 0:
        return xp.zeros((0,), dtype=x.dtype), math.nan, math.nan
    pieces = _pieces_per_sample(n, dim)
    parts = xp.reshape(x, (n * pieces, dim // pieces))
    squares = xp.vecdot(parts, parts, axis=-1)
    if pieces > 1:
        squares = xp.sum(xp.reshape(squares, (n, pieces)), axis=1)
    smallest, largest = float(xp.min(squares)), float(xp.max(squares))
    floor = _underflow_floor(xp, x.dtype, dim)
    if largest < math.inf and (smallest > floor or (smallest == 0 and _zero_or_above(parts, squares, floor))):
        return xp.sqrt(squares), math.sqrt(smallest), math.sqrt(largest)  # NaN fails both tests
    norms = _scaled_norms(x)
    return norms, float(xp.min(norms)), float(xp.max(norms))


def _zero_or_above(parts, squares, floor):
    """Is every sample either exactly zero (a masked operator with no entry left: its norm
    is exactly 0, no scaling needed) or of squares above floor? A zero sum of squares alone
    does not say the first: squares of 1e-200 underflow to 0 in float64."""
    xp = namespace(parts)
    n = squares.shape[0]
    largest_entry = xp.max(xp.reshape(xp.abs(parts), (n, -1)), axis=1)
    return bool(xp.all((largest_entry == 0) | (squares > floor)))


_FLOAT_INFO = {}  # (id(namespace), id(dtype)) -> (dtype, smallest normal, eps)


def _underflow_floor(xp, dtype, dim):
    """Below this sum of dim squares, underflowed squares could matter: tiny * dim / eps."""
    # keyed by identity: dtypes of different libraries must not be compared with each other
    # (array-api-strict warns), and naming a NumPy dtype costs more than asking finfo
    key = (id(xp), id(dtype))
    entry = _FLOAT_INFO.get(key)
    if entry is None or entry[0] is not dtype:
        info = xp.finfo(dtype)
        entry = _FLOAT_INFO[key] = (dtype, float(info.smallest_normal), float(info.eps))
    return entry[1] * dim / entry[2]


# NumPy runs a gufunc's loop (vecdot's) without the interpreter lock only when it has more
# than 500 iterations; one dot per sample of a block of 32 kept the lock, and the threads
# bounding other blocks queued behind it (a sixth of all lock-holding time measured in the
# 4c3f local bound). Cut into pieces, the same sums run without it, as fast.
_GUFUNC_LOOP_WITHOUT_LOCK = 512
_SHORTEST_PIECE = 64


@functools.lru_cache(maxsize=256)
def _pieces_per_sample(n, dim):
    """The fewest pieces (a divisor of dim, each at least _SHORTEST_PIECE long) that give
    n samples at least _GUFUNC_LOOP_WITHOUT_LOCK dot products; 1 where none does."""
    want = -(-_GUFUNC_LOOP_WITHOUT_LOCK // max(n, 1))
    for pieces in range(max(want, 1), dim // _SHORTEST_PIECE + 1):
        if dim % pieces == 0:
            return pieces
    return 1


def _scaled_norms(x):
    """Per-sample Euclidean norm with each sample's largest entry scaled out first: no
    overflow or underflow in the squares, at the price of two more passes over x."""
    xp = namespace(x)
    axes = tuple(range(1, x.ndim))
    scale = xp.max(xp.abs(x), axis=axes)
    scaled = x / _per_sample(_safe(scale), x)
    return scale * xp.sqrt(xp.sum(scaled * scaled, axis=axes))


def _per_sample(s, like):
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`."""
    return namespace(s).reshape(s, (s.shape[0],) + (1,) * (like.ndim - 1))


def _safe(s):
    """s where s > 0, else 1 (a denominator that never divides by zero)."""
    xp = namespace(s)
    return xp.where(s > 0, s, xp.ones_like(s))


def _normalise(x):
    """x / ||x|| per sample and the norms; samples with ||x|| == 0 stay zero (no NaN)."""
    norms = _norms(x)
    return x / _per_sample(_safe(norms), x), norms


def _transpose(a):
    """Swap the last two axes."""
    xp = namespace(a)
    axes = tuple(range(a.ndim - 2)) + (a.ndim - 1, a.ndim - 2)
    return xp.permute_dims(a, axes)


def _eigh(a, values_only):
    """Eigen-decomposition of a batch of small symmetric matrices (..., k, k), ascending.

    Uses the backend's linalg extension. A namespace without one falls back to host
    LAPACK: these matrices are small (Lanczos tridiagonals, Gram matrices), so the copy
    costs little, and there is no array-API way to diagonalise without linalg."""
    xp = namespace(a)
    if hasattr(xp, "linalg"):
        if values_only:
            return xp.linalg.eigvalsh(a)
        res = xp.linalg.eigh(a)
        return res.eigenvalues, res.eigenvectors
    from ..backend import host, to_host  # host fallback, see docstring
    a_host = to_host(a)
    if values_only:
        return xp.asarray(host.linalg.eigvalsh(a_host))
    w, v = host.linalg.eigh(a_host)
    return xp.asarray(w), xp.asarray(v)


# ---------------------------------------------------------------- power iteration

# Power iteration needs only the direction of each iterate. Dividing by the norm at every
# step is a pass over the iterate; it is done only when some norm leaves [2^-32, 2^32]
# (then the next product can neither overflow nor underflow in float32 unless ||A||^2 is
# beyond 2^90 or below 2^-90), and once at the end.
_RESCALE_ABOVE, _RESCALE_BELOW = 2.0 ** 32, 2.0 ** -32


def power_iteration(apply, apply_adjoint, v0, n_iters, gram=None, left=True):
    """Batched power iteration on A^T A, one operator per sample.

    v0: (B, ...) start vectors in A's input shape; callers draw them at random (Gaussian)
    or pass the v of a previous call to warm-start. A sample whose v0 is exactly zero is
    started from the constant unit vector instead (deterministic, never NaN).
    n_iters: number of A^T A products (0 allowed: then v = v0 / ||v0||).
    gram: optional v -> A^T A v, valid for v in the range of A^T. After the first product
    every iterate is in that range, so a masked operator can skip the mask products the
    iterate already satisfies. The first product always uses apply_adjoint(apply(v)):
    a stored start vector need not fit today's masks.
    left: also return u (False: u is None, saving a pass over A v).

    Returns (sigma, u, v): v (B, ...) unit per sample, sigma (B,) = ||A v|| (a lower
    estimate of ||A||_2, exact only in the limit), u = A v / sigma (0 where sigma == 0, so
    a zero operator gives sigma 0 and u 0, not NaN).

    Between products the iterates are scaled only when their norms leave a safe range
    (see _RESCALE_ABOVE): the same directions as dividing at every step, up to rounding.
    """
    v = power_iteration_vector(apply, apply_adjoint, v0, n_iters, gram)
    out = apply(v)
    if not left:
        return _norms(out), None, v
    u, sigma = _normalise(out)
    return sigma, u, v


def power_iteration_vector(apply, apply_adjoint, v0, n_iters, gram=None):
    """power_iteration's v alone (unit per sample, same arguments), without the product
    A v that sigma needs: for callers that take ||A v|| on a tape themselves."""
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    xp = namespace(v0)
    v = safe_start(v0)
    in_range = False  # is v in the range of A^T (so that gram may be used)?
    for _ in range(n_iters):
        w = gram(v) if (gram is not None and in_range) else apply_adjoint(apply(v))
        w_norms, smallest, largest = _norms_and_range(w)
        if smallest == 0:
            # w == 0: v lies in A's null space (or A == 0); keep v rather than divide by
            # zero. That v may be outside A^T's range, so gram is off from here on.
            v = xp.where(_per_sample(w_norms == 0, v), v, w)
            gram = None
        else:
            v = w
        if _rescale_needed(w_norms, smallest, largest):
            v = _normalise(v)[0]
        in_range = True
    return _normalise(v)[0]


def safe_start(v0):
    """The start power_iteration uses, from v0 (B, ...): v0 itself while every sample's
    norm is in the rescaling range (only its direction matters), else every sample scaled
    to unit; the constant unit vector where v0 is exactly zero (deterministic, never NaN)."""
    xp = namespace(v0)
    norms, smallest, largest = _norms_and_range(v0)
    if smallest == 0:
        zero = norms == 0
        fallback = xp.ones_like(v0) / math.sqrt(_sample_dim(v0))
        v0 = xp.where(_per_sample(zero, v0), fallback, v0)
        norms = xp.where(zero, xp.ones_like(norms), norms)  # the fallback's norm
    if _rescale_needed(norms, smallest, largest):
        v0 = v0 / _per_sample(norms, v0)
    return v0


def _rescale_needed(norms, smallest, largest):
    """Does some nonzero norm lie outside [_RESCALE_BELOW, _RESCALE_ABOVE]? From the
    extremes (`_norms_and_range`) when none is zero; else the smallest nonzero norm is not
    known, and the norms themselves are asked. NaN extremes say no, as NaN norms do."""
    if smallest != 0:
        return largest > _RESCALE_ABOVE or smallest < _RESCALE_BELOW
    xp = namespace(norms)
    return bool(xp.any((norms > _RESCALE_ABOVE) | ((norms < _RESCALE_BELOW) & (norms != 0))))


def global_norm_power_iteration(apply, apply_adjoint, v0, n_iters):
    """Power iteration for one operator (not per sample): v0 has a leading axis of 1.

    Returns (sigma, u, v) with sigma a 0-d array."""
    if v0.shape[0] != 1:
        raise ValueError(f"global_norm_power_iteration takes one start vector (leading axis 1), "
                         f"got shape {tuple(v0.shape)}")
    sigma, u, v = power_iteration(apply, apply_adjoint, v0, n_iters)
    return sigma[0], u, v


# ---------------------------------------------------------------- Lanczos upper bound

def _orthonormalise(w, basis):
    """Orthogonalise w (B, n) against the orthonormal rows of basis (B, j, n) by two passes
    of classical Gram-Schmidt, then normalise. Returns (unit, norm, ok): ok is False where
    the second pass still lost more than a factor sqrt(2) of the norm -- w lay numerically
    in span(basis) and the result would not be orthogonal (Kahan-Parlett "twice is
    enough", as in Daniel-Gragg-Kaufman-Stewart 1976) -- or where nothing is left."""
    xp = namespace(w)
    before = None
    for _ in range(2):
        before = _norms(w)
        coeffs = xp.matmul(basis, w[:, :, None])  # (B, j, 1)
        w = w - xp.matmul(_transpose(basis), coeffs)[:, :, 0]
    unit, norm = _normalise(w)
    ok = (norm > 0) & (norm * math.sqrt(2) >= before)
    return unit, norm, ok


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
      upper (B,): sqrt(max(theta, estimate^2) (1 + rho) / (1 - eps)), theta the largest
        Ritz value, eps from `kw_relative_error`, rho = sqrt(machine epsilon) a floating-point
        allowance; +inf where the bound is vacuous (eps >= 1), where v0 is zero, where the
        computation is not finite, or where it cannot beat stop_above -- the caller then
        falls back to another bound.
      estimate (B,): ||A v||, a lower estimate of ||A||_2 (like power iteration's sigma).
      v (B, ...): the unit Ritz vector of theta (a good warm start for power iteration).
    """
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    xp = namespace(v0)
    dtype = v0.dtype
    shape = tuple(v0.shape)
    b, n = shape[0], _sample_dim(v0)
    k = min(n_iters, n)  # more than n orthonormal directions do not exist
    eps = kw_relative_error(n, k, failure_prob)

    start = _flat(v0)
    q, start_norms = _normalise(start)
    basis = xp.zeros((b, k, n), dtype=dtype)
    alphas, betas = [], []
    q_prev = xp.zeros_like(q)
    beta_prev = xp.zeros((b,), dtype=dtype)
    rho = math.sqrt(_unit_roundoff(xp, dtype) * 2)  # sqrt(machine epsilon), see docs
    beaten = xp.zeros((b,), dtype=xp.bool)  # samples whose bound cannot beat stop_above
    for j in range(k):
        basis[:, j, :] = q
        w = _flat(apply_adjoint(apply(xp.reshape(q, shape))))
        alpha = xp.sum(q * w, axis=1)
        alphas.append(alpha)
        if j == k - 1:
            break
        if stop_above is not None and eps < 1.0 and (j + 1) % check_every == 0:
            # theta after k steps >= theta now (the Krylov space only grows), so this is a
            # lower bound on the bound the full run would return
            theta_now = _eigh(_tridiagonal(alphas, betas + [xp.zeros((b,), dtype=dtype)], xp), True)[:, -1]
            beaten = xp.sqrt(xp.maximum(theta_now, xp.zeros_like(theta_now)) * ((1 + rho) / (1 - eps))) >= stop_above
            if bool(xp.all(beaten)):
                break
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        w_unit, beta, ok = _orthonormalise(w, basis[:, :j + 1, :])
        # Breakdown (w numerically inside span(Q)): the Krylov space is (numerically)
        # invariant. Continue in its orthogonal complement from a restart vector -- the
        # random start rolled, a fixed function of it -- with coupling beta = 0. The span
        # only grows, so the largest Ritz value can only grow (docs/soundness.md).
        if not bool(xp.all(ok)):
            restart = xp.roll(start, 7 * j + 1, axis=1)
            r_unit, _, r_ok = _orthonormalise(restart, basis[:, :j + 1, :])
            r_unit = xp.where(r_ok[:, None], r_unit, xp.zeros_like(r_unit))  # nothing left: q = 0
            w_unit = xp.where(ok[:, None], w_unit, r_unit)
            beta = xp.where(ok, beta, xp.zeros_like(beta))
        betas.append(beta)
        q_prev, q, beta_prev = q, w_unit, beta
    betas.append(xp.zeros((b,), dtype=dtype))

    steps = len(alphas)  # k, or fewer after an early stop
    ritz_values, ritz_vectors = _eigh(_tridiagonal(alphas, betas, xp), values_only=False)
    theta = ritz_values[:, -1]
    y = ritz_vectors[:, :, -1]  # (B, steps)
    x = xp.matmul(y[:, None, :], basis[:, :steps, :])[:, 0, :]
    v, _ = _normalise(x)
    v = xp.reshape(v, shape)
    estimate = _norms(apply(v))

    lam = xp.maximum(xp.maximum(theta, estimate * estimate), xp.zeros_like(theta))
    inf = xp.full_like(theta, math.inf)
    if eps >= 1.0:
        return inf, estimate, v
    upper = xp.sqrt(lam * ((1 + rho) / (1 - eps)))
    good = (start_norms > 0) & xp.isfinite(upper) & ~beaten
    return xp.where(good, upper, inf), estimate, v


def _tridiagonal(alphas, betas, xp):
    """The Lanczos matrix from the diagonal (list of (B,)) and the couplings (list of (B,),
    beta_j between steps j and j + 1, one more than needed; the last is unused): (B, j, j)."""
    j = len(alphas)
    alpha = xp.stack(alphas, axis=1)
    off = xp.stack(betas[:j], axis=1)
    upper_diag = off[:, :, None] * xp.eye(j, k=1, dtype=alpha.dtype)  # (i, i + 1) = beta_i
    return alpha[:, :, None] * xp.eye(j, dtype=alpha.dtype) + upper_diag + _transpose(upper_diag)


# ---------------------------------------------------------------- dense matrices

def dense_spectral_norm_upper(matrices):
    """Deterministic upper bound on ||M_b||_2 for a batch of dense matrices (B, m, n).

    Each M is first scaled by s = max |M_ij| (so no Gram entry can overflow or lose
    accuracy to underflow), M' = fl(M / s). Then lambda = the largest eigenvalue of the
    smaller Gram matrix G' of M' (M' M'^T or M'^T M', p = min(m, n), inner dimension
    q = max(m, n)) by xp.linalg.eigvalsh, and
        ||M'||_2^2 <= lambda + (2 gamma_q + gamma_{8 p^2} (1 + gamma_q)) F',
    F' = ||M'||_F^2 (1 + gamma_{mn+1}) an upper bound on the Frobenius norm squared: the
    Gram product's rounding is at most gamma_q F' in 2-norm (doubled to cover underflow),
    the eigensolver's backward error is taken as gamma_{8 p^2} ||fl(G')||_F. Finally
    ||M||_2 <= s (sqrt(that) (1 + 8u) + 2u sqrt(F')) (1 + 2u), the 2u sqrt(F') covering the
    rounding of M / s. Returns (B,), 0 for zero matrices. See docs/soundness.md.
    """
    xp = namespace(matrices)
    if matrices.ndim != 3:
        raise ValueError(f"expected a batch of matrices (B, m, n), got shape {tuple(matrices.shape)}")
    _, m, n = matrices.shape
    u = _unit_roundoff(xp, matrices.dtype)
    scale = xp.max(xp.abs(matrices), axis=(1, 2))
    scaled = matrices / _safe(scale)[:, None, None]
    if m <= n:
        gram = xp.matmul(scaled, _transpose(scaled))
    else:
        gram = xp.matmul(_transpose(scaled), scaled)
    p, q = min(m, n), max(m, n)
    lam = _eigh(gram, values_only=True)[:, -1]
    frob_sq = xp.sum(scaled * scaled, axis=(1, 2)) * (1 + _gamma(m * n + 1, u))
    g_q = _gamma(q, u)
    margin = (2 * g_q + _gamma(8 * p * p, u) * (1 + g_q)) * frob_sq
    bound_sq = xp.maximum(lam, xp.zeros_like(lam)) + margin
    bound = xp.sqrt(bound_sq) * (1 + 8 * u) + 2 * u * xp.sqrt(frob_sq)
    return scale * bound * (1 + 2 * u)


def gram_iteration_upper(matrix, n_iters):
    """Deterministic upper bound on ||W||_2 by Gram iteration (Delattre et al., ICML 2023).

    matrix: (m, n) or a batch (B, m, n). In exact arithmetic ||W||_2 <= ||G_t||_F^(1/2^t)
    with G_0 = W, G_{t+1} = G_t^T G_t; the bound decreases with t and tends to ||W||_2 as
    fast as (sigma_2 / sigma_1)^(2^t). Each G_t is rescaled to unit Frobenius norm (no
    overflow) and the bound is assembled backwards with rounding margins (docs/soundness.md).
    Returns a 0-d array for one matrix, (B,) for a batch.
    """
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    xp = namespace(matrix)
    single = matrix.ndim == 2
    w = matrix[None, ...] if single else matrix
    if w.ndim != 3:
        raise ValueError(f"expected (m, n) or (B, m, n), got shape {tuple(matrix.shape)}")
    _, m, n = w.shape
    u = _unit_roundoff(xp, w.dtype)
    p = min(m, n)

    frob = _scaled_norms  # G_t's entries may be far out of range before the rescaling

    # step t: X_t (computed), r_t = fl(||X_t||_F), H_t = fl(X_t / r_t)
    # kappa_t: ||X_t||_F <= r_t kappa_t;  H_t = X_t / r_t + D_t with ||D_t||_F <= u kappa_t
    def kappa(size):
        return 1 / (1 - _gamma(size + 4, u))

    r0 = frob(w)
    h = w / _safe(r0)[:, None, None]
    radii, kappas, inner = [r0], [kappa(m * n)], []
    for t in range(n_iters):
        if t == 0 and m <= n:
            x = xp.matmul(h, _transpose(h))
            inner.append(n)
        elif t == 0:
            x = xp.matmul(_transpose(h), h)
            inner.append(m)
        else:
            x = xp.matmul(_transpose(h), h)
            inner.append(p)
        r = frob(x)
        h = x / _safe(r)[:, None, None]
        radii.append(r)
        kappas.append(kappa(p * p))

    # backwards: b_T >= ||H_T||_2, then ||H_{t-1}||_2^2 <= r_t (b_t + u kappa_t) + 2 gamma_q h_{t-1}^2
    b = xp.full_like(r0, kappas[-1] * (1 + u))
    for t in range(n_iters, 0, -1):
        h_prev = kappas[t - 1] * (1 + u)
        b = xp.sqrt(radii[t] * (b + u * kappas[t]) + 2 * _gamma(inner[t - 1], u) * h_prev * h_prev)
    bound = r0 * (b + u * kappas[0]) * (1 + 4 * (n_iters + 2) * u)
    bound = xp.where(r0 > 0, bound, xp.zeros_like(bound))
    return bound[0] if single else bound


# ---------------------------------------------------------------- convolutions

def conv_spectral_norm_upper(weight, in_hw, stride, padding):
    """Deterministic upper bound on the operator norm of conv2d(., weight, None, stride,
    padding) on inputs of spatial size in_hw = (H, W); weight (O, C, kh, kw).

    The zero-padded input is embedded in a circular grid of Nh x Nw points, Nh and Nw
    multiples of the stride s, large enough that no valid output reads across the wrap
    (`circular_grids`): conv2d = P o Circ_s o E with E the (isometric) zero embedding,
    Circ_s the stride-s circular convolution on the grid and P a selection of distinct
    outputs (||P|| <= 1). Circ_s is, up to a permutation of its input coordinates (the
    s x s polyphase components of each channel), the stride-1 circular convolution on the
    (Nh / s) x (Nw / s) grid with C s^2 input channels and kernel `polyphase_kernel(weight,
    s)`. So ||Circ_s|| = max over that grid's frequencies of ||K(f)||_2, exactly
    (`circulant_norm_upper`; for s = 1 this is Sedghi et al. 2019). Every valid grid gives
    an upper bound; the result is the smallest over a few of them (the maximum over a
    grid's frequencies is a sample of the kernel's symbol, and different grids sample it
    differently). The grid (H + 2p) x (W + 2p) of the plain stride-1 circulant bound is
    always among them (rounded up to multiples of s; when it is not a multiple, that plain
    bound itself joins the minimum), and on it the stride-s circulant is a selection of the
    stride-1 one, so the result is never above the plain bound (up to its rounding margins).
    Arguments: docs/soundness.md.

    Returns a 0-d array of weight's dtype.
    """
    xp = namespace(weight)
    _, _, kh, kw = weight.shape
    h, w_in = in_hw
    if stride < 1 or padding < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    if kh > h + 2 * padding or kw > w_in + 2 * padding:
        raise ValueError(f"kernel {kh}x{kw} does not fit input {h}x{w_in} with padding {padding}")
    phases = polyphase_kernel(weight, stride)
    best = None
    for nh, nw in circular_grids(in_hw, (kh, kw), stride, padding):
        bound = circulant_norm_upper(phases, (nh // stride, nw // stride))
        best = bound if best is None else xp.minimum(best, bound)
    plain = (h + 2 * padding, w_in + 2 * padding)
    if plain[0] % stride or plain[1] % stride:
        # the plain grid is not a candidate above; its stride-1 circulant bound (conv2d is a
        # selection of it) joins the minimum, so the result is never above that older bound
        best = xp.minimum(best, circulant_norm_upper(weight, plain))
    return best


def circular_grids(in_hw, kernel_hw, stride, padding, extra=3):
    """Circular grid sizes (Nh, Nw) on which conv2d(., stride, padding) on an H x W input is
    a selection of the stride-s circular convolution of the zero-embedded input.

    Per axis (rows; columns alike), with x written at rows p .. p + H - 1 of an N-row grid
    and zeros elsewhere, and OH = (H + 2p - kh) // s + 1 outputs, N is valid when
    - N >= H + p: x fits after p zero rows. A padded row r <= s (OH - 1) + kh - 1 <= H + 2p - 1
      read by a valid output lands on grid row r mod N; for r < N that row holds exactly the
      padded value; for r >= N (bottom padding, zero) it lands on row r - N < p, a zero row;
    - N >= s OH: outputs i = 0 .. OH - 1 are distinct points of the N / s strided outputs;
    - N is a multiple of s (for the polyphase form).
    Returns the smallest valid N and the next `extra` multiples of s on both axes, plus
    the grid (H + 2p, W + 2p) rounded up to multiples of s (the grid of the plain circulant
    bound), in increasing order."""
    def axis(n_in, k):
        n_out = (n_in + 2 * padding - k) // stride + 1
        smallest = _round_up(max(n_in + padding, stride * n_out), stride)
        return [smallest + j * stride for j in range(extra + 1)], _round_up(n_in + 2 * padding, stride)

    rows, plain_h = axis(in_hw[0], kernel_hw[0])
    cols, plain_w = axis(in_hw[1], kernel_hw[1])
    grids = set(zip(rows, cols))
    grids.add((plain_h, plain_w))
    return sorted(grids)


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def polyphase_kernel(weight, stride):
    """The stride-1 kernel of a stride-s circular convolution on its polyphase components:
    (O, C, kh, kw) -> (O, C s^2, ceil(kh / s), ceil(kw / s)), entry
    [o, (c, alpha, beta), a', b'] = w[o, c, s a' + alpha, s b' + beta] (zero past the kernel).

    Why: on an N-row grid with N = s M, (s i + s a' + alpha) mod N = s ((i + a') mod M) + alpha
    for 0 <= alpha < s, so output i of the stride-s circular convolution reads tap (a', alpha)
    from row (i + a') mod M of the input's phase alpha, x_alpha[i'] = x[s i' + alpha]: a
    stride-1 circular convolution of the phases. A plain rearrangement: no rounding."""
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    s = stride
    th, tw = _round_up(kh, s) // s, _round_up(kw, s) // s
    padded = xp.zeros((o, c, th * s, tw * s), dtype=weight.dtype)
    padded[:, :, :kh, :kw] = weight
    split = xp.reshape(padded, (o, c, th, s, tw, s))  # [o, c, a', alpha, b', beta]
    phases = xp.permute_dims(split, (0, 1, 3, 5, 2, 4))  # [o, c, alpha, beta, a', b']
    return xp.reshape(phases, (o, c * s * s, th, tw))


def circulant_norm_upper(weight, grid_hw):
    """Deterministic upper bound on the norm of the stride-1 circular convolution (cross-
    correlation) with kernel weight (O, C, kh, kw) on an Nh x Nw grid, grid_hw = (Nh, Nw):
    the maximum over the grid's frequencies f of ||K(f)||_2, K(f) the O x C matrix of the
    kernel's 2-D DFT (Sedghi et al. 2019), with margins for rounding. The kernel may be
    larger than the grid (its taps then wrap around; the formula still holds).

    K(f) is computed as an explicit small DFT (a matmul with cos/sin tables, all on the
    backend), with a margin for its rounding; each ||K(f)||_2 is bounded by
    `dense_spectral_norm_upper` on the real 2O x 2C form [[Re, -Im], [Im, Re]], whose
    singular values are K(f)'s, each twice. Only half of the frequencies are needed:
    K(-f) = conj(K(f)) for a real kernel. Returns a 0-d array of weight's dtype.
    """
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    nh, nw = grid_hw
    dtype = weight.dtype
    u = _unit_roundoff(xp, dtype)

    def tables(n_freq_used, n_grid, taps):
        """cos/sin of 2 pi (f a mod N) / N, (n_freq_used, taps); the index product is exact."""
        f = xp.arange(n_freq_used)[:, None]
        a = xp.arange(taps)[None, :]
        angle = xp.astype((f * a) % n_grid, dtype) * (2 * math.pi / n_grid)
        return xp.cos(angle), xp.sin(angle)

    c1, s1 = tables(nh // 2 + 1, nh, kh)  # (F1, kh): half the rows, see docstring
    c2, s2 = tables(nw, nw, kw)  # (F2, kw)
    # separable DFT: Re = sum_ab w (c1 c2 - s1 s2), Im = sum_ab w (s1 c2 + c1 s2)
    t_c = xp.tensordot(weight, c1, axes=((2,), (1,)))  # (O, C, kw, F1)
    t_s = xp.tensordot(weight, s1, axes=((2,), (1,)))
    re = xp.tensordot(t_c, c2, axes=((2,), (1,))) - xp.tensordot(t_s, s2, axes=((2,), (1,)))  # (O, C, F1, F2)
    im = xp.tensordot(t_s, c2, axes=((2,), (1,))) + xp.tensordot(t_c, s2, axes=((2,), (1,)))
    n_freq = re.shape[2] * re.shape[3]
    re = xp.permute_dims(xp.reshape(re, (o, c, n_freq)), (2, 0, 1))  # (F, O, C)
    im = xp.permute_dims(xp.reshape(im, (o, c, n_freq)), (2, 0, 1))
    real_form = xp.concat([xp.concat([re, -im], axis=2), xp.concat([im, re], axis=2)], axis=1)

    chunk = max(1, (1 << 22) // (4 * o * c))
    best = None
    for s in range(0, n_freq, chunk):
        part = xp.max(dense_spectral_norm_upper(real_form[s:min(s + chunk, n_freq), ...]))
        best = part if best is None else xp.maximum(best, part)

    # DFT rounding: each table entry is off by at most tau = 32u (angle 2 pi m / N with
    # relative error gamma_3, plus the cos/sin library error); each entry of Re and Im is
    # then off by at most eps_dft * S[o, c], S = sum_ab |w_ocab|, so
    # ||K(f) - fl(K(f))||_2 <= sqrt(2) eps_dft ||S||_F.
    tau = 32 * u
    eps_dft = 2 * _gamma(kh + kw + 1, u) + 3 * tau
    s_abs = xp.sum(xp.abs(weight), axis=(2, 3))
    s_frob = xp.sqrt(xp.sum(s_abs * s_abs)) * (1 + _gamma(o * c * (kh * kw + 1) + 2, u))
    bound = (best + math.sqrt(2) * eps_dft * s_frob) * (1 + 4 * u)
    return xp.astype(bound, dtype)


# ---------------------------------------------------------------- dense Gram certificate

def gram_cholesky_upper(apply, apply_adjoint, in_shape, out_shape, depth, abs_norm_upper, rng,
                        n_steps=60, max_rounds=4, margins=(1e-8, 1e-6, 1e-4, 1e-2), chunk=256):
    """Deterministic upper bound on ||A||_2 of ONE operator, nearly exact, from its dense
    Gram matrix on the smaller side (p = min(n_in, n_out) rows and columns).

    apply / apply_adjoint act on batches shaped (B,) + in_shape / (B,) + out_shape;
    abs_norm_upper (a 0-d array) gives the backend and the float dtype. The Gram matrix is built column by column from basis
    vectors, B[:, j] = A (A^T e_j) (output side; the input side alike): the first product
    is exact (each of its dot products has one nonzero term), the second is a dot product
    of at most `depth` terms, so |fl(B) - B| <= gamma_depth |A| |A|^T entrywise and
    ||fl(B) - B||_2 <= gamma_depth ||abs(A)||_2^2 <= gamma_depth abs_norm_upper^2
    (abs_norm_upper: an upper bound on the norm of the operator with entries |A_ij|).
    The lower triangle is mirrored, so the matrix is exactly symmetric.

    Then, for mu = theta (1 + margin), theta a Lanczos estimate of lambda_max (at most
    max_rounds rounds of n_steps steps from a start drawn with rng; it only decides how
    tight the bound is, never whether it holds), floating-point Cholesky is run on
    C = fl(mu I - B). If it runs to
    completion, C + dC = R^T R with |dC| <= gamma_(p+1) |R^T| |R| (Demmel 1989; Higham,
    Accuracy and Stability, Thm 10.3; any order of summation), so
    lambda_min(C) >= -gamma_(p+1) tr(C) / (1 - gamma_(p+1)), and
        ||A||_2^2 <= mu + gamma_(p+1) tr|C| / (1 - gamma_(p+1)) + 2u max|C_ii|
                     + gamma_depth abs_norm_upper^2 + 4 (2 (p + 1) + max|C_ii|) eta
    (the shift's rounding, the Gram's rounding, and Rump's 2006 allowance for underflow,
    eta the smallest subnormal). Margins are tried in order (a failed Cholesky costs one
    factorisation); if none succeeds the result is +inf.

    Returns (upper, estimate): 0-d arrays, estimate = sqrt(theta) (a lower estimate).
    Costs p^2 numbers of memory and one p^3 / 3 factorisation per margin tried.
    """
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    outer = n_out <= n_in  # Gram on the output side, A A^T
    p = min(n_in, n_out)
    first, second, basis_shape = (apply_adjoint, apply, out_shape) if outer else (apply, apply_adjoint, in_shape)
    xp = namespace(abs_norm_upper)
    dtype = abs_norm_upper.dtype
    rows = []
    for j0 in range(0, p, chunk):
        count = min(chunk, p - j0)
        rows.append(xp.reshape(second(first(_basis(xp, j0, count, p, basis_shape, dtype))), (count, p)))
    gram = xp.concat(rows, axis=0)
    gram = xp.tril(gram) + xp.matrix_transpose(xp.tril(gram, k=-1))  # exactly symmetric

    def matvec(v):
        return xp.matmul(v, gram)
    # Lanczos in rounds of n_steps, each restarted from the last Ritz vector, until the
    # Ritz pair's residual is below 1e-10 of it (clustered top eigenvalues converge slowly)
    v = xp.asarray(rng.standard_normal((1, p)), dtype=dtype)
    theta = 0.0
    for _ in range(max_rounds):
        _, _, v = lanczos_upper_bound(matvec, matvec, v, min(n_steps, p), 0.5)
        bv = matvec(v)
        theta = float(xp.sum(v * bv))  # the Rayleigh quotient: an estimate of lambda_max(B)
        if float(_norms(bv - theta * v)[0]) <= 1e-10 * abs(theta):
            break
    u = _unit_roundoff(xp, dtype)
    info = xp.finfo(dtype)
    eta = float(info.smallest_normal) * float(info.eps)  # the smallest subnormal
    base = theta if theta > 0 else float(info.smallest_normal)
    rounding_gram = _gamma(depth, u) * float(abs_norm_upper) ** 2
    g = _gamma(p + 1, u)
    eye = xp.eye(p, dtype=dtype)
    for margin in margins:
        mu = base * (1 + margin)
        shifted = eye * mu - gram  # diagonal fl(mu - B_ii), off the diagonal -B_ij exactly
        if cholesky_or_none(xp, shifted) is None:
            continue
        diag = xp.abs(xp.linalg.diagonal(shifted))
        trace = float(xp.sum(diag)) * (1 + _gamma(p, u))
        cmax = float(xp.max(diag))
        total = mu + g * trace / (1 - g) + 2 * u * cmax + rounding_gram + 4 * (2 * (p + 1) + cmax) * eta
        upper = math.sqrt(total * (1 + 8 * u)) * (1 + 2 * u)
        return xp.asarray(upper, dtype=dtype), xp.asarray(math.sqrt(max(theta, 0.0)), dtype=dtype)
    return xp.asarray(math.inf, dtype=dtype), xp.asarray(math.sqrt(max(theta, 0.0)), dtype=dtype)


def _basis(xp, start, count, p, shape, dtype):
    """Unit vectors e_start .. e_(start+count-1) of R^p, shaped (count,) + shape."""
    return xp.reshape(xp.eye(count, p, k=start, dtype=dtype), (count,) + tuple(shape))


def conv_spectral_norm_certified(weight, in_hw, stride, padding, rng, max_dim=8192, n_steps=60):
    """Deterministic upper bound on the norm of conv2d(., weight, None, stride, padding) on
    inputs of spatial size in_hw, nearly exact (relative excess ~1e-9 on the 4c3f layers):
    `gram_cholesky_upper` on the materialised Gram matrix where its side (the smaller of
    the layer's input and output sizes) is at most max_dim, capped by
    `conv_spectral_norm_upper` (the polyphase circulant bound, 0.1-1% above the exact norm
    with zero padding), which is also the result for larger layers. Returns a 0-d array."""
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    h, w = in_hw
    circulant = conv_spectral_norm_upper(weight, in_hw, stride, padding)
    oh, ow = P.conv_output_hw(h, w, kh, kw, stride, padding)
    in_shape, out_shape = (c, h, w), (o, oh, ow)
    if min(math.prod(in_shape), math.prod(out_shape)) > max_dim:
        return circulant
    th, tw = -(-kh // stride), -(-kw // stride)
    depth = max(th * tw * stride * stride * c, th * tw * o)  # longest dot product of either direction

    def apply(v):
        return P.conv2d(v, weight, None, stride, padding)

    def apply_adjoint(y):
        return P.conv2d_transpose(y, weight, stride, padding, in_hw)
    abs_upper = conv_spectral_norm_upper(xp.abs(weight), in_hw, stride, padding)
    upper, _ = gram_cholesky_upper(apply, apply_adjoint, in_shape, out_shape, depth, abs_upper, rng, n_steps)
    return xp.minimum(upper, circulant)
