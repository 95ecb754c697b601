"""`import-torch` on checkpoints shaped exactly as the paper's official code writes them.

The official model definitions are rebuilt here in torch from the published facts
(github yjhuangcd/local-lipschitz, utils.py): nn.Sequential of Conv2d / Linear, the clipped
ReLU `ReLU_x` (threshold of shape [1, C, H, W] or [1, F], forward clamp(min(x, t), min=0)),
the clamped MaxMin `ClampGroupSort` (max and min of half the channels, [1, C/2, H, W] or
[1, F/2]), and a parameterless Flatten; saved as torch.save({'state_dict', 'err', 'epoch'}).
Each is imported with --arch auto and no input shape, its logits compared with the official
forward, and `lipref check` run on it. Parameters are drawn at random (thresholds around
their init, some negative), so the test covers what training can leave behind."""
import json
import re

import numpy
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'lipref[torch]')")

from official_models import MNIST_4C3F, OFFICIAL, official_model, randomised  # noqa: E402

from cli import main  # noqa: E402
from support import randomise_batchnorm  # noqa: E402


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _save_official(net, path):
    torch.save({"state_dict": net.state_dict(), "err": 0.25, "epoch": 7}, path)


@pytest.mark.parametrize("name, definition, kind, options, arch, activation", OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_official_checkpoints_import_with_their_logits_and_pass_check(tmp_path, name, definition, kind, options,
                                                                       arch, activation):
    import array_api_compat.numpy as xp

    from lipref.models import load_model
    net = randomised(official_model(definition, kind, **options), seed=len(name)).float().eval()
    ckpt, out = tmp_path / f"{name}.pth", tmp_path / f"{name}.npz"
    _save_official(net, ckpt)
    result = _run(["import-torch", str(ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load_model(out, xp, xp.float64)
    assert model.metadata["arch"] == arch and model.metadata["activation"] == activation
    assert tuple(model.input_shape) == definition[0] and model.n_classes == definition[3]
    x = numpy.random.default_rng(1).uniform(0, 1, (3,) + definition[0])
    with torch.no_grad():
        expected = net.double()(torch.from_numpy(x)).numpy()
    got = numpy.asarray(model(xp.asarray(x), record=False))
    scale = float(numpy.max(numpy.abs(expected)))
    numpy.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)  # parameters stored in float32
    data = tmp_path / "data.npz"
    numpy.savez(data, images=x.astype(numpy.float32), labels=numpy.array([0, 1, 2]))
    check = _run(["check", str(out), "--data", str(data), "--iters", "3", "--eps", "0.05", "--json"])
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout)["ok"]


def test_negative_thresholds_import_as_the_same_function(tmp_path):
    """ReLU_x with t < 0 outputs 0; lipref's min(max(x, 0), t) does the same once t is 0."""
    import array_api_compat.numpy as xp

    from lipref.models import load_model
    net = official_model(((4,), [], [6], 3), "relux").double()
    with torch.no_grad():
        net[1].threshold.copy_(torch.tensor([[-0.5, 0.3, -2.0, 1.0, -0.01, 0.7]]))
    ckpt, out = tmp_path / "neg.pth", tmp_path / "neg.npz"
    _save_official(net, ckpt)
    assert _run(["import-torch", str(ckpt), "--out", str(out)]).exit_code == 0
    model = load_model(out, xp, xp.float64)
    assert numpy.all(numpy.asarray(model.parameters()["1.threshold"].value) >= 0)
    x = numpy.random.default_rng(2).normal(0, 2, (50, 4))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    numpy.testing.assert_allclose(numpy.asarray(model(xp.asarray(x), record=False)), expected, rtol=1e-6, atol=1e-6)


def _official_4c3f_state(tmp_path):
    return official_model(MNIST_4C3F, "relux").state_dict()


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("13.bias"), "missing 13.bias"),
    (lambda s: s.__setitem__("14.weight", torch.zeros(3, 3)), "unexpected 14.weight"),
    (lambda s: s.__setitem__("1.threshold", torch.zeros(1, 32, 27, 28)), "wrong shape 1.threshold"),
    (lambda s: s.__setitem__("0.weight", torch.zeros(32, 1, 5, 5)), "wrong shape 0.weight"),
])
def test_wrong_or_partial_official_checkpoints_are_one_line_errors(tmp_path, change, message):
    state = _official_4c3f_state(tmp_path)
    change(state)
    ckpt = tmp_path / "bad.pth"
    torch.save({"state_dict": state, "err": 0.0, "epoch": 1}, ckpt)
    for args in (["--arch", "4c3f"], []):
        result = CliRunner().invoke(main, ["import-torch", str(ckpt), "--out", str(tmp_path / "m.npz")] + args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.strip().splitlines() if line]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output


