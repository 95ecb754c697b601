"""Import an ONNX model (a chain of conv, linear and ReLU-like layers) as a lipref model.

ONNX is what TensorFlow (GloRo), Keras, JAX and torch export to, so this makes their models
auditable. The graph must be one chain from its single input to logits computed by a linear
layer, made of:

- Conv (square kernel, equal strides, equal pads on every side, dilation 1, group 1);
- Gemm (alpha = beta = 1, transA = 0), or MatMul with a constant, optionally followed by an
  Add of a constant bias;
- Relu; Clip with min 0 (no max: ReLU; a scalar max t: a clipped ReLU with threshold t);
- Min(x, T) followed by Relu, Clip(min 0) or Max(., 0): the paper's official clipped ReLU
  clamp(min(x, T), min=0), with T per neuron ([1, C, H, W], [1, F]) or scalar. Its value is
  max(min(x, T), 0); lipref's clipped ReLU is min(max(x, 0), T): equal for T >= 0, and for
  T < 0 both are 0 once T is raised to 0, which the import does;
- Flatten (axis 1), or Reshape to (N, -1), including the Shape / Gather / Unsqueeze /
  Concat arithmetic torch's exporter writes for `x.view(x.size(0), -1)` (evaluated here with
  the batch size as a symbol);
- Identity and Dropout (inference: the identity).

Anything else (another op, a branch, an attribute outside these) is an OnnxImportError naming
the node and its op type. The onnx package is optional: imported inside the functions.
"""
import os

from .backend import get_backend, host
from .errors import UserError
from .layers import ClippedReLU, Conv2d, Flatten, Linear, ReLU, Sequential
from .models import save_model

ONNX_MISSING = "onnx is not installed: pip install 'lipref[onnx]'"
OPSET_RANGE = (11, 23)  # the default domain's opsets read: Clip takes min and max as inputs from 11
BATCH = "N"  # the batch size, a symbol in shape arithmetic
SHAPE_OPS = ("Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Identity")


class OnnxImportError(UserError, ValueError):
    """An ONNX file that cannot be imported (unreadable, or a graph outside what lipref reads)."""


class OnnxNotInstalled(UserError, ImportError):
    """The onnx package is needed for this operation and is not installed."""


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxNotInstalled(ONNX_MISSING) from None
    return onnx


