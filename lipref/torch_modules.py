"""What the modules of a torch nn.Sequential are, and what lipref makes of them: from a
checkpoint's parameter names (`fold_batchnorms`, `unreadable_modules`, used by
torch_import.import_torch_checkpoint) and from the modules in memory (`module_to_model`,
which the Python API's `lipref.from_torch` calls).

BatchNorm in evaluation mode right after a Conv2d or Linear is folded into it in float64
(lipref.folding.fold_batchnorm: the model certified is the folded one, each value within the
recorded bound of the exact fold). Everything else lipref does not read is named, with its
module index, in a one-line TorchImportError.
"""
import warnings

from .backend import get_backend, host
from .errors import InputError
from .folding import FoldWarning, batchnorm_problem, fold_batchnorm, record
from .layers import AvgPool2d, ClampedMaxMin, ClippedReLU, Conv2d, Flatten, Linear, ReLU, Sequential, check_shape
from .models import load_parameters_into
from .torch_import import TORCH_BATCHNORM_EPS, TorchImportError, _to_host, require_torch

BATCHNORM_KEYS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
KNOWN_NAMES = BATCHNORM_KEYS | {"threshold", "max", "min"}
READ = ("Linear, Conv2d, BatchNorm1d/2d after them (eval), ReLU, Flatten, AvgPool2d, Dropout, Identity, the official "
        "clipped ReLU (threshold) and MaxMin (max, min)")


# ---------------------------------------------------------------- from a state dict

def modules_of(arrays):
    """{module index: {parameter name: array}} of the keys "<index>.<name>"; keys in another form
    are under the index None."""
    modules = {}
    for key, a in arrays.items():
        head, _, name = key.partition(".")
        index = int(head) if head.isdigit() and name and "." not in name else None
        modules.setdefault(index, {})[name if index is not None else key] = a
    return modules


def _describe(params):
    return ", ".join(f"{name} {tuple(a.shape)}" for name, a in sorted(params.items()))


def _kind(params):
    """What a module's parameters say it is: "affine", "threshold", "maxmin", "batchnorm", None."""
    names = set(params)
    if names in ({"weight"}, {"weight", "bias"}) and params["weight"].ndim in (2, 4):
        return "affine"
    if names == {"threshold"}:
        return "threshold"
    if names == {"max", "min"}:
        return "maxmin"
    if {"running_mean", "running_var"} <= names <= BATCHNORM_KEYS:
        return "batchnorm"
    return None


def unreadable_modules(path, modules):
    """TorchImportError naming every module whose parameters are none lipref reads (with a guess
    of what it is), and parameters not named by an nn.Sequential's module index."""
    problems = []
    for index, params in sorted((i, p) for i, p in modules.items() if i is not None):
        names = set(params)
        norm_like = "weight" in names and params["weight"].ndim == 1 and "running_mean" not in names
        if norm_like or not names <= KNOWN_NAMES:  # a parameter missing or misshapen is listed later, by name
            guess = (": a normalisation without running statistics (LayerNorm, GroupNorm, or BatchNorm with "
                     "track_running_stats=False)" if names == {"weight", "bias"} else
                     ": a per-feature weight (PReLU?)" if names == {"weight"} else "")
            problems.append(f"module at {index} ({_describe(params)}){guess}")
    if None in modules:
        names = sorted(modules[None])
        problems.append(f"parameters not named by an nn.Sequential's module index ({', '.join(names[:4])}"
                        f"{' ...' if len(names) > 4 else ''}; for another nn.Module, build its nn.Sequential in Python "
                        "and call lipref.torch_import.from_torch_module)")
    if problems:
        raise TorchImportError(f"{path}: modules lipref does not read (it reads {READ}): " + "; ".join(problems))


def fold_batchnorms(path, arrays, eps=TORCH_BATCHNORM_EPS):
    """(arrays, folds): each BatchNorm module k folded into the conv or linear module k - 1
    (float64, lipref.folding.fold_batchnorm), and the modules after it renumbered down by one
    for each BatchNorm before them, as lipref's architectures number their layers."""
    modules = modules_of(arrays)
    unreadable_modules(path, modules)
    norms = sorted(i for i, p in modules.items() if i is not None and _kind(p) == "batchnorm")
    folds = []
    for k in norms:
        layer, bn = modules.get(k - 1), modules[k]
        affine = layer is not None and _kind(layer) == "affine"
        label = f"BatchNorm{'2d' if layer['weight'].ndim == 4 else '1d'} at {k}" if affine else f"BatchNorm at {k}"
        if not affine:
            what = "a module without parameters" if layer is None else f"({_describe(layer)})"
            raise TorchImportError(f"{path}: {label}: lipref folds a BatchNorm into the conv or linear module right "
                                   f"before it, and module {k - 1} is {what}")
        into = k - 1 - sum(1 for j in norms if j < k - 1)
        layer["weight"], layer["bias"], entry = _fold(path, label, layer["weight"], layer.get("bias"), bn, eps, into)
        folds.append(entry)
    if norms:
        warnings.warn(f"{path}: BatchNorm eps {eps:g} taken (a state dict does not hold it; {eps:g} is torch's "
                      "default unless given: import-torch --batchnorm-eps)", FoldWarning, stacklevel=2)
    renumbered = {}
    for i, params in modules.items():
        if i is not None and i not in norms:
            new = i - sum(1 for j in norms if j < i)
            renumbered.update({f"{new}.{name}": a for name, a in params.items()})
    return renumbered, folds


