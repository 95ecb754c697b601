"""Masks (bounds/masks.py): neurons marked constant are constant on the ball."""
import numpy
from networks import drawn_inputs, small_model

from lipref.backend import to_host
from lipref.bounds import BoundOptions, GlobalNorms, global_norms, network_bounds


def test_masks_find_constant_neurons(xp):
    """The masks are not vacuous: at small eps most ReLUs that are off stay off."""
    model, rng = small_model("relu", False, xp, 3)
    res = network_bounds(model, xp.asarray(drawn_inputs(model, rng, 8)), 1e-3, BoundOptions("local", "fast", 20), rng=rng)
    assert float(numpy.mean(to_host(res.activations[0].constant_fraction))) > 0.2
