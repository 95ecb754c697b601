"""Import a PyTorch checkpoint of the paper's nn.Sequential models as a lipref model.

The paper's code saves `nn.Sequential` models, so parameters are named by module index:
"0.weight", "0.bias" (conv or linear), "1.threshold" (clipped ReLU, the feature shape),
"1.max" / "1.min" (clamped MaxMin, half the feature shape). lipref's models use the same
names and layouts (conv weights (O, C, k, k), linear weights (out, in), Flatten in C order),
so importing is: find the state dict, build the lipref architecture, check that the names
and shapes agree exactly, copy the values. The official code (yjhuangcd/local-lipschitz)
stores thresholds and clamps with a leading axis of 1 ([1, C, H, W] or [1, F]); that axis is
dropped where the rest is the architecture's shape. Its clipped ReLU is max(min(x, t), 0),
lipref's min(max(x, 0), t): equal for t >= 0, and for t < 0 both are 0 once t is clamped to
0 at import (`official_layout`), so the imported model computes the checkpoint's function.

BatchNorm2d / BatchNorm1d (evaluation mode: running statistics) right after a conv or linear
module is folded into it in float64 (torch_modules.fold_batchnorms; lipref.folding states the
bound), and the modules after it are renumbered as if it were not there; a module whose
parameters are none of these is named in a one-line error. An nn.Sequential in memory is
imported by `from_torch_module` (torch_modules.py).

`arch` is a named architecture (4c3f, 6c2f, 8c2f, 2c2f, mlp-W1-W2...), "auto" (the named
architecture, or a dense stack, whose parameter names and shapes fit the checkpoint; the
input shape is found the same way when not given), or a
generic conv/linear stack "conv:OUT:K:STRIDE:PAD,avgpool:K:STRIDE:PAD,...,fc:WIDTH,..." (strides,
paddings and average poolings, nn.AvgPool2d, have no parameters in a state dict, so such a
stack must be spelled out). `from_torch_module` takes an nn.Sequential in memory instead
(lipref.from_torch), its layers read from the modules themselves. torch is optional: it is
imported inside the functions that need it.
"""
import os
import re

from .backend import get_backend, host
from .errors import InputError, MissingExtraError, UserError, import_extra
from .layers import ACTIVATIONS, AvgPool2d, Conv2d, Flatten, Linear, ReLU, Sequential, check_int, check_shape
from .models import ARCHITECTURES, GENERIC_STACK, build_architecture, build_stack, load_parameters_into, parse_generic, save_model
from .precision import widen_exactly

TORCH_MISSING = "torch is not installed: pip install 'lipref[torch]'"
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
TORCH_BATCHNORM_EPS = 1e-5  # nn.BatchNorm's default eps: a state dict does not hold it
TORCH_FLOATS = ("float16", "bfloat16", "float32", "float64")  # float8 and others are refused


class TorchImportError(UserError, ValueError):
    """A checkpoint that cannot be imported (unreadable, or names/shapes that do not fit)."""


class TorchNotInstalled(MissingExtraError):
    """torch is needed for this operation and is not installed."""


def require_torch():
    """The torch module, or TorchNotInstalled with the install command."""
    return import_extra("torch", TORCH_MISSING, TorchNotInstalled)


# ---------------------------------------------------------------- reading the checkpoint

def read_state_dict(path):
    """{name: host array} of the checkpoint's parameters, each with exactly the tensor's values
    (`_to_host`), "module." prefixes removed.

    Accepts a dict holding the state dict under "state_dict", "model_state_dict" or "model",
    or a bare state dict. Read with torch.load(weights_only=True): no code is executed."""
    torch = require_torch()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TorchImportError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise TorchImportError(f"{path}: not a readable weights-only torch checkpoint "
                               f"({type(exc).__name__}: {exc})") from None
    state = _find_state_dict(obj, torch)
    if state is None:
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise TorchImportError(f"{path}: no state dict found (expected a dict of tensors, or one under "
                               f"{', '.join(STATE_DICT_KEYS)}; found {keys})")
    arrays = {}
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise TorchImportError(f"{path}: state dict key {name!r} is not a string")
        key = _strip_prefix(name)
        if key in arrays:
            raise TorchImportError(f"{path}: two tensors for parameter {key} ({key} and module.{key})")
        arrays[key] = _to_host(path, name, tensor, torch)
    return arrays


