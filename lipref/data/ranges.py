"""The range a model's inputs come from, and whether a dataset's images fit it.

A model trained on pixels k/255 in [0, 1] and given 8-bit pixels 0..255 is certified on
inputs it never saw: a clean accuracy near 0, and radii that mean nothing, with no word.
`expected_range` reads the range from the model's metadata (`input_range`, or a named
dataset it was trained on, whose pixels are in [0, 1]); `inputs.resolve_domain` refuses data
outside it and warns (`RangeWarning`) where the model says nothing and the images look like
raw pixels (`looks_like_pixels`)."""
import math

from ..backend import host
from .registry import DATASETS

UNIT_RANGE = (0.0, 1.0)  # every named dataset's pixels, k/255


class RangeWarning(UserWarning):
    """Data that lipref uses as given but that look like the wrong range for the model
    (the CLI prints it as one line on stderr)."""


def _recorded_range(value):
    """(lo, hi) from metadata's "input_range" [lo, hi], or None when it is not two finite
    numbers lo < hi (metadata is free-form: never fail on it; a single point would leave PGD
    no room to move)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    lo, hi = float(value[0]), float(value[1])
    return (lo, hi) if lo < hi else None


def _named_dataset(spec):
    """The named dataset a training-data record names ("fashion-mnist", "mnist:train"), or None."""
    if not isinstance(spec, str):
        return None
    name = spec.strip().partition(":")[0].lower()
    return name if name in DATASETS else None


def expected_range(metadata):
    """(lo, hi, why): the range the model's inputs come from, by its metadata: "input_range"
    [lo, hi] (the training data's range, recorded by whoever made the model), else [0, 1] for a
    model trained on a named dataset ("data": its name); None when the metadata do not say."""
    metadata = metadata if isinstance(metadata, dict) else {}
    recorded = _recorded_range(metadata.get("input_range"))
    if recorded is not None:
        return (*recorded, "the range recorded in the model file")
    training = metadata.get("training") if isinstance(metadata.get("training"), dict) else {}
    data = metadata.get("data") if isinstance(metadata.get("data"), dict) else {}
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    for spec in (metadata.get("data"), training.get("data"), train.get("resolved")):
        name = _named_dataset(spec)
        if name is not None:
            return (*UNIT_RANGE, f"the model was trained on {name}, whose pixels are k/255")
    return None


def image_range(images):
    """(min, max) of the images as Python floats ((0, 0) for no images)."""
    if images.size == 0:
        return (0.0, 0.0)
    return float(host.min(images)), float(host.max(images))


def inside(found, allowed):
    """Whether the range `found` (lo, hi) lies in `allowed` (lo, hi)."""
    return allowed[0] <= found[0] and found[1] <= allowed[1]


LARGEST_PIXEL = 2 ** 16 - 1  # 16-bit images


def looks_like_pixels(images):
    """True for whole-number images in 0..65535 that go above 1: 8- or 16-bit pixels as stored,
    not scaled."""
    if images.size == 0 or not 1.0 < float(host.max(images)) <= LARGEST_PIXEL or float(host.min(images)) < 0:
        return False
    return bool(host.all(host.floor(images) == images))


def range_text(found):
    return f"{found[0]:g}..{found[1]:g}"
