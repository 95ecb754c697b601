"""Training-time augmentation of host image batches (N, C, H, W): random crop after zero
padding, and horizontal flip, each drawn per image from a given generator (the trainer
passes one seeded by (seed, epoch), so runs replay exactly).

`random_crop(images, padding, rng)`: pad every side with `padding` zeros, then cut an
H x W window at an offset (dy, dx) drawn uniformly from {0..2 padding}^2 per image (the
torchvision RandomCrop(size, padding) that the official CIFAR code uses).
`random_flip(images, rng)`: mirror the width axis of each image with probability 1/2.
"""
from ..backend import host
from ..errors import InputError


def random_crop(images, padding, rng):
    if padding < 0:
        raise InputError(f"crop padding must be >= 0, got {padding}")
    if padding == 0 or images.shape[0] == 0:
        return images
    n, _, h, w = images.shape
    padded = host.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    offsets = rng.integers(0, 2 * padding + 1, size=(n, 2))
    out = host.empty_like(images)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def random_flip(images, rng):
    flip = rng.random(images.shape[0]) < 0.5
    out = images.copy()
    out[flip] = images[flip][..., ::-1]
    return out


def augment(images, rng, crop_padding=0, flip=False):
    """The training batch as augmented: crop (when crop_padding > 0), then flip (when flip)."""
    out = random_crop(images, crop_padding, rng)
    return random_flip(out, rng) if flip else out
