"""Augmentation: every cropped image is a window of its zero-padded original, every flipped
one a mirror; offsets and flips are drawn per image from the given generator (replayable)."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipref.data.augment import augment, random_crop, random_flip


def _images(seed, n, c, h, w):
    return numpy.random.default_rng(seed).uniform(0.1, 1.0, (n, c, h, w)).astype(numpy.float32)


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 7),
       w=st.integers(1, 7), padding=st.integers(1, 4))
def test_each_crop_is_a_window_of_the_padded_image(seed, n, c, h, w, padding):
    images = _images(seed, n, c, h, w)
    out = random_crop(images, padding, numpy.random.default_rng(seed))
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = numpy.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    for i in range(n):
        windows = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if numpy.array_equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert windows, f"image {i} is no window of its padded original"


def test_crop_offsets_cover_every_shift_and_replay_from_the_seed():
    images = _images(0, 400, 1, 4, 4)
    a = random_crop(images, 2, numpy.random.default_rng(7))
    b = random_crop(images, 2, numpy.random.default_rng(7))
    assert numpy.array_equal(a, b)
    shifted = numpy.mean([not numpy.array_equal(a[i], images[i]) for i in range(400)])
    assert 0.8 < shifted < 1.0  # 24 of 25 offsets move the image
    assert numpy.array_equal(random_crop(images, 0, numpy.random.default_rng(7)), images)
    with pytest.raises(ValueError, match="padding"):
        random_crop(images, -1, numpy.random.default_rng(7))


def test_flip_mirrors_about_half_the_images_and_nothing_else():
    images = _images(1, 1000, 2, 3, 5)
    out = random_flip(images, numpy.random.default_rng(3))
    mirrored = numpy.array([numpy.array_equal(out[i], images[i, :, :, ::-1]) for i in range(1000)])
    kept = numpy.array([numpy.array_equal(out[i], images[i]) for i in range(1000)])
    assert numpy.all(mirrored | kept)
    assert 0.45 < mirrored.mean() < 0.55
    assert numpy.array_equal(images, _images(1, 1000, 2, 3, 5))  # the input is not changed


def test_no_augmentation_draws_nothing():
    rng = numpy.random.default_rng(5)
    images = _images(2, 3, 1, 4, 4)
    assert augment(images, rng) is images
    assert rng.integers(0, 2**62) == numpy.random.default_rng(5).integers(0, 2**62)