def _fold(where, label, weight, bias, bn, eps, into):
    """(weight', bias', fold record) of a layer followed by BatchNorm parameters `bn`
    ({weight, bias, running_mean, running_var}, host arrays; weight and bias may be absent)."""
    channels = weight.shape[0]
    gamma_, beta = bn.get("weight"), bn.get("bias")
    gamma_ = host.ones(channels) if gamma_ is None else gamma_
    beta = host.zeros(channels) if beta is None else beta
    problem = batchnorm_problem(bn.get("running_mean"), bn.get("running_var"), eps, channels)
    if problem is None and (gamma_.shape != (channels,) or beta.shape != (channels,)):
        problem = f"weight {tuple(gamma_.shape)} and bias {tuple(beta.shape)} for {channels} channels"
    if problem is not None:
        raise TorchImportError(f"{where}: {label}: {problem}")
    bias = host.zeros(channels) if bias is None else bias
    w, b, bounds = fold_batchnorm(weight, bias, gamma_, beta, bn["running_mean"], bn["running_var"], eps)
    return w, b, record("batchnorm", label, into, False, "float64", epsilon=float(eps), **bounds)


# ---------------------------------------------------------------- from the modules in memory

def _pair(value, label, what):
    """An int from an int or a pair of equal ints (square kernels, equal strides and paddings)."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(set(values)) != 1 or not isinstance(values[0], int):
        raise TorchImportError(f"nn.Sequential: {label}: {what} {value}: lipref reads square kernels, equal strides "
                               "and the same padding on every side")
    return values[0]


class _Builder:
    """The layers and parameters read so far from the modules, and the current feature shape."""

    def __init__(self, torch, input_shape):
        self.torch, self.shape, self.layers, self.params, self.folds = torch, input_shape, [], {}, []
        self.last_affine = None  # the module index of the Conv2d / Linear just read

    def host(self, label, name, tensor):
        return _to_host("nn.Sequential", f"{name} of {label}", tensor, self.torch)

    def push(self, layer, **params):
        for name, value in params.items():
            self.params[f"{len(self.layers)}.{name}"] = value
        self.layers.append(layer)
        self.shape = layer.out_shape

    def refuse(self, label, why):
        return TorchImportError(f"nn.Sequential: {label}: {why}")

    def affine(self, index, label, m, make):
        try:
            layer = make()
        except InputError as exc:
            raise self.refuse(label, str(exc)) from None
        weight = self.host(label, "weight", m.weight)
        bias = host.zeros(weight.shape[0], dtype=weight.dtype) if m.bias is None else self.host(label, "bias", m.bias)
        self.push(layer, weight=weight, bias=bias)
        self.last_affine = index

    def linear(self, index, label, m):
        if len(self.shape) != 1 or m.in_features != self.shape[0]:
            raise self.refuse(label, f"in_features {m.in_features} for inputs {self.shape}")
        self.affine(index, label, m, lambda: Linear(m.in_features, m.out_features))

    def conv(self, index, label, m):
        if m.groups != 1 or _pair(m.dilation, label, "dilation") != 1 or m.padding_mode != "zeros":
            raise self.refuse(label, f"groups {m.groups}, dilation {m.dilation}, padding_mode {m.padding_mode}: lipref "
                                     "reads groups 1, dilation 1, zero padding")
        kernel, stride = _pair(m.kernel_size, label, "kernel"), _pair(m.stride, label, "stride")
        padding = {"valid": 0, "same": (kernel - 1) // 2}.get(m.padding, m.padding)
        if m.padding == "same" and (kernel % 2 == 0 or stride != 1):
            raise self.refuse(label, "padding 'same' with an even kernel pads unevenly")
        padding = _pair(padding, label, "padding")
        if len(self.shape) != 3 or m.in_channels != self.shape[0]:
            raise self.refuse(label, f"in_channels {m.in_channels} for inputs {self.shape}")
        self.affine(index, label, m, lambda: Conv2d(self.shape, m.out_channels, kernel, stride, padding))

    def batchnorm(self, index, label, m):
        if self.last_affine != index - 1:
            raise self.refuse(label, "lipref folds a BatchNorm into the Conv2d or Linear module right before it")
        stats = {"weight": m.weight, "bias": m.bias, "running_mean": m.running_mean, "running_var": m.running_var}
        bn = {k: self.host(label, k, v) for k, v in stats.items() if v is not None}
        at = len(self.layers) - 1
        w, b, entry = _fold("nn.Sequential", label, self.params[f"{at}.weight"], self.params[f"{at}.bias"], bn,
                            m.eps, at)
        self.params[f"{at}.weight"], self.params[f"{at}.bias"] = w, b
        self.folds.append(entry)

    def pool(self, label, m):
        if not m.count_include_pad or m.ceil_mode or m.divisor_override is not None:
            raise self.refuse(label, "lipref reads AvgPool2d with count_include_pad=True, no ceil_mode, no "
                                     "divisor_override")
        kernel = _pair(m.kernel_size, label, "kernel")
        stride = kernel if m.stride is None else _pair(m.stride, label, "stride")
        try:
            self.push(AvgPool2d(self.shape, kernel, stride, _pair(m.padding, label, "padding")))
        except (InputError, ValueError) as exc:
            raise self.refuse(label, str(exc)) from None

    def threshold(self, label, m):
        """The official clipped ReLU, clamp(min(x, t), 0): lipref's min(max(x, 0), t) with t
        raised to 0 (the same function; torch_import's module docstring)."""
        t = self.host(label, "threshold", m.threshold)
        t = t[0] if t.ndim == len(self.shape) + 1 and t.shape[0] == 1 else t
        if tuple(t.shape) != tuple(self.shape):
            raise self.refuse(label, f"threshold of shape {tuple(t.shape)} for features {self.shape}")
        self.push(ClippedReLU(self.shape, 1.0), threshold=host.maximum(t, 0))

    def maxmin(self, label, m):
        try:
            layer = ClampedMaxMin(self.shape, 1.0)
        except InputError as exc:
            raise self.refuse(label, str(exc)) from None
        values = {}
        for name in ("max", "min"):
            a = self.host(label, name, getattr(m, name))
            a = a[0] if a.ndim == len(self.shape) + 1 and a.shape[0] == 1 else a
            if tuple(a.shape) != layer.half_shape:
                raise self.refuse(label, f"{name} of shape {tuple(a.shape)} for half the features {layer.half_shape}")
            values[name] = a
        self.push(layer, **values)


def _leaves(module, nn):
    """The modules of an nn.Sequential in order, nested nn.Sequentials opened."""
    for m in module:
        yield from (_leaves(m, nn) if isinstance(m, nn.Sequential) else [m])


def _read(builder, index, m, nn):
    """Read module `m` (the index-th) into the builder, or raise naming it."""
    label = f"{type(m).__name__} at {index}"
    params = {name for name, _ in m.named_parameters(recurse=False)}
    random_or_batch = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if getattr(m, "training", False) and isinstance(m, random_or_batch):
        raise builder.refuse(label, "in training mode (call module.eval() first)")
    if isinstance(m, nn.Linear):
        builder.linear(index, label, m)
    elif isinstance(m, nn.Conv2d):
        builder.conv(index, label, m)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        builder.batchnorm(index, label, m)
    elif isinstance(m, nn.ReLU):
        builder.push(ReLU(builder.shape))
    elif isinstance(m, nn.Flatten) or (type(m).__name__ == "Flatten" and not params and not list(m.buffers())):
        if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1):
            raise builder.refuse(label, f"start_dim {m.start_dim}, end_dim {m.end_dim}: lipref reads Flatten(1, -1)")
        if len(builder.shape) > 1:
            builder.push(Flatten(builder.shape))
    elif isinstance(m, nn.AvgPool2d):
        builder.pool(label, m)
    elif isinstance(m, (nn.modules.dropout._DropoutNd, nn.Identity)):
        return
    elif params == {"threshold"}:
        builder.threshold(label, m)
    elif params == {"max", "min"}:
        builder.maxmin(label, m)
    else:
        raise builder.refuse(label, f"not a module lipref reads (it reads {READ})")


