"""The shared batch loop: consecutive batches, moved to the backend, exact in the dtype."""
import array_api_compat.numpy as xp
import numpy
import pytest

from lipref.data import batches
from lipref.errors import InputError


def test_batches_cover_the_data_in_order():
    images = numpy.arange(7 * 2, dtype=numpy.float64).reshape(7, 1, 1, 2) / 8
    labels = numpy.arange(7) % 3
    got = list(batches(images, labels, 3, xp, xp.float32))
    assert [(s, e) for s, e, _, _ in got] == [(0, 3), (3, 6), (6, 7)]
    numpy.testing.assert_array_equal(numpy.concatenate([x for _, _, x, _ in got]), images)
    numpy.testing.assert_array_equal(numpy.concatenate([y for _, _, _, y in got]), labels)
    assert all(x.dtype == xp.float32 for _, _, x, _ in got)


@pytest.mark.parametrize("value", [0.1, 1e300])
def test_a_value_the_dtype_cannot_hold_names_its_sample(value):
    images = numpy.zeros((5, 1, 2, 2))
    images[3, 0, 1, 0] = value
    with pytest.raises(InputError, match="sample 3 has the value .*float32.* does not hold exactly"):
        list(batches(images, numpy.zeros(5, dtype=numpy.int64), 2, xp, xp.float32))
    assert len(list(batches(images, numpy.zeros(5, dtype=numpy.int64), 2, xp, xp.float64))) == 3