def test_an_input_shape_that_cannot_be_inferred_is_an_error_naming_the_file(tmp_path):
    state = official_model(MNIST_4C3F, "relux").state_dict()
    state.pop("0.weight")
    ckpt = tmp_path / "no-first-weight.pth"
    torch.save({"state_dict": state}, ckpt)
    for args in (["--arch", "4c3f"], []):
        result = CliRunner().invoke(main, ["import-torch", str(ckpt), "--out", str(tmp_path / "m.npz")] + args)
        lines = [line for line in result.output.strip().splitlines() if line]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "no-first-weight.pth: cannot infer the input shape" in lines[0], result.output


# ---------------------------------------------------------------- the checkpoint's precision

def _rounding_sensitive_checkpoint(path, seed):
    """nn.Sequential(Linear(5, 8), ReLU, Linear(8, 3)).double() with rounding_models' weights."""
    from rounding_models import rounding_sensitive_weights
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        for param, value in zip(net.parameters(), rounding_sensitive_weights(seed)):
            param.copy_(torch.from_numpy(value))
    torch.save({"state_dict": net.state_dict()}, path)
    return net


@pytest.mark.parametrize("seed", range(3))
def test_float64_checkpoints_are_never_certified_beyond_a_counterexample_of_the_checkpoint(tmp_path, xp, seed):
    from rounding_models import nearest_counterexample

    from lipref.certification import CertifyConfig, certify
    from lipref.importing import load_any_model
    net = _rounding_sensitive_checkpoint(tmp_path / "double.pth", seed)

    def logits(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()
    x = numpy.zeros((1, 5))
    assert numpy.argmax(logits(x)) == 0
    found = nearest_counterexample(logits, x, 0, numpy.random.default_rng(seed))
    assert numpy.argmax(logits(found)) != 0  # the checkpoint's own model, in float64
    model = load_any_model(tmp_path / "double.pth", xp, xp.float64)
    result = certify(model, x, numpy.array([0]), float(numpy.linalg.norm(found - x)) * 1.001, CertifyConfig(mode="sound", n_iters=10, pgd_steps=0), seed=seed)
    assert not result.certified_local[0] and not result.certified_global[0]


def test_a_float64_checkpoint_stays_float64_in_the_npz_and_in_fast_mode(tmp_path, xp):
    """import-torch writes float64; certify computes in float64 (auto), or says that --dtype
    float32 certifies the rounded model."""
    import array_api_compat.numpy as host_xp

    from lipref.models import load_model
    net = _rounding_sensitive_checkpoint(tmp_path / "double.pth", 0)
    out, data = tmp_path / "double.npz", tmp_path / "data.npz"
    result = _run(["import-torch", str(tmp_path / "double.pth"), "--out", str(out)])
    assert result.exit_code == 0 and "mlp-8" in result.stdout and "in float64" in result.stdout, result.output
    loaded = load_model(out, xp)
    assert loaded.precision == "float64" and "2.weight" in load_model(out, host_xp, host_xp.float32).rounded
    for (name, var), param in zip(loaded.parameters().items(), net.parameters()):
        numpy.testing.assert_array_equal(numpy.asarray(var.value), param.detach().numpy(), err_msg=name)
    numpy.savez(data, images=numpy.zeros((2, 5)), labels=numpy.array([0, 0]))
    common = ["certify", str(out), "--data", str(data), "--eps", "1", "--pgd-steps", "0", "--quiet", "--json"]
    auto = _run(common)
    assert auto.exit_code == 0 and auto.stderr == "", auto.output
    assert json.loads(auto.stdout)["dtype"] == "float64" and json.loads(auto.stdout)["model_rounded"] is False
    rounded = _run(common + ["--dtype", "float32"])
    lines = rounded.stderr.strip().splitlines()
    assert json.loads(rounded.stdout)["model_rounded"] is True and len(lines) == 1 and "2.weight" in lines[0]


def test_half_precision_widens_exactly_to_float32_and_a_mixed_checkpoint_to_float64(tmp_path):
    from lipref.torch_import import import_torch_checkpoint
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    state = {"0.weight": net[0].weight.detach().bfloat16(), "0.bias": net[0].bias.detach().half(),
             "2.weight": net[2].weight.detach(), "2.bias": net[2].bias.detach()}
    torch.save(state, tmp_path / "half.pt")
    model = import_torch_checkpoint(tmp_path / "half.pt", "auto", None, None, "auto")
    assert model.precision == "float32" and model.metadata["arch"] == "mlp-6"
    for name, tensor in state.items():
        numpy.testing.assert_array_equal(numpy.asarray(model.parameters()[name].value), tensor.float().numpy())
    state["2.bias"] = state["2.bias"].double() + 2.0 ** -40  # not a float32 number
    torch.save(state, tmp_path / "mixed.pt")
    mixed = import_torch_checkpoint(tmp_path / "mixed.pt", "auto", None, None, "auto")
    assert mixed.precision == "float64"
    for name, tensor in state.items():
        numpy.testing.assert_array_equal(numpy.asarray(mixed.parameters()[name].value), tensor.double().numpy())


# ---------------------------------------------------------------- BatchNorm, and modules lipref does not read

def _with_batchnorm(seed=4):
    """2c2f's layout (conv 16 k4 s2 p1, conv 32 k4 s2 p1, fc 100) on 1x28x28 with a BatchNorm2d
    after each conv (the first without bias) and a BatchNorm1d after the fc, statistics drawn."""
    nn = torch.nn
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32 * 7 * 7, 100), nn.BatchNorm1d(100), nn.ReLU(), nn.Linear(100, 10))
    randomise_batchnorm(net, 0.2, 3.0)
    return net.eval()


