"""Layers and the Sequential model.

A layer holds its parameters as tape Vars (named as in PyTorch's nn.Sequential state dicts:
"0.weight", "1.threshold", ...) and knows its input and output feature shapes (no batch
axis), which the bounds need to build each layer's exact operator. Calling a layer on a
Var records the tape; calling it on an array (with `params_as_arrays`) records nothing.
"""
import math

from . import primitives as P
from .tape import Var

ACTIVATIONS = ("relu", "clipped_relu", "maxmin")


class Layer:
    kind = "layer"
    is_affine = False
    is_activation = False

    def __init__(self, in_shape, out_shape):
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.params = {}  # local name -> Var

    def spec(self):
        return {"type": self.kind}


class Linear(Layer):
    kind = "linear"
    is_affine = True

    def __init__(self, in_features, out_features):
        super().__init__((in_features,), (out_features,))
        self.in_features, self.out_features = in_features, out_features

    def init_params(self, xp, dtype, rng):
        # PyTorch's default for nn.Linear, as in the paper's code: U(-1/sqrt(in), 1/sqrt(in))
        bound = 1.0 / math.sqrt(self.in_features)
        self.params = {
            "weight": Var(xp.asarray(rng.uniform(-bound, bound, (self.out_features, self.in_features)), dtype=dtype)),
            "bias": Var(xp.asarray(rng.uniform(-bound, bound, (self.out_features,)), dtype=dtype)),
        }

    def __call__(self, x, p):
        return P.linear(x, p["weight"], p["bias"])

    def spec(self):
        return {"type": self.kind, "in_features": self.in_features, "out_features": self.out_features}


