"""The chain of layers an ONNX graph computes, read node by node (`Chain.add`), with the
parameters kept exactly as the file holds them (lipref.precision): no cast, no rounding by
lipref; what folds into a layer (a bias Add, normalisation, BatchNorm, a transpose) is in
folds.py, with its guarantees."""
import math

from ..backend import get_backend, host
from ..errors import InputError
from ..layers import AvgPool2d, ClippedReLU, Conv2d, Flatten, Linear, ReLU, Sequential
from ..models import load_parameters_into
from ..precision import widen_exactly
from .constants import BATCH, SHAPE_OPS, shape_op
from .folds import ARITHMETIC, FoldingOps
from .reading import OnnxImportError, attributes

COMMUTATIVE = ("Add", "Min", "Max", "Sub", "Mul", "Div")  # ops whose data input may be any of their inputs
ACTIVATION_OPS = ("Relu", "Clip", "Max")  # what may follow a Min(x, T)
AFFINE_OPS = ("Conv", "Gemm", "MatMul")
SUPPORTED = ("Conv, Gemm, MatMul, AveragePool, Relu, Clip, Min + Relu/Clip/Max, Max(x, 0), Flatten, Reshape, "
             "Transpose, Add / Sub / Mul / Div of a constant, BatchNormalization, Cast, Identity, Dropout")
# inputs an op cannot do without (the data and the constants it reads)
REQUIRED_INPUTS = {"Conv": 2, "Gemm": 2, "MatMul": 2, "Add": 2, "Sub": 2, "Mul": 2, "Div": 2, "Min": 2, "Max": 2,
                   "Reshape": 2, "Gather": 2, "BatchNormalization": 5}


def _fits(a, shape):
    """Whether constant `a` broadcast against a batch (N, *shape) leaves that shape unchanged
    (NumPy's rules, as ONNX's Add, Min, Max and Gemm's C): the same value for every sample."""
    full = (1, *shape)
    try:
        return a.ndim <= len(full) and tuple(host.broadcast_shapes(a.shape, full)) == full
    except ValueError:
        return False


