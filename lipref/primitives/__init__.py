"""Primitives: the plain definitions. Each is a forward function on arrays and, right beside
it, the vector-Jacobian product (backward) for every differentiable argument (see
lipref/tape.py for `primitive`, which lifts them onto the tape, and PRIMITIVES, where each is
listed).

- elementwise.py: arithmetic with broadcasting and the activations (kinks as written policy);
- linear.py: matmul, linear, conv2d and conv2d_transpose, and the shape maps (slices, concat,
  broadcast_to, reshape, sum): every primitive linear in its array, its backward the adjoint;
- reductions.py: the nonlinear reductions (l2_norm, max, logsumexp, softmax_cross_entropy).

A primitive with a faster form is marked `@replaceable` (lipref/kernels/registry.py): a
registered kernel with its signature may run in its place; inside
`lipref.kernels.reference_only()` (or with LIPREF_REFERENCE=1) only the code
written here runs. A user adding a primitive checks it with lipref.testing.check_grads, the
way tests/test_primitives.py checks these.
"""
from ..shapes import conv_output_hw  # noqa: F401 (layers and bounds use P.conv_output_hw)
from ..tape import PRIMITIVES, Var, primitive, unbroadcast  # noqa: F401
from .elementwise import (  # noqa: F401
                     abs,
                     add,
                     clamped_maxmin,
                     clipped_relu,
                     divide,
                     exp,
                     log,
                     maximum,
                     minimum,
                     multiply,
                     negative,
                     relu,
                     sqrt,
                     square,
                     subtract,
                     where,
)
from .linear import (  # noqa: F401
                     broadcast_to,
                     channel_slice,
                     concat,
                     conv2d,
                     conv2d_transpose,
                     linear,
                     matmul,
                     reshape,
                     sum,
)
from .reductions import l2_norm, logsumexp, max, softmax_cross_entropy  # noqa: F401

# Var's operators, installed once the primitives exist, so that `a * b + c` on Vars records
# on the tape and lipref.tape imports nothing from the primitives.
Var.__add__ = lambda self, other: add(self, other)
Var.__radd__ = lambda self, other: add(other, self)
Var.__sub__ = lambda self, other: subtract(self, other)
Var.__rsub__ = lambda self, other: subtract(other, self)
Var.__mul__ = lambda self, other: multiply(self, other)
Var.__rmul__ = lambda self, other: multiply(other, self)
Var.__truediv__ = lambda self, other: divide(self, other)
Var.__rtruediv__ = lambda self, other: divide(other, self)
Var.__neg__ = lambda self: negative(self)
