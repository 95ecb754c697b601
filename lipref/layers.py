"""Layers and the Sequential model.

A layer holds its parameters as tape Vars (named as in PyTorch's nn.Sequential state dicts:
"0.weight", "1.threshold", ...) and knows its input and output feature shapes (no batch
axis), which the bounds need to build each layer's exact operator. Calling a layer on a
Var records the tape; calling it on an array (with `params_as_arrays`) records nothing.
"""
import math
import numbers

from . import primitives as P
from .errors import InputError
from .tape import Var

ACTIVATIONS = ("relu", "clipped_relu", "maxmin")
MAX_SIZE = 2 ** 31 - 1  # the largest size, stride or padding a layer accepts


def check_int(what, value, minimum):
    """`value` if it is an integer (not a bool, float or string) in [minimum, MAX_SIZE], else
    InputError naming `what`: sizes need minimum 1, paddings 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r:.60}")
    if value < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value}")
    if value > MAX_SIZE:
        raise InputError(f"{what} must be at most {MAX_SIZE}, got {value}")
    return int(value)


def check_shape(what, value, ndim=None):
    """A feature shape as a tuple of integers >= 1 (`ndim` of them when given), else InputError."""
    if not isinstance(value, (list, tuple)) or not value or (ndim is not None and len(value) != ndim):
        dims = f"{ndim} " if ndim is not None else "a non-empty list of "
        raise InputError(f"{what} must be {dims}integers >= 1, got {value!r:.60}")
    return tuple(check_int(f"{what}[{i}]", d, 1) for i, d in enumerate(value))


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

    def param_shapes(self):
        """{local name: shape} of the parameters `init_params` makes (nothing is allocated)."""
        return {}


class Linear(Layer):
    kind = "linear"
    is_affine = True

    def __init__(self, in_features, out_features):
        in_features, out_features = check_int("in_features", in_features, 1), check_int("out_features", out_features, 1)
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

    def param_shapes(self):
        return {"weight": (self.out_features, self.in_features), "bias": (self.out_features,)}

    def spec(self):
        return {"type": self.kind, "in_features": self.in_features, "out_features": self.out_features}


class Conv2d(Layer):
    kind = "conv2d"
    is_affine = True

    def __init__(self, in_shape, out_channels, kernel_size, stride, padding):
        c, h, w = check_shape("in_shape", in_shape, 3)
        out_channels, kernel_size = check_int("out_channels", out_channels, 1), check_int("kernel_size", kernel_size, 1)
        stride, padding = check_int("stride", stride, 1), check_int("padding", padding, 0)
        if min(h, w) + 2 * padding < kernel_size:
            raise InputError(f"conv2d: kernel {kernel_size}x{kernel_size} with padding {padding} does not fit "
                             f"an input of {h}x{w}")
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

    def param_shapes(self):
        k = self.kernel_size
        return {"weight": (self.out_channels, self.in_channels, k, k), "bias": (self.out_channels,)}

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

    def param_shapes(self):
        return {"threshold": self.in_shape}

    def spec(self):
        return {"type": self.kind, "shape": list(self.in_shape), "threshold_init": self.threshold_init}


class ClampedMaxMin(Layer):
    """MaxMin over channel halves, the max half clamped above by `max`, the min half below by
    `min` (learnable, one per element of a half; PyTorch names "k.max", "k.min")."""
    kind = "maxmin"
    is_activation = True

    def __init__(self, shape, threshold_init):
        if shape[0] % 2:
            raise InputError(f"MaxMin needs an even number of channels/features, got shape {tuple(shape)}")
        super().__init__(shape, shape)
        self.threshold_init = float(threshold_init)
        self.half_shape = (shape[0] // 2,) + tuple(shape[1:])

    def init_params(self, xp, dtype, rng):
        self.params = {"max": Var(xp.full(self.half_shape, self.threshold_init, dtype=dtype)),
                       "min": Var(xp.full(self.half_shape, -self.threshold_init, dtype=dtype))}

    def __call__(self, x, p):
        return P.clamped_maxmin(x, p["max"], p["min"])

    def param_shapes(self):
        return {"max": self.half_shape, "min": self.half_shape}

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
        for i, (prev, nxt) in enumerate(zip(self.layers, self.layers[1:]), 1):
            if prev.out_shape != nxt.in_shape:
                raise InputError(f"layer {i} ({nxt.kind}) expects input {nxt.in_shape}, layer {i - 1} "
                                 f"({prev.kind}) gives {prev.out_shape}")
        if not self.layers or not isinstance(self.layers[-1], Linear):
            raise InputError("the last layer of a classifier must be Linear (the margins use its rows)")

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

    def parameter_shapes(self):
        """Ordered {"<index>.<name>": shape}, known before (and without) `init_params`."""
        return {f"{i}.{name}": tuple(shape) for i, layer in enumerate(self.layers)
                for name, shape in layer.param_shapes().items()}

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


def _field(spec, key, check, *args):
    """spec[key] passed through `check` (check_int or check_shape); InputError names the field."""
    if key not in spec:
        raise InputError(f"{spec['type']}: missing field {key!r}")
    return check(f"{spec['type']} field {key!r}", spec[key], *args)


def _threshold(spec):
    value = spec.get("threshold_init", 1.0)
    number = math.nan if isinstance(value, bool) or not isinstance(value, numbers.Real) else value
    try:
        number = float(number)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise InputError(f"{spec['type']} field 'threshold_init' must be a finite number, got {value!r:.40}")
    return number


def layer_from_spec(spec):
    """Build one layer (parameters not initialised) from its spec dict (as `Layer.spec` writes
    it). Every field is checked: sizes are JSON integers >= 1, paddings >= 0, shapes lists of
    sizes, thresholds finite numbers; anything else is an InputError naming the field."""
    if not isinstance(spec, dict):
        raise InputError(f"layer spec is not a JSON object: {spec!r:.80}")
    kind = spec.get("type")
    if kind == "linear":
        return Linear(_field(spec, "in_features", check_int, 1), _field(spec, "out_features", check_int, 1))
    if kind == "conv2d":
        return Conv2d(_field(spec, "in_shape", check_shape, 3), _field(spec, "out_channels", check_int, 1),
                      _field(spec, "kernel_size", check_int, 1), _field(spec, "stride", check_int, 1),
                      _field(spec, "padding", check_int, 0))
    if kind == "relu":
        return ReLU(_field(spec, "shape", check_shape))
    if kind == "clipped_relu":
        return ClippedReLU(_field(spec, "shape", check_shape), _threshold(spec))
    if kind == "maxmin":
        return ClampedMaxMin(_field(spec, "shape", check_shape), _threshold(spec))
    if kind == "flatten":
        return Flatten(_field(spec, "in_shape", check_shape))
    raise InputError(f"unknown layer type {kind!r:.40}")
