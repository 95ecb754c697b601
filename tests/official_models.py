"""The paper's official model definitions (github yjhuangcd/local-lipschitz, utils.py),
rebuilt in torch from the published facts for the import tests: ReLU_x (threshold [1, C, H, W]
or [1, F], forward clamp(min(x, t), min=0)), ClampGroupSort (max, min of half the channels),
a parameterless Flatten, and the official architectures. Needs torch."""
import numpy
import torch

nn = torch.nn


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size()[0], -1)


class ReLUx(nn.Module):
    def __init__(self, size, init=1.0):
        super().__init__()
        self.threshold = nn.Parameter(torch.full(size, float(init)))

    def forward(self, x):
        return torch.clamp(torch.min(x, self.threshold), min=0.0)


class ClampGroupSort(nn.Module):
    def __init__(self, size, top, bottom):
        super().__init__()
        self.min = nn.Parameter(torch.full(size, float(bottom)))
        self.max = nn.Parameter(torch.full(size, float(top)))

    def forward(self, x):
        a, b = x.split(x.size(1) // 2, 1)
        return torch.cat([torch.min(torch.max(a, b), self.max), torch.max(torch.min(a, b), self.min)], dim=1)


# (input (C, H, W), convs (out, kernel, stride, padding), fc widths, classes) of the official models
MNIST_4C3F = ((1, 28, 28), [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 512], 10)
CIFAR_4C3F = ((3, 32, 32), MNIST_4C3F[1], [512, 512], 10)
CIFAR_6C2F = ((3, 32, 32), [(32, 3, 1, 1), (32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 3, 1, 1),
                            (64, 4, 2, 1)], [512], 10)
TINY_8C2F = ((3, 64, 64), [(64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 0), (128, 3, 1, 1), (128, 3, 1, 1),
                           (128, 4, 2, 0), (256, 3, 1, 1), (256, 4, 2, 0)], [256], 200)
CIFAR_MAXMIN_CLAMPS = [(0.1, -0.1), (0.1, -0.15), (0.15, -0.15), (0.15, -0.15), (0.2, -0.2), (0.3, -0.3), (1.2, -1.2)]
TINY_MAXMIN_CLAMPS = [(0.8, -0.8), (1.0, -1.0), (1.4, -1.4), (1.4, -1.4), (1.4, -1.4), (1.6, -1.6), (2.0, -2.0),
                      (3.0, -3.0), (1.6, -1.6)]


def _activation(kind, shape, init, clamp):
    if kind == "relu":
        return nn.ReLU()
    if kind == "relux":
        return ReLUx(torch.Size([1, *shape]), init)
    half = (shape[0] // 2,) + tuple(shape[1:])
    return ClampGroupSort(torch.Size([1, *half]), *clamp)


def official_model(definition, kind, init=1.0, clamps=None):
    """The official nn.Sequential: [conv, act]..., Flatten, [linear, act]..., linear."""
    in_shape, convs, widths, n_classes = definition
    modules, shape, k = [], tuple(in_shape), 0
    for out, kernel, stride, padding in convs:
        c, h, w = shape
        modules.append(nn.Conv2d(c, out, kernel, stride=stride, padding=padding))
        shape = (out, (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1)
        modules.append(_activation(kind, shape, init, clamps[k] if clamps else None))
        k += 1
    if len(shape) > 1:
        modules.append(Flatten())
    features = int(numpy.prod(shape))
    for width in widths:
        modules += [nn.Linear(features, width), _activation(kind, (width,), init, clamps[k] if clamps else None)]
        features, k = width, k + 1
    modules.append(nn.Linear(features, n_classes))
    return nn.Sequential(*modules)


def randomised(net, seed):
    """Random weights, and activation parameters spread around their init (some thresholds < 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("threshold", "max", "min")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen) * max(1.0, float(p.abs().mean())))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
    return net


OFFICIAL = [
    ("mnist-4c3f-relux", MNIST_4C3F, "relux", {}, "4c3f", "clipped_relu"),
    ("mnist-4c3f-standrelu", MNIST_4C3F, "relu", {}, "4c3f", "relu"),
    ("cifar-4c3f-relux", CIFAR_4C3F, "relux", {}, "4c3f", "clipped_relu"),
    ("cifar-6c2f-relux", CIFAR_6C2F, "relux", {"init": 2.0}, "6c2f", "clipped_relu"),
    ("cifar-6c2f-standrelu", CIFAR_6C2F, "relu", {}, "6c2f", "relu"),
    ("cifar-6c2f-clmaxmin", CIFAR_6C2F, "maxmin", {"clamps": CIFAR_MAXMIN_CLAMPS}, "6c2f", "maxmin"),
    ("tinyimagenet-8c2f-relux", TINY_8C2F, "relux", {}, "8c2f", "clipped_relu"),
    ("tinyimagenet-8c2f-clmaxmin", TINY_8C2F, "maxmin", {"clamps": TINY_MAXMIN_CLAMPS}, "8c2f", "maxmin"),
]
