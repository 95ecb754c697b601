"""Layers and the Sequential model, as data.

A layer holds its parameters as tape Vars (named as in PyTorch's nn.Sequential state dicts:
"0.weight", "1.threshold", ...) and knows its input and output feature shapes (no batch
axis), which the bounds need to build each layer's exact operator. Calling a layer on a
Var records the tape; calling it on an array records nothing.

Affine layers (Linear, Conv2d, AvgPool2d) expose their linear part through one hook,
`linear_part(params)` -> (weight, bias or None), and their map and its adjoint as `affine(x,
weight, bias)` and `affine_adjoint(u, weight)`: every bound of an affine layer is written with
these three, so a new affine kind (average pooling: a conv with a constant kernel) needs no
change in the bounds.

Each layer type is registered under its name (`@layer_type("linear")` fills `LAYER_TYPES`)
and declares its spec fields once (`FIELDS`: name, checker, default); `Layer.spec` and
`layer_from_spec` are written from those declarations, so a model file is the registry's
data. Parameters come either from `init_params` (random, the paper's initialisation) or from
`load_params` (given arrays, no random draw).
"""
import math
import numbers
from dataclasses import dataclass

from . import primitives as P
from .backend import namespace as array_namespace
from .errors import InputError
from .tape import Var

ACTIVATIONS = ("relu", "clipped_relu", "maxmin")
MAX_SIZE = 2 ** 31 - 1  # the largest size, stride or padding a layer accepts
LAYER_TYPES = {}  # spec "type" -> Layer subclass
REQUIRED = object()  # the default of a field a spec must give


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


def check_finite(what, value):
    """A finite real number (not a bool) as a float, else InputError naming `what`."""
    number = math.nan if isinstance(value, bool) or not isinstance(value, numbers.Real) else value
    try:
        number = float(number)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number, got {value!r:.40}")
    return number


def size(minimum):
    return lambda what, value: check_int(what, value, minimum)


def shape(ndim=None):
    return lambda what, value: check_shape(what, value, ndim)


@dataclass(frozen=True)
class Field:
    """One constructor argument of a layer, as its spec stores it."""
    name: str
    check: object  # check(what, value) -> the value the constructor takes; InputError otherwise
    default: object = REQUIRED

    def read(self, spec):
        if self.name not in spec:
            if self.default is REQUIRED:
                raise InputError(f"{spec['type']}: missing field {self.name!r}")
            return self.default
        return self.check(f"{spec['type']} field {self.name!r}", spec[self.name])


def layer_type(name):
    """Class decorator: register a Layer subclass under its spec type `name`."""
    def register(cls):
        cls.kind = name
        LAYER_TYPES[name] = cls
        return cls
    return register


def _json(value):
    return list(value) if isinstance(value, tuple) else value


class Layer:
    kind = "layer"
    is_affine = False
    is_activation = False
    FIELDS = ()  # the spec fields, in constructor order

    def __init__(self, in_shape, out_shape):
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.params = {}  # local name -> Var

    def spec(self):
        return {"type": self.kind, **{f.name: _json(getattr(self, f.name)) for f in self.FIELDS}}

    def param_shapes(self):
        """{local name: shape} of the parameters `init_params` makes (nothing is allocated)."""
        return {}

    def init_params(self, xp, dtype, rng):
        self.params = {}

    def place(self, xp, dtype):
        """Make whatever fixed (non-trainable) arrays the layer computes with, on backend xp in
        `dtype`; the model calls it whenever its parameters are set (none for most layers)."""

    def load_params(self, values):
        """Take the parameters from {local name: backend array} (shapes checked; nothing drawn)."""
        params = {}
        for name, expected in self.param_shapes().items():
            value = values[name]
            if tuple(value.shape) != tuple(expected):
                raise ValueError(f"parameter {name}: shape {tuple(value.shape)} != {tuple(expected)}")
            params[name] = Var(value)
        self.params = params