def import_onnx_model(path, out_path=None):
    """A float32 lipref model (NumPy backend) computing the ONNX model in `path`; also saved
    to out_path when given (models.save_model, atomic)."""
    path = os.fspath(path)
    proto = _read(path)
    graph = proto.graph
    constants = {init.name: _array(init) for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise OnnxImportError(f"{path}: the graph must have one input, found {len(inputs)}")
    batch = inputs[0].type.tensor_type.shape.dim[0].dim_value or None  # an exporter may fix it
    chain = _Chain(path, inputs[0].name, _feature_shape(path, inputs[0]), constants, batch)
    for node in graph.node:
        chain.add(node)
    model = chain.finish([o.name for o in graph.output])
    model.metadata = {"arch": "onnx", "activation": chain.activation(), "input_shape": list(model.input_shape),
                      "n_classes": model.n_classes, "threshold_init": 1.0, "imported_from": os.path.basename(path)}
    if out_path is not None:
        save_model(out_path, model)
    return model


def _read(path):
    onnx = require_onnx()
    if not os.path.isfile(path):
        raise OnnxImportError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(path)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a file that is not a model
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    version = opsets.get("ai.onnx")
    if version is None or not OPSET_RANGE[0] <= version <= OPSET_RANGE[1]:
        raise OnnxImportError(f"{path}: default-domain opset {version}; lipref reads opsets "
                              f"{OPSET_RANGE[0]} to {OPSET_RANGE[1]}")
    return proto


def _array(tensor):
    from onnx import numpy_helper
    return numpy_helper.to_array(tensor)


def _feature_shape(path, value_info):
    dims = value_info.type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    if len(dims) not in (2, 4) or any(s <= 0 for s in shape):
        raise OnnxImportError(f"{path}: input {value_info.name} must be (N, C, H, W) or (N, D) with known "
                              f"feature sizes, got {[d.dim_value or d.dim_param for d in dims]}")
    return shape


def _attributes(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Chain:
    """The layers read so far: the tensor that carries the data (`current`, of feature shape
    `shape`), the constants (initializers, Constant nodes, shape arithmetic) and a pending
    Min(x, T) that the next ReLU-like node turns into a clipped ReLU."""

    def __init__(self, path, input_name, shape, constants, batch=None):
        self.path, self.current, self.shape, self.constants = path, input_name, tuple(shape), dict(constants)
        self.batch = batch
        self.layers, self.params, self.pending_min = [], {}, None

    def error(self, node, what):
        return OnnxImportError(f"{self.path}: node {node.name or '(unnamed)'} ({node.op_type}): {what}")

    def add(self, node):
        on_constants = all(i in self.constants for i in node.input if i)
        if (node.op_type == "Shape" and node.input[0] == self.current) or (node.op_type in SHAPE_OPS and on_constants):
            self.constants[node.output[0]] = self.shape_op(node)
            return
        data = [i for i in node.input if i and i not in self.constants]
        if data != [self.current]:
            raise self.error(node, "not on the chain from the input to the logits (a branch, or an op on "
                                   "constants lipref does not evaluate)")
        handler = getattr(self, "on_" + node.op_type, None)
        if handler is None:
            raise self.error(node, "op type not supported (lipref reads Conv, Gemm, MatMul, Add, Relu, Clip, "
                                   "Min + Relu, Max, Flatten, Reshape, Identity, Dropout)")
        if self.pending_min is not None and node.op_type not in ("Relu", "Clip", "Max"):
            raise self.error(node, "a Min(x, T) must be followed by Relu, Clip(min 0) or Max(., 0)")
        handler(node)
        self.current = node.output[0]

    def constant(self, node, name):
        return self.constants[name] if name else None

    def shape_op(self, node):
        """Shape arithmetic on constants, the batch size a symbol (object arrays)."""
        a, args = _attributes(node), [self.constants.get(i) for i in node.input]
        op = node.op_type
        if op == "Constant":
            return _array(a["value"]) if "value" in a else host.asarray(a.get("value_ints", a.get("value_int")))
        if op == "Shape":
            return host.asarray([self.batch or BATCH, *self.shape], dtype=object)
        if op == "Gather":
            return host.take(args[0], args[1].astype(int), axis=a.get("axis", 0))
        if op in ("Unsqueeze", "Squeeze"):
            axes = a.get("axes", None if len(args) < 2 else [int(v) for v in args[1]])
            if op == "Squeeze":
                return host.squeeze(args[0], axis=None if axes is None else tuple(axes))
            return host.expand_dims(args[0], tuple(axes))
        if op == "Concat":
            items = [e for v in args for e in host.atleast_1d(v).tolist()]  # 1-D: shapes
            return host.asarray(items, dtype=object if BATCH in items else None)
        return args[0]  # Cast, Identity: the values stay what they are

    def affine(self, layer, weight, bias):
        index = len(self.layers)
        self.layers.append(layer)
        self.params[f"{index}.weight"] = host.asarray(weight, dtype=host.float64)
        self.params[f"{index}.bias"] = host.asarray(bias, dtype=host.float64)
        self.shape = layer.out_shape

    def on_Conv(self, node):
        a = _attributes(node)
        weight, bias = self.constant(node, node.input[1]), self.constant(node, node.input[2] if len(node.input) > 2
                                                                        else "")
        kernel = a.get("kernel_shape", list(weight.shape[2:]))
        strides, pads, dilations = a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]), a.get("dilations", [1, 1])
        if a.get("group", 1) != 1 or set(dilations) != {1} or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.error(node, f"group {a.get('group', 1)}, dilations {list(dilations)}, auto_pad "
                                   f"{a.get('auto_pad', 'NOTSET')}: lipref reads group 1, dilation 1, explicit pads")
        if len(set(kernel)) != 1 or len(set(strides)) != 1 or len(set(pads)) != 1:
            raise self.error(node, f"kernel {list(kernel)}, strides {list(strides)}, pads {list(pads)}: lipref "
                                   "reads square kernels, equal strides and the same padding on every side")
        if len(self.shape) != 3 or weight.shape[1] != self.shape[0]:
            raise self.error(node, f"weight {tuple(weight.shape)} does not fit its input {self.shape}")
        conv = Conv2d(self.shape, weight.shape[0], int(kernel[0]), int(strides[0]), int(pads[0]))
        self.affine(conv, weight, host.zeros(weight.shape[0]) if bias is None else bias)

    def linear(self, node, weight, bias):
        if len(self.shape) != 1 or weight.shape[1] != self.shape[0]:
            raise self.error(node, f"weight (out, in) {tuple(weight.shape)} does not fit its input {self.shape}")
        bias = host.zeros(weight.shape[0]) if bias is None else host.reshape(bias, (-1,))
        if bias.shape != (weight.shape[0],):
            raise self.error(node, f"bias of shape {bias.shape} for {weight.shape[0]} outputs")
        self.affine(Linear(weight.shape[1], weight.shape[0]), weight, bias)

    def on_Gemm(self, node):
        a = _attributes(node)
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
            raise self.error(node, "lipref reads Gemm with alpha = beta = 1 and transA = 0")
        b = self.constant(node, node.input[1])
        bias = self.constant(node, node.input[2]) if len(node.input) > 2 else None
        self.linear(node, b if a.get("transB", 0) else b.T, bias)

    def on_MatMul(self, node):
        self.linear(node, self.constant(node, node.input[1]).T, None)

    def on_Add(self, node):
        last = len(self.layers) - 1
        bias = next(self.constants[i] for i in node.input if i in self.constants)
        if last < 0 or not isinstance(self.layers[last], Linear) or host.size(bias) != self.shape[0]:
            raise self.error(node, "lipref reads Add only as the bias of the linear layer before it")
        self.params[f"{last}.bias"] = self.params[f"{last}.bias"] + host.reshape(bias, (-1,))

    def activation_layer(self, node, threshold):
        """ReLU, or a clipped ReLU with `threshold` (T, or a pending Min's T) raised to >= 0."""
        if self.pending_min is not None:
            threshold, self.pending_min = self.pending_min, None
        if threshold is None:
            self.layers.append(ReLU(self.shape))
            return
        t = host.asarray(threshold, dtype=host.float64)
        if t.ndim == len(self.shape) + 1 and t.shape[0] == 1:
            t = t[0]
        try:
            t = host.broadcast_to(t, self.shape)
        except ValueError:
            raise self.error(node, f"threshold of shape {t.shape} for features {self.shape}") from None
        self.params[f"{len(self.layers)}.threshold"] = host.maximum(t, 0.0)
        self.layers.append(ClippedReLU(self.shape, 1.0))

    def on_Relu(self, node):
        self.activation_layer(node, None)

    def on_Clip(self, node):
        a = _attributes(node)
        low, high = (self.constant(node, n) if n else None for n in (list(node.input) + ["", ""])[1:3])
        low, high = a.get("min", low), a.get("max", high)
        if low is None or float(host.asarray(low)) != 0.0:
            raise self.error(node, f"Clip with min {low}: lipref reads clipped ReLUs, min 0")
        if high is not None and (host.size(high) != 1 or self.pending_min is not None):
            raise self.error(node, "Clip's max must be one number (and absent after a Min)")
        self.activation_layer(node, None if high is None else float(host.asarray(high)))

    def on_Max(self, node):
        other = next(self.constants[i] for i in node.input if i in self.constants)
        if host.any(host.asarray(other) != 0):
            raise self.error(node, "lipref reads Max only as Max(x, 0), a ReLU")
        self.activation_layer(node, None)

    def on_Min(self, node):
        self.pending_min = next(self.constants[i] for i in node.input if i in self.constants)

    def flatten(self):
        if len(self.shape) > 1:
            self.layers.append(Flatten(self.shape))
            self.shape = self.layers[-1].out_shape

    def on_Flatten(self, node):
        if _attributes(node).get("axis", 1) != 1:
            raise self.error(node, "lipref reads Flatten with axis 1")
        self.flatten()

    def on_Reshape(self, node):
        target = [t if t == BATCH else int(t) for t in host.atleast_1d(self.constants[node.input[1]]).tolist()]
        features = int(host.prod(self.shape))
        if len(target) != 2 or target[0] not in (BATCH, 0, -1, self.batch) or target[1] not in (-1, features):
            raise self.error(node, f"lipref reads Reshape to (N, -1) only, got {target}")
        self.flatten()

    def on_Identity(self, node):
        pass

    on_Dropout = on_Identity

    def finish(self, outputs):
        if self.pending_min is not None or outputs != [self.current]:
            raise OnnxImportError(f"{self.path}: the graph's output must be the logits of its last linear "
                                  f"layer (outputs {outputs}, the chain ends at {self.current})")
        if not self.layers or not isinstance(self.layers[-1], Linear):
            raise OnnxImportError(f"{self.path}: the last layer must be linear (Gemm or MatMul): lipref's bounds "
                                  "need the logits as an affine map of the last activations")
        bad = sorted(k for k, v in self.params.items() if not host.all(host.isfinite(v)))
        big = sorted(k for k, v in self.params.items() if v.size and host.max(host.abs(v)) > host.finfo("float32").max)
        if bad or big:
            raise OnnxImportError(f"{self.path}: parameters with NaN, inf or values beyond float32: "
                                  + ", ".join(bad + big))
        model = Sequential(self.layers)
        xp = get_backend("numpy")
        model.load_parameters({k: xp.asarray(v, dtype=xp.float32) for k, v in self.params.items()})
        return model

    def activation(self):
        kinds = {type(layer) for layer in self.layers}
        return "clipped_relu" if ClippedReLU in kinds else "relu"
