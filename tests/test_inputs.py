"""lipref.inputs: the seed, dtype and PGD-domain policies of a run, and the model/data fit."""
from types import SimpleNamespace

import numpy
import pytest

from lipref.data import DataError
from lipref.errors import InputError
from lipref.inputs import check_fits, compute_dtype, resolve_domain, run_seed


def _data(images, labels=(0,)):
    images = numpy.asarray(images)
    return SimpleNamespace(images=images, labels=numpy.asarray(labels), input_shape=images.shape[1:])


def test_seeds_given_zero_in_fast_mode_fresh_in_sound_mode():
    assert run_seed("fast", 7) == 7 and run_seed("sound", 7) == 7 and run_seed("fast", None) == 0
    drawn = {run_seed("sound", None) for _ in range(4)}
    assert len(drawn) == 4 and all(0 <= s < 2 ** 63 for s in drawn)


def test_the_domain_holds_the_data_or_is_unbounded():
    assert resolve_domain("auto", _data(numpy.full((1, 2), 0.5))) == (0.0, 1.0)
    assert resolve_domain("auto", _data(numpy.full((1, 2), 5.0))) is None
    assert resolve_domain("none", _data(numpy.zeros((1, 2)))) is None
    assert resolve_domain("-1,2.5", _data(numpy.zeros((1, 2)))) == (-1.0, 2.5)
    for bad in ("1,1", "a,b", "1"):
        with pytest.raises(InputError, match="--domain"):
            resolve_domain(bad, _data(numpy.zeros((1, 2))))


def test_the_dtype_keeps_the_data_as_given():
    exact = _data(numpy.full((1, 2), 0.5))
    inexact = _data(numpy.full((1, 2), 2.0 ** 24 + 1))
    assert compute_dtype("fast", "auto", exact) == "float32"
    assert compute_dtype("fast", "auto", inexact) == "float64"
    assert compute_dtype("sound", "auto", exact) == "float64"
    with pytest.raises(InputError, match="cannot be sound"):
        compute_dtype("sound", "float32", exact)


def test_data_that_do_not_fit_the_model_are_an_error():
    model = SimpleNamespace(input_shape=(2,), n_classes=3)
    assert check_fits(model, _data(numpy.zeros((1, 2)), (2,)), "d").labels[0] == 2
    with pytest.raises(DataError, match="shape"):
        check_fits(model, _data(numpy.zeros((1, 3))), "d")
    with pytest.raises(DataError, match="label 3"):
        check_fits(model, _data(numpy.zeros((1, 2)), (3,)), "d")


def _model(*arrays):
    """A stand-in with the parameters `arrays` (host arrays) and no rounding."""
    return SimpleNamespace(parameters=lambda: {str(i): SimpleNamespace(value=a) for i, a in enumerate(arrays)},
                           rounded=(), precision="float64")


def test_the_dtype_keeps_the_model_as_given():
    exact = _data(numpy.full((1, 2), 0.5))
    float32_model = _model(numpy.ones(3, numpy.float32))
    largest = float(numpy.finfo(numpy.float32).max)
    float32_numbers = _model(numpy.array([0.5, 2.0 ** -149, -largest]))  # float64 values float32 holds
    float64_model = _model(numpy.ones(3, numpy.float32), numpy.array([1 + 2.0 ** -30]))
    beyond = _model(numpy.array([1e300]))
    tiny = _model(numpy.array([2.0 ** -160]))  # below float32's smallest subnormal: rounds to 0
    assert compute_dtype("fast", "auto", exact, float32_model) == "float32"
    assert compute_dtype("fast", "auto", exact, float32_numbers) == "float32"
    for model in (float64_model, beyond, tiny):
        assert compute_dtype("fast", "auto", exact, model) == "float64"
        assert compute_dtype("sound", "auto", exact, model) == "float64"
        assert compute_dtype("fast", "float32", exact, model) == "float32"  # asked for: said by rounding_note
    with pytest.raises(InputError, match="cannot be sound"):
        compute_dtype("sound", "float32", exact, float64_model)


def test_the_rounding_note_names_the_rounded_parameters():
    from lipref.inputs import rounding_note
    assert rounding_note(_model(numpy.ones(2)), "float32") is None
    model = SimpleNamespace(rounded=("0.weight", "0.bias", "2.weight", "2.bias"), precision="float64")
    note = rounding_note(model, "float32")
    assert "\n" not in note and "0.weight, 0.bias, 2.weight and 1 more" in note
    assert "the model certified is the rounded one, not the file's" in note