@layer_type("linear")
class Linear(Layer):
    is_affine = True
    FIELDS = (Field("in_features", size(1)), Field("out_features", size(1)))

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
        return self.affine(x, *self.linear_part(p))

    def linear_part(self, params):
        """(weight, bias): the hook every bound of an affine layer uses."""
        return params["weight"], params["bias"]

    def affine(self, x, weight, bias):
        return P.linear(x, weight, bias)

    def affine_adjoint(self, u, weight):
        """The adjoint of x -> W x on (N, out) arrays."""
        return P.matmul(u, weight)

    def param_shapes(self):
        return {"weight": (self.out_features, self.in_features), "bias": (self.out_features,)}


@layer_type("conv2d")
class Conv2d(Layer):
    is_affine = True
    FIELDS = (Field("in_shape", shape(3)), Field("out_channels", size(1)), Field("kernel_size", size(1)),
              Field("stride", size(1)), Field("padding", size(0)))

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
        return self.affine(x, *self.linear_part(p))

    def linear_part(self, params):
        """(weight, bias): the hook every bound of an affine layer uses."""
        return params["weight"], params["bias"]

    def affine(self, x, weight, bias):
        return P.conv2d(x, weight, bias, self.stride, self.padding)

    def affine_adjoint(self, u, weight):
        """The exact adjoint of x -> conv2d(x, W) on the layer's input shape."""
        return P.conv2d_transpose(u, weight, self.stride, self.padding, self.in_shape[1:])

    def param_shapes(self):
        k = self.kernel_size
        return {"weight": (self.out_channels, self.in_channels, k, k), "bias": (self.out_channels,)}


@layer_type("avgpool2d")
class AvgPool2d(Conv2d):
    """Average pooling over k x k windows (torch's nn.AvgPool2d with count_include_pad=True):
    a conv with a constant kernel, W[o, c] = [o == c] / k^2, no bias and nothing trainable.
    Its `linear_part` is that kernel, so every bound of a conv layer holds for it as it is."""
    FIELDS = (Field("in_shape", shape(3)), Field("kernel_size", size(1)), Field("stride", size(1)),
              Field("padding", size(0)))

    def __init__(self, in_shape, kernel_size, stride, padding):
        super().__init__(in_shape, check_shape("in_shape", in_shape, 3)[0], kernel_size, stride, padding)
        if 2 * self.padding > self.kernel_size:  # torch's rule: a window must see the image
            raise InputError(f"avgpool2d: padding {self.padding} is more than half the kernel {self.kernel_size}")
        self.kernel = None  # made by `place`

    def init_params(self, xp, dtype, rng):
        self.params = {}
        self.place(xp, dtype)

    def place(self, xp, dtype):
        c, k = self.in_channels, self.kernel_size
        eye = xp.reshape(xp.eye(c, dtype=dtype), (c, c, 1, 1))
        self.kernel = eye * xp.ones((1, 1, k, k), dtype=dtype) / float(k * k)

    def linear_part(self, params):
        if self.kernel is None:
            raise RuntimeError("avgpool2d: its kernel is made when the model's parameters are set (place)")
        return self.kernel, None

    def param_shapes(self):
        return {}


THRESHOLD = Field("threshold_init", check_finite, 1.0)


class Activation(Layer):
    """An elementwise-shaped activation: output shape = input shape (the spec's `shape`)."""
    is_activation = True
    FIELDS = (Field("shape", shape()),)

    def __init__(self, shape):
        super().__init__(shape, shape)

    @property
    def shape(self):
        return self.in_shape


@layer_type("relu")
class ReLU(Activation):
    def __call__(self, x, p):
        return P.relu(x)


