"""Shape arithmetic and layout views shared by the plain primitives and the conv kernels."""
from .backend import namespace


def conv_output_hw(h, w, kh, kw, stride, padding):
    """Output height and width of a convolution with zero padding."""
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d: kernel {kh}x{kw} with stride {stride}, padding {padding} "
                         f"does not fit an input of {h}x{w}")
    return oh, ow


def nhwc(x):
    """An NCHW array viewed channels-last (N, H, W, C)."""
    return namespace(x).permute_dims(x, (0, 2, 3, 1))


def nchw(x):
    """A channels-last array viewed as NCHW (N, C, H, W)."""
    return namespace(x).permute_dims(x, (0, 3, 1, 2))
