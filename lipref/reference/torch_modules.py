"""torch modules equal to lipref's layers, and `to_torch`, which builds an nn.Sequential
from a lipref model (its layer specs and parameter values): the reference's side of the
comparison (torch_reference.py has the bounds).
"""
import math

import numpy
import torch
import torch.nn as nn
import torch.nn.functional as F


class ClippedReLU(nn.Module):
    """min(max(x, 0), threshold) with one learnable threshold per neuron (the feature shape)."""

    def __init__(self, shape, threshold_init=1.0):
        super().__init__()
        self.threshold = nn.Parameter(torch.full(tuple(shape), float(threshold_init)))

    def forward(self, x):
        r = F.relu(x)
        return torch.where(r < self.threshold, r, self.threshold)


class ClampedMaxMin(nn.Module):
    """MaxMin over the two halves a, b of axis 1: [min(max(a, b), max), max(min(a, b), min)],
    with learnable clamps `max` and `min` of the half's feature shape. At a == b, a is the max."""

    def __init__(self, half_shape, threshold_init=1.0):
        super().__init__()
        self.max = nn.Parameter(torch.full(tuple(half_shape), float(threshold_init)))
        self.min = nn.Parameter(torch.full(tuple(half_shape), -float(threshold_init)))

    def forward(self, x):
        a, b = torch.chunk(x, 2, dim=1)
        a_wins = a >= b
        big = torch.where(a_wins, a, b)
        small = torch.where(a_wins, b, a)
        top = torch.where(big < self.max, big, self.max)
        bottom = torch.where(small > self.min, small, self.min)
        return torch.cat([top, bottom], dim=1)


ACTIVATION_MODULES = (nn.ReLU, ClippedReLU, ClampedMaxMin)
AFFINE_MODULES = (nn.Linear, nn.Conv2d, nn.AvgPool2d)


def _activation_module(name, shape, threshold_init):
    if name == "relu":
        return nn.ReLU()
    if name == "clipped_relu":
        return ClippedReLU(shape, threshold_init)
    if name == "maxmin":
        return ClampedMaxMin((shape[0] // 2,) + tuple(shape[1:]), threshold_init)
    raise ValueError(f"unknown activation {name!r}")


def torch_sequential(convs, widths, input_shape, n_classes, activation="relu", threshold_init=1.0):
    """The paper's layout as an nn.Sequential: [conv, act] per (out, k, stride, pad) in convs,
    Flatten (when the input is an image), [linear, act] per width, then linear to n_classes."""
    modules, shape = [], tuple(input_shape)
    for out_ch, k, s, p in convs:
        h = (shape[1] + 2 * p - k) // s + 1
        w = (shape[2] + 2 * p - k) // s + 1
        modules.append(nn.Conv2d(shape[0], out_ch, k, stride=s, padding=p))
        shape = (out_ch, h, w)
        modules.append(_activation_module(activation, shape, threshold_init))
    if len(shape) > 1:
        modules.append(nn.Flatten())
        shape = (math.prod(shape),)
    for width in widths:
        modules += [nn.Linear(shape[0], width), _activation_module(activation, (width,), threshold_init)]
        shape = (width,)
    modules.append(nn.Linear(shape[0], n_classes))
    return nn.Sequential(*modules)


def _module_from_spec(spec):
    kind = spec["type"]
    if kind == "linear":
        return nn.Linear(spec["in_features"], spec["out_features"])
    if kind == "conv2d":
        return nn.Conv2d(spec["in_shape"][0], spec["out_channels"], spec["kernel_size"],
                         stride=spec["stride"], padding=spec["padding"])
    if kind == "flatten":
        return nn.Flatten()
    if kind == "avgpool2d":
        return nn.AvgPool2d(spec["kernel_size"], stride=spec["stride"], padding=spec["padding"],
                            count_include_pad=True)
    if kind in ("relu", "clipped_relu", "maxmin"):
        return _activation_module(kind, tuple(spec["shape"]), spec.get("threshold_init", 1.0))
    raise ValueError(f"no torch module for layer type {kind!r}")


def to_torch(model, dtype=torch.float64):
    """An nn.Sequential equal to lipref model `model` (same parameter names and values)."""
    from lipref.backend import to_host  # reading parameter values, not lipref's math
    net = nn.Sequential(*[_module_from_spec(s) for s in model.spec()]).to(dtype)
    state = {name: torch.as_tensor(numpy.asarray(to_host(v.value)), dtype=dtype)
             for name, v in model.parameters().items()}
    net.load_state_dict(state, strict=True)
    return net


def input_shapes(net, input_shape):
    """Per module of `net`, its input feature shape (no batch axis), then the output shape."""
    shapes = [tuple(input_shape)]
    p = next(net.parameters())
    h = torch.zeros((1,) + tuple(input_shape), dtype=p.dtype, device=p.device)
    with torch.no_grad():
        for module in net:
            h = module(h)
            shapes.append(tuple(h.shape[1:]))
    return shapes