def _assert_same_function(model, net, shape, rtol=1e-12):
    x = numpy.random.default_rng(0).uniform(0, 1, (4, *shape))
    with torch.no_grad():
        expected = net.double()(torch.from_numpy(x)).numpy()
    net.float()
    import array_api_compat.numpy as xp
    got = numpy.asarray(model(xp.asarray(x), record=False))
    numpy.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * numpy.abs(expected).max())


def test_a_checkpoint_with_batchnorm_folds_it_into_the_layer_before_and_computes_the_same_function(tmp_path):
    from lipref.torch_import import import_torch_checkpoint
    net = _with_batchnorm()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "bn.pth")
    with pytest.warns(UserWarning, match="BatchNorm2d at 1 folded into layer 0 in float64"):
        model = import_torch_checkpoint(tmp_path / "bn.pth", "auto", None, None, "auto")
    assert model.metadata["arch"] == "2c2f" and model.precision == "float64"
    assert [(f["from"], f["into_layer"]) for f in model.metadata["folds"]] == \
        [("BatchNorm2d at 1", 0), ("BatchNorm2d at 4", 2), ("BatchNorm1d at 8", 5)]
    assert all(0 < f["max_weight_error"] < 1e-14 for f in model.metadata["folds"])
    _assert_same_function(model, net, (1, 28, 28))  # float32 parameters, folded in float64


def test_a_dense_checkpoint_with_batchnorm_certifies_in_fast_and_sound_mode(tmp_path):
    nn = torch.nn
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "mlp.pth")
    x = numpy.random.default_rng(3).uniform(0, 1, (8, 6)).astype(numpy.float32)
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    numpy.savez(tmp_path / "data.npz", images=x, labels=labels)
    for mode in ("fast", "sound"):
        result = _run(["certify", str(tmp_path / "mlp.pth"), "--data", str(tmp_path / "data.npz"), "--eps", "0.05",
                       "--mode", mode, "--pgd-steps", "3", "--seed", "0", "--json", "--quiet"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["clean_accuracy"] == 1.0 and summary["soundness_violations"] == []
        assert summary["certified_accuracy_local"] > 0
        assert "BatchNorm1d at 1 folded into layer 0 in float64" in result.stderr


def test_a_checkpoint_batchnorm_eps_is_said_and_can_be_given(tmp_path):
    """A state dict does not hold eps: 1e-5 is taken and said; --batchnorm-eps gives the model's."""
    nn = torch.nn
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, eps=1e-2), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].running_var.uniform_(0.01, 0.02)  # var near eps: the eps matters
    torch.save(net.eval().state_dict(), tmp_path / "eps.pth")
    for eps, same in ((None, False), (1e-2, True)):
        args = ["import-torch", str(tmp_path / "eps.pth"), "--out", str(tmp_path / "eps.npz")]
        result = _run(args + ([] if eps is None else ["--batchnorm-eps", str(eps)]))
        assert result.exit_code == 0, result.output
        assert f"BatchNorm eps {eps or 1e-5:g} taken (a state dict does not hold it" in result.stderr
        import array_api_compat.numpy as xp

        from lipref.models import load_model
        model = load_model(tmp_path / "eps.npz", xp)
        x = numpy.random.default_rng(0).normal(size=(5, 3))
        with torch.no_grad():
            expected = net.double()(torch.from_numpy(x)).numpy()
        net.float()
        close = numpy.allclose(numpy.asarray(model(xp.asarray(x), record=False)), expected, rtol=1e-9, atol=1e-9)
        assert close == same