class Chain(FoldingOps):
    """The layers read so far: the tensor that carries the data (`current`, of feature shape
    `shape`; `canonical` is lipref's layout of the same features and `order` maps one to the
    other), the constants (initializers, Constant nodes, shape arithmetic), the parameters
    (host arrays as the file holds them, or folded: folds.py), a pending Min(x, T) that the
    next ReLU-like node turns into a clipped ReLU, and the folds made (`folds`, for the
    metadata). One `on_<OpType>` method per op read."""

    def __init__(self, path, input_name, shape, constants, batch=None, data_type=1):
        self.path, self.current, self.shape, self.constants = path, input_name, tuple(shape), dict(constants)
        self.batch, self.label, self.data_type = batch, None, data_type
        self.layers, self.nodes, self.params, self.pending_min = [], [], {}, None
        self.canonical, self.input_perm, self.folds = self.shape, None, []
        self.pending, self.side, self.pending_from, self.after_affine = None, None, [], False
        self.at_input, self.origin = True, {}  # origin: {layer: the file's (weight, bias, inputs' map)} where it rounded
        self.input_shape, self.shapes = self.shape, {input_name: self.shape}  # shapes: of the chain's tensors
        self.reset_order()

    fits = staticmethod(_fits)

    def error(self, node, what):
        """An OnnxImportError naming the file, the node (its name, or its index) and its op type."""
        return OnnxImportError(f"{self.path}: node {self.label} ({node.op_type}): {what}")

    def attributes(self, node):
        return attributes(node, lambda why: self.error(node, why))

    def check_wiring(self, node):
        """The node has an output and the inputs its op cannot do without."""
        if not node.output or not node.output[0]:
            raise self.error(node, "the node has no output")
        needed = REQUIRED_INPUTS.get(node.op_type, 1 if node.op_type != "Constant" else 0)
        given = [i for i in node.input[:needed] if i]
        if len(given) < needed:
            raise self.error(node, f"needs {needed} input{'s' * (needed > 1)}, has {len(given)} "
                                   f"({', '.join(node.input) or 'none'})")

    def add(self, node, index):
        """Read one node: shape arithmetic on constants, or the next step of the chain."""
        self.label = node.name or f"#{index}"
        if node.domain not in ("", "ai.onnx"):
            raise self.error(node, f"op of domain {node.domain} not supported (lipref reads the default domain)")
        self.check_wiring(node)
        on_constants = all(i in self.constants for i in node.input if i)
        if (node.op_type == "Shape" and node.input[0] in self.shapes) or (node.op_type in SHAPE_OPS and on_constants):
            try:
                self.constants[node.output[0]] = shape_op(self, node)
            except OnnxImportError:
                raise
            except (IndexError, KeyError, TypeError, ValueError) as exc:  # NumPy's word for a malformed node
                raise self.error(node, f"constant arithmetic lipref cannot evaluate ({type(exc).__name__}: {exc})"
                                 .replace("\n", " ")) from None
            return
        handler = getattr(self, "on_" + node.op_type, None)
        if handler is None:
            hint = " (export the logits without it)" if node.op_type in ("Softmax", "LogSoftmax") else ""
            raise self.error(node, f"op type not supported{hint}; lipref reads {SUPPORTED}")
        data = [i for i in node.input if i and i not in self.constants]
        if data != [self.current] or (node.op_type not in COMMUTATIVE and node.input[0] != self.current):
            raise self.error(node, "not on the chain from the input to the logits (a branch, several data inputs, "
                                   "or an op on constants lipref does not evaluate)")
        if self.pending_min is not None and node.op_type not in ACTIVATION_OPS:
            raise self.error(node, "a Min(x, T) must be followed by Relu, Clip(min 0) or Max(., 0)")
        self.before(node)
        handler(node)
        self.current = node.output[0]
        self.shapes[self.current] = self.shape

    def before(self, node):
        """Settle a pending elementwise map before `node`: onto the last layer's outputs, or
        carried to the next layer's inputs where `node` lets it pass."""
        if self.pending is None or node.op_type in ARITHMETIC:
            return
        if self.side == "output" and node.op_type not in ("Identity", "Dropout", "Cast", "Transpose"):
            self.flush_output(node)  # (those four change no value: the map goes on collecting after them)
        elif self.side == "output":
            return
        elif node.op_type not in AFFINE_OPS and (node.op_type not in ("AveragePool", "Flatten", "Reshape", "Transpose",
                                                                      "Identity", "Dropout", "Cast")
                                                 or not self.passes_pending(node)):
            raise self.error(node, f"{self._described()} before this node: lipref folds constants added, subtracted, "
                                   "multiplied or divided only into the conv or linear layer next to them")

    def param(self, node, name, what):
        """Constant input `name` of `node` with exactly the file's values (float32, or float64
        where the file holds wider ones: lipref.precision), refused (naming the node and the
        constant) unless a real, finite number."""
        a = widen_exactly(self.constants[name], lambda why: self.error(node, f"{what} {name} {why}"))
        if not host.all(host.isfinite(a)):
            raise self.error(node, f"{what} {name} contains NaN or inf")
        return a

    def optional(self, node, position, what):
        """Optional constant input `position` of `node` checked by `param`, or None when absent."""
        return self.param(node, node.input[position], what) if len(node.input) > position and node.input[position] \
            else None

    def data_constant(self, node, what):
        """The one constant input of a two-input Add / Min / Max, checked by `param`."""
        names = [i for i in node.input if i in self.constants]
        if len(node.input) != 2 or len(names) != 1:
            raise self.error(node, f"lipref reads {node.op_type} of the data and one constant")
        return self.param(node, names[0], what)

    def push(self, node, layer):
        """Append a layer, remembering the node it comes from (for the error messages); the
        current tensor is then the layer's output, in lipref's layout."""
        self.layers.append(layer)
        self.nodes.append(f"{self.label} ({node.op_type})")
        self.canonical = self.shape = layer.out_shape
        self.after_affine = layer.is_affine
        self.reset_order()

    def need_order(self, node):
        """The features must be in lipref's layout here (no transpose pending)."""
        if not self.in_order:
            raise self.error(node, f"features transposed to {self.shape} ({self.canonical} in lipref's layout) before "
                                   "this node: lipref reads a transpose only before the input's first layer or a "
                                   "flatten")

    def affine(self, node, make_layer, weight, bias):
        """Append the Conv2d / Linear layer `make_layer()` builds, with its weight and bias, and
        fold into it a map pending on its inputs."""
        try:
            layer = make_layer()
        except InputError as exc:  # a size lipref's layers refuse (zero outputs, a kernel too large)
            raise self.error(node, str(exc)) from None
        index = len(self.layers)
        self.push(node, layer)
        self.params[f"{index}.weight"], self.params[f"{index}.bias"] = weight, bias
        if self.pending is not None:
            self.fold_into_inputs(node, index)

    def bias_vector(self, node, b, shape):
        """Constant b as the bias of outputs of feature shape `shape`: b must broadcast to
        (1, *shape) without widening the output, and be one value per channel for a conv."""
        if not _fits(b, shape):
            raise self.error(node, f"bias of shape {tuple(b.shape)} does not fit outputs {shape}")
        full = host.broadcast_to(b, (1, *shape))[0]
        if len(shape) == 3 and not host.all(full == full[:, :1, :1]):
            raise self.error(node, "a bias that varies over the image: lipref's conv bias is one per channel")
        return host.array(full[:, 0, 0] if len(shape) == 3 else full)

    def on_Conv(self, node):
        """Conv as lipref's Conv2d (see the package docstring for the attributes read)."""
        a = self.attributes(node)
        group, dilations = a.get("group", 1), list(a.get("dilations", [1, 1]))
        if group != 1 or set(dilations) != {1}:
            raise self.error(node, f"group {group}, dilations {dilations}: lipref reads group 1, dilation 1")
        self.need_order(node)
        weight = self.param(node, node.input[1], "weight")
        if weight.ndim != 4 or len(self.shape) != 3 or weight.shape[1] != self.shape[0]:
            raise self.error(node, f"weight {tuple(weight.shape)} does not fit its input {self.shape} "
                                   "(lipref reads 2-D convolutions)")
        kernel, strides, mode = list(a.get("kernel_shape", weight.shape[2:])), list(a.get("strides", [1, 1])), \
            a.get("auto_pad", "NOTSET")
        if mode not in ("NOTSET", "VALID"):
            raise self.error(node, f"auto_pad {mode}: lipref reads explicit pads or VALID")
        pads = [0] * 4 if mode == "VALID" else list(a.get("pads", [0] * 4))
        if kernel != list(weight.shape[2:]) or len(set(kernel)) != 1 or len(set(strides)) != 1 or len(set(pads)) != 1:
            raise self.error(node, f"kernel {kernel}, strides {strides}, pads {pads}: lipref reads square kernels, "
                                   "equal strides and the same padding on every side")
        bias = self.optional(node, 2, "bias")
        if bias is not None and bias.shape != weight.shape[:1]:
            raise self.error(node, f"bias {node.input[2]} of shape {bias.shape} for {weight.shape[0]} channels")
        bias = host.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias
        self.affine(node, lambda: Conv2d(self.shape, weight.shape[0], int(kernel[0]), int(strides[0]), int(pads[0])),
                    weight, bias)

    def on_AveragePool(self, node):
        """AveragePool as lipref's AvgPool2d: a square kernel, equal strides, the same padding on
        every side, padded zeros counted in the mean (count_include_pad 1, or no padding), no
        ceil_mode: the mean is then a fixed linear map, a conv with a constant kernel."""
        a = self.attributes(node)
        self.need_order(node)
        if len(self.shape) != 3:
            raise self.error(node, f"input {self.shape}: lipref reads 2-D average pooling of (C, H, W) inputs")
        kernel, strides = list(a.get("kernel_shape", [])), list(a.get("strides", [1, 1]))
        mode, pads = a.get("auto_pad", "NOTSET"), list(a.get("pads", [0] * 4))
        pads = [0] * 4 if mode == "VALID" else pads
        if mode not in ("NOTSET", "VALID") or len(kernel) != 2 or len(set(kernel)) != 1 or len(set(strides)) != 1 \
                or len(set(pads)) != 1 or a.get("ceil_mode", 0) or list(a.get("dilations", [1, 1])) != [1, 1]:
            raise self.error(node, f"kernel {kernel}, strides {strides}, pads {pads}, auto_pad {mode}: lipref reads "
                                   "square kernels, equal strides, the same padding on every side, no ceil_mode")
        if pads[0] and not a.get("count_include_pad", 0):
            raise self.error(node, "count_include_pad 0 with padding: the mean of a window at the border divides by "
                                   "fewer inputs, which is not one linear map; export with count_include_pad=True")
        try:
            layer = AvgPool2d(self.shape, int(kernel[0]), int(strides[0]), int(pads[0]))
        except InputError as exc:
            raise self.error(node, str(exc)) from None
        self.push(node, layer)
        if self.pending is not None:  # per channel (folds.passes_pending): the same map on the pooled features
            self.pending = self.pending.per_channel_on(layer.out_shape)

    def linear(self, node, weight, bias):
        """Append a Linear layer (weight (out, in)); bias as Gemm's C (None: zeros). Inputs in
        another order than lipref's (a flatten of transposed features) reorder its columns."""
        if weight.ndim != 2 or len(self.shape) != 1 or weight.shape[1] != self.shape[0]:
            raise self.error(node, f"weight (out, in) {tuple(weight.shape)} does not fit its input {self.shape}")
        if not self.in_order:
            columns = host.empty_like(weight)
            columns[:, self.order] = weight  # exact: a permutation
            weight = columns
        out = weight.shape[0]
        bias = host.zeros(out, dtype=weight.dtype) if bias is None else self.bias_vector(node, bias, (out,))
        self.affine(node, lambda: Linear(weight.shape[1], out), host.array(weight), bias)

    def on_Gemm(self, node):
        """Gemm(x, B, C) = x B^T + C (transB 1) or x B + C (transB 0)."""
        a = self.attributes(node)
        alpha, beta, trans_a = a.get("alpha", 1.0), a.get("beta", 1.0), a.get("transA", 0)
        if alpha != 1.0 or beta != 1.0 or trans_a:
            raise self.error(node, f"alpha {alpha}, beta {beta}, transA {trans_a}: lipref reads Gemm with "
                                   "alpha = beta = 1 and transA = 0")
        b = self.param(node, node.input[1], "weight")
        self.linear(node, b if a.get("transB", 0) else b.T, self.optional(node, 2, "bias"))

    def on_MatMul(self, node):
        """MatMul(x, B) = x B: a Linear with weight B^T (an Add after it gives the bias)."""
        self.linear(node, self.param(node, node.input[1], "weight").T, None)

    def activation_layer(self, node, high):
        """Append a ReLU, or a clipped ReLU of threshold min(T, high) (T: a pending Min's
        constant; both arrays, so that neither is rounded to the other's dtype) broadcast to
        the feature shape and raised to >= 0 (package docstring)."""
        t, self.pending_min = self.pending_min, None
        if high is not None:
            t = high if t is None else host.minimum(t, high)
        order = self.order
        if t is None:
            self.push(node, ReLU(self.canonical))
        else:
            if not _fits(t, self.shape):  # the official [1, C, H, W] / [1, F] fit
                raise self.error(node, f"threshold of shape {tuple(t.shape)} for features {self.shape}")
            t = self.canonical_array(node, t)
            self.params[f"{len(self.layers)}.threshold"] = host.maximum(t, host.zeros((), dtype=t.dtype))
            self.push(node, ClippedReLU(self.canonical, 1.0))
        self.order, self.shape = order, tuple(order.shape)  # elementwise: the layout is kept

    def on_Relu(self, node):
        """Relu: a ReLU, or the end of a Min(x, T) clipped ReLU."""
        self.activation_layer(node, None)

    def clip_bound(self, node, a, key, position):
        """Clip's `key` ("min" / "max") as a 0-d array with the file's value, None when absent:
        an attribute before opset 11 (a float32 number), an input from 11."""
        name = node.input[position] if len(node.input) > position else ""
        if key not in a and not name:
            return None
        if key in a:
            value = host.asarray(a[key], dtype=host.float32 if isinstance(a[key], float) else None)
        else:
            value = self.constants[name]
        value = widen_exactly(value, lambda why: self.error(node, f"Clip's {key} {why}"))
        if value.size != 1 or host.isnan(value).any():
            raise self.error(node, f"Clip's {key} must be one number, got {value.tolist()}")
        return value.reshape(())

    def on_Clip(self, node):
        """Clip(x, 0) (or max inf) is a ReLU, Clip(x, 0, t) a clipped ReLU of threshold t >= 0."""
        a = self.attributes(node)
        low, high = self.clip_bound(node, a, "min", 1), self.clip_bound(node, a, "max", 2)
        if low is None or float(low) != 0.0:
            raise self.error(node, f"Clip with min {low}: lipref reads Clip with min 0 (a ReLU or clipped ReLU)")
        if high is not None and not 0.0 <= float(high):
            raise self.error(node, f"Clip with max {float(high)}: lipref reads a max >= 0 or inf")
        self.activation_layer(node, None if high is None or float(high) == math.inf else high)

    def on_Max(self, node):
        """Max(x, 0): a ReLU, or the end of a Min(x, T) clipped ReLU."""
        c = self.data_constant(node, "constant")
        if host.any(c != 0) or not _fits(c, self.shape):
            raise self.error(node, "lipref reads Max only as Max(x, 0), a ReLU")
        self.activation_layer(node, None)

    def on_Min(self, node):
        """Min(x, T): held until the ReLU-like node after it makes the pair a clipped ReLU."""
        self.pending_min = self.data_constant(node, "threshold")

    def flatten(self, node):
        """Append a Flatten where the features are not already a vector (C order, as ONNX's), in
        lipref's layout; a transposed tensor's order goes on to the next linear layer."""
        if len(self.canonical) > 1:
            order = self.order.ravel()
            self.push(node, Flatten(self.canonical))
            self.order = order
            if self.pending is not None:
                self.pending = self.pending.flattened()

    def on_Flatten(self, node):
        """Flatten(axis 1): (N, ...) to (N, features)."""
        axis = self.attributes(node).get("axis", 1)
        if axis not in (1, -len(self.shape)):
            raise self.error(node, f"axis {axis}: lipref reads Flatten with axis 1")
        self.flatten(node)

    def on_Reshape(self, node):
        """Reshape to (N, -1), (N, features) or (-1, features): a Flatten."""
        shape = host.atleast_1d(self.constants[node.input[1]])
        if shape.dtype.kind not in "iuO":
            raise self.error(node, f"target shape of dtype {shape.dtype}: ONNX's Reshape takes int64")
        target = [t if t == BATCH else int(t) for t in shape.tolist()]
        features = math.prod(self.shape)
        batch = {BATCH, -1, self.batch} | (set() if self.attributes(node).get("allowzero", 0) else {0})
        if len(target) != 2 or target[0] not in batch or target[1] not in (features, -1) or target == [-1, -1]:
            raise self.error(node, f"target shape {target}: lipref reads Reshape to (N, -1) only")
        self.flatten(node)

    def on_Dropout(self, node):
        """Identity, and Dropout at inference: nothing to do (a constant training_mode true is refused)."""
        if len(node.input) > 2 and node.input[2] and bool(host.any(self.constants[node.input[2]])):
            raise self.error(node, "training_mode is true: lipref reads inference graphs")

    on_Identity = on_Dropout

    def finish(self, outputs):
        """The Sequential (NumPy backend) with the file's parameters in their precision (float32,
        or float64 where any is: lipref.precision), once the chain ends in a linear layer whose
        output is the graph's one output."""
        if self.pending is not None and self.side == "output":
            self.flush_output(self.pending_from[-1][0])
        if len(outputs) != 1 or outputs[0] != self.current or self.pending_min is not None or self.pending is not None:
            raise OnnxImportError(f"{self.path}: the graph's one output must be the logits of its last layer "
                                  f"(outputs {outputs}; the chain of layers ends at {self.current})")
        if not self.layers or not isinstance(self.layers[-1], Linear):
            last = f"with node {self.nodes[-1]}" if self.nodes else "before any layer"
            raise OnnxImportError(f"{self.path}: the graph ends {last}; lipref needs the logits computed by a "
                                  "linear layer (Gemm, or MatMul + Add) last")
        return load_parameters_into(Sequential(self.layers), self.path, self.params, get_backend("numpy"))
