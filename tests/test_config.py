"""Options as data: each config field carries its help, choices and range, and the library's
functions and the CLI take their defaults from those fields."""
import inspect
from dataclasses import fields

import pytest

from lipref.pgd import AttackConfig, pgd_l2
from lipref.bounds import BOUNDS, MODES
from lipref.certification import CertifyConfig, bounds_per_sample, certify
from lipref.check import CheckConfig
from lipref.config import setting, setting_of
from lipref.layers import ACTIVATIONS
from lipref.losses import ROBUST_LOSSES
from lipref.training import TrainConfig


@pytest.mark.parametrize("cls", [TrainConfig, CertifyConfig, AttackConfig, CheckConfig])
def test_every_setting_has_help_and_a_default_inside_its_choices_and_range(cls):
    for f in fields(cls):
        if "help" not in f.metadata:
            continue  # a plain field, not a command-line option (e.g. TrainConfig.seed)
        meta = f.metadata
        assert meta["help"] and meta["help"].endswith((".", ")")), f.name
        if meta["choices"]:
            assert f.default in meta["choices"], f.name
        if f.default is not None and meta["min"] is not None:
            assert f.default >= meta["min"], f.name
        if f.default is not None and meta["max"] is not None:
            assert f.default <= meta["max"], f.name


def test_choices_are_the_library_constants():
    assert setting_of(TrainConfig, "bound").metadata["choices"] == BOUNDS
    assert setting_of(TrainConfig, "loss").metadata["choices"] == ROBUST_LOSSES
    assert setting_of(TrainConfig, "activation").metadata["choices"] == ACTIVATIONS
    assert setting_of(CertifyConfig, "mode").metadata["choices"] == MODES


def test_library_defaults_are_the_config_defaults():
    # the library's certify runs no attack unless asked (the CLI's --pgd-steps default is the config's)
    assert inspect.signature(certify).parameters["config"].default == CertifyConfig(pgd_steps=0)
    assert inspect.signature(bounds_per_sample).parameters["config"].default == CertifyConfig()
    params = inspect.signature(pgd_l2).parameters
    assert params["n_steps"].default == AttackConfig.steps and params["restarts"].default == AttackConfig.restarts


def test_setting_of_names_a_missing_field():
    assert setting(3, "Three.").default == 3
    with pytest.raises(KeyError, match="CertifyConfig has no setting 'nothing'"):
        setting_of(CertifyConfig, "nothing")