def _to_host(path, name, tensor, torch):
    """A host copy of a dense, real, CPU-readable tensor with exactly its values, in float32
    (float16, bfloat16, float32) or float64 (float64, integers; lipref.precision);
    TorchImportError names the key otherwise."""
    if tensor.layout != torch.strided:
        raise TorchImportError(f"{path}: parameter {name} is a {tensor.layout} tensor; only dense tensors "
                               "can be imported (call .to_dense() before saving)")
    if tensor.is_meta:
        raise TorchImportError(f"{path}: parameter {name} is a meta tensor: it holds no values")

    def refuse(why):
        return TorchImportError(f"{path}: parameter {name} {why}")
    other = tensor.is_quantized or tensor.is_complex() or tensor.dtype == torch.bool
    if other or (tensor.is_floating_point() and str(tensor.dtype).removeprefix("torch.") not in TORCH_FLOATS):
        raise refuse(f"has dtype {tensor.dtype}; parameters must be float16, bfloat16, float32, float64 "
                     "or integers")
    tensor = tensor.detach().to("cpu")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.to(torch.float32)  # exact: every value is a float32 number
    return widen_exactly(tensor.numpy(), refuse)


def _is_state_dict(obj, torch):
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj, torch):
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if key in obj and _is_state_dict(obj[key], torch):
                return obj[key]
    return obj if _is_state_dict(obj, torch) else None


def _strip_prefix(name):
    """Drop the "module." that nn.DataParallel puts in front of every name."""
    return name.removeprefix("module.")


# ---------------------------------------------------------------- architectures

def build_generic(convs, widths, input_shape, n_classes, activation):
    """The paper's layout for any conv/fc widths (models.build_stack, thresholds at 1)."""
    return build_stack(convs, widths, input_shape, n_classes, activation, 1.0)


def build_named_or_generic(arch, input_shape, n_classes, activation):
    """A Sequential (parameters not set) for a named architecture or a generic spec."""
    generic = parse_generic(arch) if ":" in arch else None
    if ":" in arch and generic is None:
        raise TorchImportError(f"cannot parse architecture {arch!r}; expected {GENERIC_STACK} (convs and pools first)")
    try:
        if generic is not None:
            return build_generic(*generic, input_shape, n_classes, activation)
        return build_architecture(arch, input_shape, n_classes, activation)
    except InputError as exc:  # unknown name, input too small, odd width for MaxMin, stride 0
        raise TorchImportError(f"architecture {arch}: {exc}") from None


def infer_activation(names):
    """The activation a state dict's parameter names imply: clipped ReLU has "k.threshold",
    MaxMin "k.max"/"k.min", ReLU nothing."""
    suffixes = {name.rsplit(".", 1)[-1] for name in names}
    if "threshold" in suffixes:
        return "clipped_relu"
    if {"max", "min"} & suffixes:
        return "maxmin"
    return "relu"


def infer_n_classes(arrays):
    """Rows of the last 2-D weight (by module index)."""
    weights = [(int(name.split(".")[0]), a) for name, a in arrays.items()
               if name.endswith(".weight") and name.split(".")[0].isdigit() and a.ndim == 2]
    if not weights:
        raise TorchImportError("cannot infer the number of classes: no linear weight in the checkpoint")
    return max(weights, key=lambda item: item[0])[1].shape[0]


def _dense_widths(arrays):
    """Hidden widths if every weight is 2-D (a dense stack), else None."""
    weights = sorted((int(n.split(".")[0]), a) for n, a in arrays.items()
                     if n.endswith(".weight") and n.split(".")[0].isdigit())
    if not weights or any(a.ndim != 2 for _, a in weights):
        return None
    return [a.shape[0] for _, a in weights[:-1]]


def expected_shapes(model):
    """{name: shape} of the model's parameters (nothing is allocated)."""
    return model.parameter_shapes()