@layer_type("clipped_relu")
class ClippedReLU(Activation):
    """min(max(x, 0), theta) with a learnable threshold per neuron (the layer's feature shape)."""
    FIELDS = Activation.FIELDS + (THRESHOLD,)

    def __init__(self, shape, threshold_init):
        super().__init__(shape)
        self.threshold_init = float(threshold_init)

    def init_params(self, xp, dtype, rng):
        self.params = {"threshold": Var(xp.full(self.in_shape, self.threshold_init, dtype=dtype))}

    def __call__(self, x, p):
        return P.clipped_relu(x, p["threshold"])

    def param_shapes(self):
        return {"threshold": self.in_shape}


@layer_type("maxmin")
class ClampedMaxMin(Activation):
    """MaxMin over channel halves, the max half clamped above by `max`, the min half below by
    `min` (learnable, one per element of a half; PyTorch names "k.max", "k.min")."""
    FIELDS = Activation.FIELDS + (THRESHOLD,)

    def __init__(self, shape, threshold_init):
        if shape[0] % 2:
            raise InputError(f"MaxMin needs an even number of channels/features, got shape {tuple(shape)}")
        super().__init__(shape)
        self.threshold_init = float(threshold_init)
        self.half_shape = (shape[0] // 2,) + tuple(shape[1:])

    def init_params(self, xp, dtype, rng):
        self.params = {"max": Var(xp.full(self.half_shape, self.threshold_init, dtype=dtype)),
                       "min": Var(xp.full(self.half_shape, -self.threshold_init, dtype=dtype))}

    def __call__(self, x, p):
        return P.clamped_maxmin(x, p["max"], p["min"])

    def param_shapes(self):
        return {"max": self.half_shape, "min": self.half_shape}


@layer_type("flatten")
class Flatten(Layer):
    FIELDS = (Field("in_shape", shape()),)

    def __init__(self, in_shape):
        super().__init__(in_shape, (math.prod(in_shape),))

    def __call__(self, x, p):
        return P.reshape(x, (x.shape[0],) + self.out_shape)


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

    def place(self, xp, dtype):
        """Make every layer's fixed arrays (`Layer.place`) on backend xp in dtype."""
        for layer in self.layers:
            layer.place(xp, dtype)

    def parameter_shapes(self):
        """Ordered {"<index>.<name>": shape}, known before (and without) `init_params`."""
        return {f"{i}.{name}": tuple(shape) for i, layer in enumerate(self.layers)
                for name, shape in layer.param_shapes().items()}

    def parameters(self):
        """Ordered {"<index>.<name>": Var}."""
        return {f"{i}.{name}": v for i, layer in enumerate(self.layers) for name, v in layer.params.items()}

    def load_parameters(self, arrays):
        """Take every parameter from {"<index>.<name>": backend array} (shapes checked against
        the architecture): a model built from stored values draws no random weights."""
        for i, layer in enumerate(self.layers):
            layer.load_params({name: arrays[f"{i}.{name}"] for name in layer.param_shapes()})
        first = next(iter(self.parameters().values())).value  # the last layer is Linear: there is one
        self.place(array_namespace(first), first.dtype)
        return self

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
    """Build one layer (parameters not initialised) from its spec dict (as `Layer.spec` writes
    it), through the registry. Every field is checked by its declared checker: sizes are JSON
    integers >= 1, paddings >= 0, shapes lists of sizes, thresholds finite numbers; anything
    else is an InputError naming the field."""
    if not isinstance(spec, dict):
        raise InputError(f"layer spec is not a JSON object: {spec!r:.80}")
    kind = spec.get("type")
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InputError(f"unknown layer type {kind!r:.40}")
    return cls(*(f.read(spec) for f in cls.FIELDS))


def activation_layer(name, shape, threshold_init=1.0):
    """The activation layer registered as `name` on feature shape `shape`."""
    cls = LAYER_TYPES.get(name) if name in ACTIVATIONS else None
    if cls is None:
        raise InputError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return cls(shape, threshold_init) if THRESHOLD in cls.FIELDS else cls(shape)
