"""Linear operators for the spectral tests: dense and conv operators with masks, their
explicit matrices, exact masked norms and singular vectors (scipy), and drawn masks."""
import numpy
import scipy.linalg
from hypothesis import HealthCheck, settings

from lipref.primitives import conv2d, conv2d_transpose

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def dense_operator(xp, weight, m_in, m_out):
    """apply / apply_adjoint of m_out * W (m_in * v), per sample; host arrays in, xp ops."""
    w, mi, mo = xp.asarray(weight), xp.asarray(m_in), xp.asarray(m_out)

    def apply(v):
        return mo * xp.matmul(mi * v, w.T)

    def apply_adjoint(u):
        return mi * xp.matmul(mo * u, w)
    return apply, apply_adjoint


def conv_operator(xp, weight, m_in, m_out, stride, padding):
    """apply / apply_adjoint of m_out * conv2d(m_in * v), per sample."""
    w, mi, mo = xp.asarray(weight), xp.asarray(m_in), xp.asarray(m_out)
    hw = tuple(m_in.shape[2:])

    def apply(v):
        return mo * conv2d(mi * v, w, None, stride, padding)

    def apply_adjoint(u):
        return mi * conv2d_transpose(mo * u, w, stride, padding, hw)
    return apply, apply_adjoint


def conv_matrix(weight, in_chw, stride, padding):
    """The conv2d operator as a dense host matrix (outputs x inputs), by applying it to the
    basis vectors; also returns the output shape (O, OH, OW)."""
    n = int(numpy.prod(in_chw))
    out = numpy.asarray(conv2d(numpy.eye(n).reshape((n,) + tuple(in_chw)), weight, None, stride, padding))
    return out.reshape(n, -1).T.copy(), out.shape[1:]


def masked_norms(matrix, m_in, m_out):
    """Exact ||diag(m_out_b) M diag(m_in_b)||_2 per sample, by scipy.linalg.svdvals."""
    b = m_in.shape[0]
    mi, mo = m_in.reshape(b, -1), m_out.reshape(b, -1)
    return numpy.array([scipy.linalg.svdvals(mo[i][:, None] * matrix * mi[i][None, :])[0] for i in range(b)])


def masked_svd(matrix, m_in, m_out, i):
    b = m_in.shape[0]
    a = m_out.reshape(b, -1)[i][:, None] * matrix * m_in.reshape(b, -1)[i][None, :]
    _, s, vt = scipy.linalg.svd(a)
    return s, vt


def exact_power_sigma(matrix, m_in, m_out, v0, n_iters):
    """The power-iteration estimate in exact arithmetic, from the SVD: after t >= 1 steps
    v ~ V diag((s / s_1)^(2t)) V^T v0, and sigma = ||A v||."""
    b = m_in.shape[0]
    out = numpy.zeros(b)
    for i in range(b):
        s, vt = masked_svd(matrix, m_in, m_out, i)
        if s[0] == 0:
            continue
        c = vt[:len(s)] @ v0.reshape(b, -1)[i] * (s / s[0]) ** (2 * n_iters)
        out[i] = numpy.linalg.norm(s * c) / numpy.linalg.norm(c)
    return out


def masks(rng, shape, density):
    return (rng.random(shape) < density).astype(numpy.float64)


def gap(matrix, m_in, m_out, i):
    s, _ = masked_svd(matrix, m_in, m_out, i)
    return s[1] / s[0] if len(s) > 1 and s[0] > 0 else 0.0