def official_layout(model, arrays):
    """The checkpoint's arrays in lipref's layout for `model`: a leading axis of 1 dropped
    from an activation parameter (threshold, max, min) where that leaves the architecture's
    shape (the official code's [1, C, H, W] and [1, F]), and negative thresholds raised to 0
    (see the module docstring: the same function)."""
    expected = expected_shapes(model)
    out = dict(arrays)
    for name, a in arrays.items():
        want = expected.get(name)
        if want is None or name.rsplit(".", 1)[-1] not in ("threshold", "max", "min"):
            continue
        if a.ndim == len(want) + 1 and a.shape[0] == 1 and tuple(a.shape[1:]) == want:
            out[name] = a[0]
        if name.endswith(".threshold"):
            out[name] = host.maximum(out[name], 0.0)
    return out


def mismatches(model, arrays):
    """Sorted problem lines: missing, unexpected and wrong-shape parameter names (after
    `official_layout`)."""
    arrays = official_layout(model, arrays)
    expected = expected_shapes(model)
    problems = [f"missing {name} {shape}" for name, shape in sorted(expected.items()) if name not in arrays]
    problems += [f"unexpected {name} {tuple(arrays[name].shape)}" for name in sorted(set(arrays) - set(expected))]
    problems += [f"wrong shape {name}: checkpoint {tuple(arrays[name].shape)}, architecture {shape}"
                 for name, shape in sorted(expected.items())
                 if name in arrays and tuple(arrays[name].shape) != shape]
    return problems


OFFICIAL_INPUT_SIDES = (28, 32, 64)  # MNIST, CIFAR-10, TinyImageNet


def input_shapes_to_try(arrays, path):
    """Input shapes a checkpoint may take when none is given: (C, S, S) for the datasets'
    sides S and the first activation's spatial shape (the paper's first convs keep it), C
    from the first conv weight; (D,) for a dense first layer."""
    first = arrays.get("0.weight")
    if first is None or first.ndim not in (2, 4):
        raise TorchImportError(f"{path}: cannot infer the input shape: no conv or linear weight 0.weight; "
                               "give --input-shape")
    if first.ndim == 2:
        return [(int(first.shape[1]),)]
    channels, shapes = int(first.shape[1]), []
    for key in ("1.threshold", "1.max"):
        a = arrays.get(key)
        if a is not None and a.ndim >= 3:
            shapes.append((channels,) + tuple(int(d) for d in a.shape[-2:]))
    return shapes + [(channels, side, side) for side in OFFICIAL_INPUT_SIDES if (channels, side, side) not in shapes]


def _candidates(arrays, input_shape, n_classes, activation, path):
    """[(name, Sequential)] to try for arch="auto" (input_shape None: every shape to try)."""
    if input_shape is None:
        return [c for shape in input_shapes_to_try(arrays, path)
                for c in _candidates(arrays, shape, n_classes, activation, path)]
    out = []
    if len(input_shape) == 3:
        for name in sorted(ARCHITECTURES):
            try:
                out.append((name, build_architecture(name, input_shape, n_classes, activation)))
            except InputError:
                continue  # the input is too small for this architecture
    widths = _dense_widths(arrays)
    if widths is not None:
        name = "mlp-" + "-".join(map(str, widths)) if widths else "linear"
        try:
            out.append((name, build_generic([], widths, input_shape, n_classes, activation)))
        except InputError:
            pass  # e.g. an odd width for MaxMin: nothing to try
    return out


def _select(arch, arrays, input_shape, n_classes, activation, path):
    """(arch name, Sequential) whose parameters fit `arrays` exactly, or TorchImportError."""
    if arch != "auto":
        if input_shape is None:
            input_shape = _fitting_shape(arch, arrays, n_classes, activation, path)
        model = build_named_or_generic(arch, input_shape, n_classes, activation)
        problems = mismatches(model, arrays)
        if problems:
            raise TorchImportError(f"{path}: the checkpoint does not fit architecture {arch} "
                                   f"({activation}, input {tuple(input_shape)}, {n_classes} classes): "
                                   + "; ".join(problems))
        return arch, model
    tried = []
    for name, model in _candidates(arrays, input_shape, n_classes, activation, path):
        problems = mismatches(model, arrays)
        if not problems:
            return name, model
        tried.append((len(problems), name, problems))
    if not tried:
        raise TorchImportError(f"{path}: no architecture to try for input "
                               f"{'(inferred)' if input_shape is None else tuple(input_shape)}")
    _, name, problems = min(tried)
    raise TorchImportError(f"{path}: no named architecture fits the checkpoint (a conv stack needs "
                           f"--arch conv:OUT:K:STRIDE:PAD,...,fc:WIDTH); closest is {name}: "
                           + "; ".join(problems))