@pytest.mark.parametrize("modules, message", [
    (lambda nn: [nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)],
     "module at 1 (bias (8,), weight (8,)): a normalisation without running statistics (LayerNorm"),
    (lambda nn: [nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3)],
     "BatchNorm at 2: lipref folds a BatchNorm into the conv or linear module right before it, and module 1 is a "
     "module without parameters"),
    (lambda nn: [nn.Linear(4, 8), nn.PReLU(8), nn.Linear(8, 3)],
     "module at 1 (weight (8,)): a per-feature weight (PReLU?)"),
])
def test_a_checkpoint_with_modules_lipref_does_not_read_names_them(tmp_path, modules, message):
    torch.save(torch.nn.Sequential(*modules(torch.nn)).state_dict(), tmp_path / "other.pth")
    result = _run(["import-torch", str(tmp_path / "other.pth"), "--out", str(tmp_path / "m.npz")])
    lines = [line for line in result.output.strip().splitlines() if line]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


# ---------------------------------------------------------------- an nn.Sequential in memory

def test_from_torch_reads_an_nn_sequential_with_its_exact_values_and_folds_batchnorm():
    from official_models import ClampGroupSort, Flatten, ReLUx

    from lipref.torch_import import from_torch_module
    nn = torch.nn
    net = _with_batchnorm()
    inner = nn.Sequential(nn.Conv2d(2, 4, 3, padding="same"), ReLUx(torch.Size([1, 4, 6, 6])), nn.AvgPool2d(2),
                          Flatten(), nn.Dropout(0.5),
                          nn.Sequential(nn.Linear(36, 8), ClampGroupSort(torch.Size([1, 4]), 0.5, -0.5)),
                          nn.Identity(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        inner[1].threshold.uniform_(-0.2, 1.0)  # some negative: raised to 0, the same function
    with pytest.warns(UserWarning, match="BatchNorm1d at 8 folded into layer 5"):
        model = from_torch_module(net, (1, 28, 28))
    assert [f["from"] for f in model.metadata["folds"]] == ["BatchNorm2d at 1", "BatchNorm2d at 4", "BatchNorm1d at 8"]
    _assert_same_function(model, net, (1, 28, 28))
    small = from_torch_module(inner, (2, 6, 6))
    assert [type(layer).__name__ for layer in small.layers] == ["Conv2d", "ClippedReLU", "AvgPool2d", "Flatten",
                                                                "Linear", "ClampedMaxMin", "Linear"]
    assert small.precision == "float32" and "folds" not in small.metadata
    numpy.testing.assert_array_equal(numpy.asarray(small.parameters()["0.weight"].value), inner[0].weight.detach())
    _assert_same_function(small, inner, (2, 6, 6))


@pytest.mark.parametrize("make, shape, message", [
    (lambda nn: nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 3)), (4,), "Sigmoid at 1: not a module"),
    (lambda nn: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), (4,),
     "BatchNorm1d at 1: in training mode (call module.eval() first)"),
    (lambda nn: nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 3)).eval(), (2, 4, 4),
     "Conv2d at 0: groups 2"),
    (lambda nn: nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 3)).eval(), (4,), "Linear at 0: in_features 5"),
    (lambda nn: nn.Sequential(nn.Linear(4, 8), nn.ReLU()).eval(), (4,), "the last module must be the nn.Linear"),
    (lambda nn: nn.Linear(4, 3), (4,), "from_torch takes an nn.Sequential, got Linear"),
    (lambda nn: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval(), (4,),
     "BatchNorm1d at 2: lipref folds a BatchNorm into the Conv2d or Linear module right before it"),
])
def test_from_torch_names_what_it_does_not_read_with_its_index(make, shape, message):
    from lipref.torch_import import TorchImportError, from_torch_module
    with pytest.raises(TorchImportError, match=re.escape(message)) as info:
        from_torch_module(make(torch.nn), shape)
    assert "\n" not in str(info.value)
