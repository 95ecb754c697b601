"""Test helpers, from the public lipref.testing: build data on the host, compare on the host,
insist on the backend's type."""
from lipref.backend import is_host_numpy
from lipref.testing import assert_backend_close, assert_close, to_numpy  # noqa: F401


def examples(xp, on_numpy, elsewhere):
    """Hypothesis examples for a property test on backend `xp`: `on_numpy` on NumPy, where the
    kernels run too, `elsewhere` on array-api-strict and CuPy, which run the same plain code
    (array-api-strict checks that it keeps to the standard; slowly, so with fewer draws)."""
    return on_numpy if is_host_numpy(xp) else elsewhere


def randomise_batchnorm(net, var_low, var_high):
    """Give every BatchNorm of a torch module random statistics and affine parameters
    (running variance uniform in [var_low, var_high]), so that a fold has something to fold."""
    import torch
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_()
                m.running_var.uniform_(var_low, var_high)
                m.weight.normal_()
                m.bias.normal_()
    return net