def _fitting_shape(arch, arrays, n_classes, activation, path):
    """The input shape to try on which `arch` fits the checkpoint with the fewest mismatches
    (none, where it fits; the caller reports those of the closest)."""
    shapes, scored = input_shapes_to_try(arrays, path), []
    for order, shape in enumerate(shapes):
        try:
            scored.append((len(mismatches(build_named_or_generic(arch, shape, n_classes, activation), arrays)),
                           order, shape))
        except TorchImportError:
            continue  # the input is too small for this architecture
    if not scored:
        raise TorchImportError(f"{path}: architecture {arch} fits none of the input shapes tried "
                               f"({', '.join(map(str, shapes))}); give --input-shape")
    return min(scored)[2]


# ---------------------------------------------------------------- the import

def import_torch_checkpoint(path, arch, input_shape, n_classes, activation, out_path=None,
                            batchnorm_eps=TORCH_BATCHNORM_EPS):
    """A lipref model (NumPy backend) with the checkpoint's parameters, exactly: float32, or
    float64 where the checkpoint holds float64 (a mixed one widens to float64; lipref.precision).

    path: a torch checkpoint (see `read_state_dict`). arch: a named architecture, "auto", or
    "conv:OUT:K:STRIDE:PAD,...,fc:WIDTH,...". input_shape: (C, H, W) or (D,), or None to find
    the one on which the architecture fits (`input_shapes_to_try`). n_classes: an
    int, or None to read it from the last linear weight. activation: relu, clipped_relu,
    maxmin, or "auto"/None to read it from the parameter names. Missing, unexpected or
    wrong-shape parameters raise TorchImportError listing every one. out_path: when given,
    the model is also saved there (models.save_model, atomic). BatchNorm modules are folded
    (`fold_batchnorms`, with `batchnorm_eps`, torch's default; the model is then float64)."""
    from .torch_modules import fold_batchnorms
    arrays, folds = fold_batchnorms(os.fspath(path), read_state_dict(path), batchnorm_eps)
    try:
        input_shape = None if input_shape is None else check_shape("input shape", tuple(input_shape))
        n_classes = check_int("the number of classes", infer_n_classes(arrays) if n_classes is None else n_classes, 1)
    except InputError as exc:
        raise TorchImportError(f"{path}: {exc}") from None
    if activation in (None, "auto"):
        activation = infer_activation(arrays)
    if activation not in ACTIVATIONS:
        raise TorchImportError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    name, model = _select(arch, arrays, input_shape, int(n_classes), activation, os.fspath(path))
    arrays = official_layout(model, arrays)
    input_shape = model.input_shape
    bad = sorted(k for k, a in arrays.items() if not host.all(host.isfinite(a)))
    if bad:
        raise TorchImportError(f"{path}: parameters with NaN or inf: {', '.join(bad)}")
    load_parameters_into(model, os.fspath(path), arrays, get_backend("numpy"))  # the checkpoint's precision
    model.metadata = {"arch": name, "activation": activation, "input_shape": list(input_shape),
                      "n_classes": int(n_classes), "threshold_init": 1.0,
                      "imported_from": os.path.basename(os.fspath(path))}
    if folds:
        model.metadata["folds"] = folds
    if out_path is not None:
        save_model(out_path, model)
    return model


def from_torch_module(module, input_shape):
    """A lipref model (NumPy backend) computing `module`, an nn.Sequential in memory, on inputs
    of feature shape `input_shape`, with the module's exact parameter values (see
    torch_modules.module_to_model for the modules read)."""
    from .torch_modules import module_to_model
    return module_to_model(module, input_shape)