def module_to_model(module, input_shape):
    """A lipref model (NumPy backend) computing the nn.Sequential `module` (nested Sequentials
    opened) on inputs of feature shape `input_shape` ((C, H, W) or (D,)), with its parameters'
    exact values (float32, or float64 where the module holds float64, or where a BatchNorm is
    folded; lipref.precision). Reads the modules in READ; anything else, or a module in training
    mode, is a TorchImportError naming it and its index."""
    torch = require_torch()
    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise TorchImportError(f"from_torch takes an nn.Sequential, got {type(module).__name__} (wrap the "
                               "layers in one)")
    try:
        shape = check_shape("input shape", tuple(input_shape))
    except (InputError, TypeError) as exc:
        raise TorchImportError(f"nn.Sequential: {exc}") from None
    builder = _Builder(torch, shape)
    for index, m in enumerate(_leaves(module, nn)):
        _read(builder, index, m, nn)
    try:
        model = Sequential(builder.layers)
    except InputError as exc:
        raise TorchImportError(f"nn.Sequential: {exc} (the last module must be the nn.Linear of the logits)") from None
    load_parameters_into(model, "nn.Sequential", builder.params, get_backend("numpy"))
    kinds = {type(layer) for layer in model.layers}
    activation = "clipped_relu" if ClippedReLU in kinds else "maxmin" if ClampedMaxMin in kinds else "relu"
    model.metadata = {"arch": "torch-module", "activation": activation, "input_shape": list(shape),
                      "n_classes": model.n_classes, "threshold_init": 1.0, "imported_from": "nn.Sequential in memory"}
    if builder.folds:
        model.metadata["folds"] = builder.folds
    return model
