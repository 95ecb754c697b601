"""Layers as data: the registry, the declared fields, spec round trips, and loading a model
without drawing random weights."""
import array_api_compat.numpy as xp
import numpy
import pytest

from lipref import layers as L
from lipref.errors import InputError
from lipref.models import build_model, load_model, save_model

# one spec per registered type, in the form model files have always stored
SPECS = [
    {"type": "linear", "in_features": 9, "out_features": 3},
    {"type": "conv2d", "in_shape": [1, 8, 8], "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
    {"type": "relu", "shape": [4, 4, 4]},
    {"type": "clipped_relu", "shape": [6], "threshold_init": 0.5},
    {"type": "maxmin", "shape": [6, 2, 2], "threshold_init": 2.0},
    {"type": "flatten", "in_shape": [4, 2, 2]},
    {"type": "avgpool2d", "in_shape": [3, 6, 6], "kernel_size": 2, "stride": 2, "padding": 0},
]


def test_every_layer_type_is_registered_once_with_its_class():
    assert set(L.LAYER_TYPES) == {s["type"] for s in SPECS}
    for name, cls in L.LAYER_TYPES.items():
        assert cls.kind == name and issubclass(cls, L.Layer)
        assert all(isinstance(f, L.Field) for f in cls.FIELDS)


@pytest.mark.parametrize("spec", SPECS, ids=[s["type"] for s in SPECS])
def test_spec_round_trip_is_the_stored_format(spec):
    layer = L.layer_from_spec(spec)
    assert type(layer) is L.LAYER_TYPES[spec["type"]]
    assert layer.spec() == spec and list(layer.spec()) == list(spec)  # same keys, same order
    assert L.layer_from_spec(layer.spec()).spec() == spec


def test_threshold_defaults_to_one_when_absent():
    assert L.layer_from_spec({"type": "clipped_relu", "shape": [2]}).threshold_init == 1.0


@pytest.mark.parametrize("spec,fragment", [
    ({"type": "linear", "in_features": 9}, "linear: missing field 'out_features'"),
    ({"type": "conv2d", "in_shape": [1, 8], "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1},
     "conv2d field 'in_shape' must be 3 integers"),
    ({"type": "conv2d", "in_shape": [1, 8, 8], "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": -1},
     "conv2d field 'padding' must be an integer >= 0"),
    ({"type": "relu", "shape": [2, True]}, "relu field 'shape'[1] must be an integer >= 1"),
    ({"type": "maxmin", "shape": [4], "threshold_init": "1"}, "maxmin field 'threshold_init' must be a finite"),
    ({"type": "clipped_relu", "shape": [4], "threshold_init": 10 ** 400}, "must be a finite number"),
    ({"type": "maxmin", "shape": [3]}, "even number of channels"),
    ({"type": ["linear"]}, "unknown layer type"),
    ({"type": "dense"}, "unknown layer type 'dense'"),
    ("linear", "not a JSON object"),
])
def test_bad_specs_name_the_field(spec, fragment):
    with pytest.raises(InputError) as info:
        L.layer_from_spec(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", L.ACTIVATIONS)
def test_activation_layer_builds_the_registered_class(name):
    layer = L.activation_layer(name, (4, 2), 0.25)
    assert type(layer) is L.LAYER_TYPES[name] and layer.out_shape == (4, 2)
    assert getattr(layer, "threshold_init", 0.25) == 0.25
    with pytest.raises(InputError, match="unknown activation"):
        L.activation_layer("tanh", (4,))


def test_load_parameters_checks_shapes_and_wraps_the_given_arrays():
    model = L.Sequential([L.Flatten((1, 2, 2)), L.Linear(4, 3)])
    weight, bias = xp.reshape(xp.arange(12.0), (3, 4)), xp.ones(3)
    model.load_parameters({"1.weight": weight, "1.bias": bias})
    assert model.parameters()["1.weight"].value is weight and model.parameters()["1.bias"].value is bias
    with pytest.raises(ValueError, match="1.weight|weight"):
        model.load_parameters({"1.weight": xp.ones((4, 3)), "1.bias": bias})


@pytest.mark.parametrize("activation", L.ACTIVATIONS)
def test_loading_a_model_draws_no_random_numbers(tmp_path, monkeypatch, activation):
    model = build_model("2c2f", (2, 8, 8), 3, xp, xp.float64, numpy.random.default_rng(1), activation, 0.75)
    save_model(tmp_path / "m.npz", model)

    def no_random(*args, **kwargs):
        raise AssertionError("loading a model drew random numbers")
    monkeypatch.setattr(numpy.random, "default_rng", no_random)
    for cls in L.LAYER_TYPES.values():
        monkeypatch.setattr(cls, "init_params", no_random)
    loaded = load_model(tmp_path / "m.npz", xp, xp.float64)
    assert loaded.spec() == model.spec()
    for name, var in model.parameters().items():
        assert numpy.array_equal(loaded.parameters()[name].value, var.value)
