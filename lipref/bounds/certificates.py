"""Sound upper bounds on the spectral norms of conv layers (dense matrices:
rounding.dense_spectral_norm_upper; the global norms of sound mode:
layer_norms.sound_global_norms).

What each function guarantees (the arguments are in docs/soundness.md, "Spectral norms"):

- `conv_spectral_norm_upper` (the polyphase circulant bound), `gram_cholesky_upper`,
  `conv_spectral_norm_certified`: DETERMINISTIC upper bounds, with rounding margins from
  rounding.py (the standard model of IEEE arithmetic: no overflow, no reduced-precision
  matmul modes).
- The PROBABILISTIC Lanczos bound of the masked conv norms is in lanczos.py.
"""
import math

from .. import primitives as P
from ..backend import cholesky_or_none, namespace
from ..shapes import conv_output_hw
from .lanczos import lanczos_upper_bound
from .rounding import cholesky_norm_upper, dense_spectral_norm_upper, dft_norm_upper
from .spectral import norms

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

    bound = dft_norm_upper(best, weight, xp)  # the DFT's rounding (rounding.py)
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
                     + gamma_depth abs_norm_upper^2 + 4 (2 (p + 1) + max|C_ii|) eta + p depth eta
    (the shift's rounding, the Gram's rounding, Rump's 2006 allowance for underflow in the
    factorisation, eta the smallest subnormal, and the Gram entries' underflow: depth
    products of at most eta / 2 each, p entries to a row). Margins are tried in order (a failed Cholesky costs one
    factorisation); if none succeeds the result is +inf.

    Returns (upper, estimate): 0-d arrays, estimate = sqrt(theta) (a lower estimate).
    Costs p^2 numbers of memory and one p^3 / 3 factorisation per margin tried.
    """
    gram = _dense_gram(apply, apply_adjoint, in_shape, out_shape, abs_norm_upper, chunk)
    xp = namespace(gram)
    dtype = gram.dtype
    theta = _gram_top_eigenvalue(gram, rng, n_steps, max_rounds)
    base = theta if theta > 0 else float(xp.finfo(dtype).smallest_normal)
    p = gram.shape[0]
    eye = xp.eye(p, dtype=dtype)
    estimate = xp.asarray(math.sqrt(max(theta, 0.0)), dtype=dtype)
    for margin in margins:
        mu = base * (1 + margin)
        shifted = eye * mu - gram  # diagonal fl(mu - B_ii), off the diagonal -B_ij exactly
        if cholesky_or_none(xp, shifted) is None:
            continue
        diag = xp.abs(xp.linalg.diagonal(shifted))
        upper = cholesky_norm_upper(mu, float(xp.sum(diag)), float(xp.max(diag)), p, depth, abs_norm_upper, xp,
                                    dtype)
        return xp.asarray(upper, dtype=dtype), estimate
    return xp.asarray(math.inf, dtype=dtype), estimate


def _dense_gram(apply, apply_adjoint, in_shape, out_shape, like, chunk):
    """The operator's Gram matrix on its smaller side, exactly symmetric (p, p)."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    outer = n_out <= n_in  # Gram on the output side, A A^T
    p = min(n_in, n_out)
    first, second, basis_shape = (apply_adjoint, apply, out_shape) if outer else (apply, apply_adjoint, in_shape)
    xp = namespace(like)
    rows = []
    for j0 in range(0, p, chunk):
        count = min(chunk, p - j0)
        rows.append(xp.reshape(second(first(_basis(xp, j0, count, p, basis_shape, like.dtype))), (count, p)))
    gram = xp.concat(rows, axis=0)
    return xp.tril(gram) + xp.matrix_transpose(xp.tril(gram, k=-1))  # exactly symmetric


def _gram_top_eigenvalue(gram, rng, n_steps, max_rounds):
    """A Rayleigh-quotient estimate of lambda_max(gram) (a Python float): Lanczos in rounds
    of n_steps, each restarted from the last Ritz vector, until the Ritz pair's residual is
    below 1e-10 of it (clustered top eigenvalues converge slowly)."""
    xp = namespace(gram)
    p = gram.shape[0]

    def matvec(v):
        return xp.matmul(v, gram)
    v = xp.asarray(rng.standard_normal((1, p)), dtype=gram.dtype)
    theta = 0.0
    for _ in range(max_rounds):
        _, _, v = lanczos_upper_bound(matvec, matvec, v, min(n_steps, p), 0.5)
        bv = matvec(v)
        theta = float(xp.sum(v * bv))
        if float(norms(bv - theta * v)[0]) <= 1e-10 * abs(theta):
            break
    return theta


def _basis(xp, start, count, p, shape, dtype):
    """Unit vectors e_start .. e_(start+count-1) of R^p, shaped (count,) + shape."""
    return xp.reshape(xp.eye(count, p, k=start, dtype=dtype), (count,) + tuple(shape))


# ---------------------------------------------------------------- conv layers, networks

GRAM_LIMIT = 8192  # the default largest Gram side; --gram-limit (certify.CertifyConfig) sets it

def conv_spectral_norm_certified(weight, in_hw, stride, padding, rng, max_dim=GRAM_LIMIT, n_steps=60):
    """Deterministic upper bound on the norm of conv2d(., weight, None, stride, padding) on
    inputs of spatial size in_hw, nearly exact: `gram_cholesky_upper` on the materialised
    Gram matrix where its side (the smaller of the layer's input and output sizes) is at
    most max_dim, capped by `conv_spectral_norm_upper` (the polyphase circulant bound, a
    little above the exact norm with zero padding), which is also the result for larger
    layers. Returns a 0-d array."""
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    h, w = in_hw
    circulant = conv_spectral_norm_upper(weight, in_hw, stride, padding)
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
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
