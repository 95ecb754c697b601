"""Random draws per sample (lipref.backend's random streams): a sample's draws, and so its bounds and
certificates, do not depend on the batch it is computed in."""
import array_api_compat.numpy as xp
import numpy
import pytest

from lipref import data as D
from lipref.certification import CertifyConfig, bounds_per_sample, certification_arrays, certify
from lipref.errors import InputError
from lipref.models import build_model
from lipref.backend import STREAM_BOUNDS as BOUNDS, STREAM_PGD as PGD, SampleStreams, sample_streams

DISCRETE = ("labels", "predictions", "correct", "certified_global", "certified_local", "constant_fraction",
            "pgd_broken")


def test_a_sample_draws_the_same_in_any_batch():
    whole = sample_streams(3, 0, 10, BOUNDS).standard_normal((10, 2, 3))
    part = sample_streams(3, 4, 7, BOUNDS).standard_normal((3, 2, 3))
    assert numpy.array_equal(whole[4:7], part)
    assert not numpy.array_equal(sample_streams(3, 4, 7, PGD).standard_normal((3, 2, 3)), part)
    assert sample_streams(3, 0, 4, PGD).uniform(size=4).shape == (4,)
    with pytest.raises(ValueError):  # a draw that is not one row per sample
        sample_streams(3, 0, 4, BOUNDS).standard_normal((1, 2))


def test_a_negative_seed_is_an_input_error():
    with pytest.raises(InputError, match="seed"):
        SampleStreams(-1, [0], BOUNDS)


@pytest.fixture(scope="module")
def images():
    ds = D.load_data("embedded:test", None, 30, dtype="float64")
    return ds.images, ds.labels


@pytest.mark.parametrize("mode", ["fast", "sound"])
def test_certify_does_not_depend_on_the_batch_size(images, mode):
    """Batch size 7 against 100. Sound mode (float64): bit for bit. Fast mode (float32): the same
    certificates, predictions and masks, the bounds to float32 rounding: the draws are the same,
    but the engine's kernels pick their sums' order by the size of the block of samples
    (backend.sample_blocks, kernels/dense.py), which BLAS may round differently."""
    x, labels = images
    dtype = xp.float64 if mode == "sound" else xp.float32
    model = build_model("2c2f", (1, 28, 28), 10, xp, dtype, numpy.random.default_rng(0))
    x = x.astype(dtype)
    norms = CertifyConfig(mode=mode, n_iters=10, gram_limit=0).global_norms(model, 3)
    runs = [certification_arrays(certify(model, x, labels, 0.05, CertifyConfig(mode=mode, n_iters=10, batch_size=b, pgd_steps=3), seed=3, norms=norms)) for b in (7, 100)]
    small, large = runs
    for key in small:
        if mode == "sound" or key in DISCRETE:
            assert numpy.array_equal(small[key], large[key]), key
        else:
            numpy.testing.assert_allclose(small[key], large[key], rtol=1e-5, err_msg=key)
    rows = [bounds_per_sample(model, x, labels, 0.05, CertifyConfig(mode=mode, n_iters=10, batch_size=b), seed=3, norms=norms) for b in (7, 100)]
    if mode == "sound":
        assert rows[0] == rows[1]


def test_certify_still_takes_a_generator(images):
    """Callers that pass rng (lipref.training's evaluation) get a seed drawn from it."""
    x, labels = images
    model = build_model("2c2f", (1, 28, 28), 10, xp, xp.float32, numpy.random.default_rng(0))
    x = x.astype(numpy.float32)
    a, b = (certify(model, x, labels, 0.05, CertifyConfig(mode="fast", n_iters=5, batch_size=10, pgd_steps=0), rng=numpy.random.default_rng(1)) for _ in "ab")
    assert numpy.array_equal(a.local_bound, b.local_bound)
    with pytest.raises(InputError, match="seed"):
        certify(model, x, labels, 0.05, CertifyConfig(mode="fast", n_iters=5, pgd_steps=0))