class Conv2d(Layer):
    kind = "conv2d"
    is_affine = True

    def __init__(self, in_shape, out_channels, kernel_size, stride, padding):
        c, h, w = in_shape
        oh, ow = P.conv_output_hw(h, w, kernel_size, kernel_size, stride, padding)
        super().__init__(in_shape, (out_channels, oh, ow))
        self.in_channels, self.out_channels = c, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def init_params(self, xp, dtype, rng):
        # the paper's init: normal(0, sqrt(2/n)), n = k*k*out_channels; zero bias
        n = self.kernel_size * self.kernel_size * self.out_channels
        shape = (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        self.params = {
            "weight": Var(xp.asarray(rng.normal(0.0, math.sqrt(2.0 / n), shape), dtype=dtype)),
            "bias": Var(xp.zeros((self.out_channels,), dtype=dtype)),
        }

    def __call__(self, x, p):
        return P.conv2d(x, p["weight"], p["bias"], self.stride, self.padding)

    def spec(self):
        return {"type": self.kind, "in_shape": list(self.in_shape), "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


class ReLU(Layer):
    kind = "relu"
    is_activation = True

    def __init__(self, shape):
        super().__init__(shape, shape)

    def init_params(self, xp, dtype, rng):
        self.params = {}

    def __call__(self, x, p):
        return P.relu(x)

    def spec(self):
        return {"type": self.kind, "shape": list(self.in_shape)}


class ClippedReLU(Layer):
    """min(max(x, 0), theta) with a learnable threshold per neuron (the layer's feature shape)."""
    kind = "clipped_relu"
    is_activation = True

    def __init__(self, shape, threshold_init):
        super().__init__(shape, shape)
        self.threshold_init = float(threshold_init)

    def init_params(self, xp, dtype, rng):
        self.params = {"threshold": Var(xp.full(self.in_shape, self.threshold_init, dtype=dtype))}

    def __call__(self, x, p):
        return P.clipped_relu(x, p["threshold"])

    def spec(self):
        return {"type": self.kind, "shape": list(self.in_shape), "threshold_init": self.threshold_init}


class ClampedMaxMin(Layer):
    """MaxMin over channel halves, the max half clamped above by `max`, the min half below by
    `min` (learnable, one per element of a half; PyTorch names "k.max", "k.min")."""
    kind = "maxmin"
    is_activation = True

    def __init__(self, shape, threshold_init):
        if shape[0] % 2:
            raise ValueError(f"MaxMin needs an even number of channels/features, got shape {tuple(shape)}")
        super().__init__(shape, shape)
        self.threshold_init = float(threshold_init)
        self.half_shape = (shape[0] // 2,) + tuple(shape[1:])

    def init_params(self, xp, dtype, rng):
        self.params = {"max": Var(xp.full(self.half_shape, self.threshold_init, dtype=dtype)),
                       "min": Var(xp.full(self.half_shape, -self.threshold_init, dtype=dtype))}

    def __call__(self, x, p):
        return P.clamped_maxmin(x, p["max"], p["min"])

    def spec(self):
        return {"type": self.kind, "shape": list(self.in_shape), "threshold_init": self.threshold_init}


class Flatten(Layer):
    kind = "flatten"

    def __init__(self, in_shape):
        super().__init__(in_shape, (math.prod(in_shape),))

    def init_params(self, xp, dtype, rng):
        self.params = {}

    def __call__(self, x, p):
        return P.reshape(x, (x.shape[0],) + self.out_shape)

    def spec(self):
        return {"type": self.kind, "in_shape": list(self.in_shape)}


class Sequential:
    """Layers applied in order; parameters named "<index>.<name>" as in torch's nn.Sequential."""

    def __init__(self, layers):
        self.layers = list(layers)
        for prev, nxt in zip(self.layers, self.layers[1:]):
            if prev.out_shape != nxt.in_shape:
                raise ValueError(f"layer {nxt.kind} expects input {nxt.in_shape}, previous gives {prev.out_shape}")
        if not self.layers or not isinstance(self.layers[-1], Linear):
            raise ValueError("the last layer of a classifier must be Linear (the margins use its rows)")

    @property
    def input_shape(self):
        return self.layers[0].in_shape

    @property
    def n_classes(self):
        return self.layers[-1].out_features

    def init_params(self, xp, dtype, rng):
        for layer in self.layers:
            layer.init_params(xp, dtype, rng)
        return self

    def parameters(self):
        """Ordered {"<index>.<name>": Var}."""
        return {f"{i}.{name}": v for i, layer in enumerate(self.layers) for name, v in layer.params.items()}

    def set_parameters(self, arrays):
        """Replace parameter values from {"<index>.<name>": array} (shapes must match)."""
        for i, layer in enumerate(self.layers):
            for name, var in layer.params.items():
                value = arrays[f"{i}.{name}"]
                if tuple(value.shape) != tuple(var.value.shape):
                    raise ValueError(f"parameter {i}.{name}: shape {tuple(value.shape)} != {tuple(var.value.shape)}")
                var.value = value

    def __call__(self, x, record=True):
        """Logits for a batch x. With record=False no tape is built (inference)."""
        for layer in self.layers:
            x = layer(x, layer.params if record else _values(layer.params))
        return x

    def spec(self):
        return [layer.spec() for layer in self.layers]


def _values(params):
    return {k: v.value for k, v in params.items()}


def layer_from_spec(spec):
    """Build one layer (parameters not initialised) from its spec dict."""
    kind = spec.get("type")
    if kind == "linear":
        return Linear(int(spec["in_features"]), int(spec["out_features"]))
    if kind == "conv2d":
        return Conv2d(tuple(spec["in_shape"]), int(spec["out_channels"]), int(spec["kernel_size"]),
                      int(spec["stride"]), int(spec["padding"]))
    if kind == "relu":
        return ReLU(tuple(spec["shape"]))
    if kind == "clipped_relu":
        return ClippedReLU(tuple(spec["shape"]), spec.get("threshold_init", 1.0))
    if kind == "maxmin":
        return ClampedMaxMin(tuple(spec["shape"]), spec.get("threshold_init", 1.0))
    if kind == "flatten":
        return Flatten(tuple(spec["in_shape"]))
    raise ValueError(f"unknown layer type {kind!r} in model spec")
