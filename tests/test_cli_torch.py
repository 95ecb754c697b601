"""`lipref import-torch` and `lipref check` from the command line (needs torch)."""
import json

import numpy
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'lipref[torch]')")

from cli import main  # noqa: E402
from lipref.models import ARCHITECTURES  # noqa: E402
from lipref.reference.torch_reference import torch_sequential  # noqa: E402


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_import_then_check_passes_and_logits_match_torch(tmp_path):
    torch.manual_seed(0)
    net = torch_sequential(*ARCHITECTURES["2c2f"], (1, 28, 28), 10, "clipped_relu").float()
    ckpt = tmp_path / "official.pth"
    torch.save({"state_dict": net.state_dict()}, ckpt)
    out = tmp_path / "imported.npz"
    result = _run(["import-torch", str(ckpt), "--arch", "2c2f", "--input-shape", "1,28,28", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2c2f" in result.stdout and "clipped_relu" in result.stdout
    x = numpy.random.default_rng(0).uniform(0, 1, (3, 1, 28, 28)).astype(numpy.float32)
    import array_api_compat.numpy as xp

    from lipref.models import load_model
    model = load_model(out, xp, xp.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    numpy.testing.assert_allclose(numpy.asarray(model(xp.asarray(x), record=False)), expected, rtol=1e-5, atol=1e-5)
    check = _run(["check", str(out), "--limit", "3", "--iters", "20", "--eps", "0.2", "--json"])
    assert check.exit_code == 0, check.output
    doc = json.loads(check.stdout)
    assert doc["ok"] and doc["n"] == 3
    quantities = {r["quantity"] for r in doc["results"]}
    assert {"logits", "local bound", "global bound", "gloro loss"} <= quantities


def test_check_exits_1_when_a_quantity_differs(tmp_path, monkeypatch):
    import array_api_compat.numpy as xp

    import lipref.check as C
    from lipref.models import build_model, save_model
    path = tmp_path / "m.npz"
    save_model(path, build_model("mlp-8", (1, 28, 28), 10, xp, xp.float32, numpy.random.default_rng(0)))
    real = C.lipref_values

    def skewed(*args):  # lipref's logits off by 1e-3: the check must say so
        values = real(*args)
        values["logits"] = values["logits"] * (1 + 1e-3)
        return values
    monkeypatch.setattr(C, "lipref_values", skewed)
    result = _run(["check", str(path), "--limit", "2", "--iters", "5", "--eps", "0.1"])
    assert result.exit_code == 1 and "SOME QUANTITIES DIFFER" in result.stdout


def test_import_bad_keys_is_a_one_line_error(tmp_path):
    net = torch_sequential(*ARCHITECTURES["2c2f"], (1, 28, 28), 10, "relu")
    sd = net.state_dict()
    sd.pop("0.bias")
    sd["9.weight"] = torch.zeros(3, 3)
    ckpt = tmp_path / "bad.pth"
    torch.save(sd, ckpt)
    result = _run(["import-torch", str(ckpt), "--arch", "2c2f", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "0.bias" in line and "9.weight" in line
    assert not (tmp_path / "x.npz").exists()


def _hostile(sd, kind):
    """The state dict with one parameter made unusable: a value lipref must refuse."""
    sd = dict(sd)
    key = "5.weight"  # 2c2f on 1x28x28: the first linear layer
    w = sd[key]
    if kind == "complex":
        sd[key] = torch.complex(w, torch.full_like(w, 0.5))
    elif kind == "sparse":
        sd[key] = w.to_sparse()
    elif kind == "meta":
        sd[key] = torch.empty_like(w, device="meta")
    elif kind == "bool":
        sd[key] = w > 0
    elif kind == "nan":
        sd[key] = w.clone().index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(float("nan")))
    elif kind == "float8":
        sd[key] = w.to(torch.float8_e4m3fn)
    elif kind == "integers-beyond-2^53":
        sd[key] = torch.full(w.shape, 2 ** 53 + 1, dtype=torch.int64)
    return sd


@pytest.mark.parametrize("kind", ["complex", "sparse", "meta", "bool", "nan", "float8", "integers-beyond-2^53"])
def test_import_refuses_unusable_values_naming_the_key(tmp_path, kind):
    torch.manual_seed(0)
    net = torch_sequential(*ARCHITECTURES["2c2f"], (1, 28, 28), 10, "relu")
    ckpt = tmp_path / f"{kind}.pth"
    torch.save({"state_dict": _hostile(net.state_dict(), kind)}, ckpt)
    out = tmp_path / "x.npz"
    result = _run(["import-torch", str(ckpt), "--arch", "2c2f", "--input-shape", "1,28,28", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "5.weight" in lines[0], result.stderr
    assert str(ckpt) in lines[0]
    assert not out.exists()


def test_import_refuses_ambiguous_and_non_string_keys(tmp_path):
    from lipref.torch_import import TorchImportError, import_torch_checkpoint
    net = torch_sequential([], [4], (1, 3, 3), 3, "relu")
    sd = net.state_dict()
    both = dict(sd, **{"module.1.weight": sd["1.weight"] + 1})  # two tensors for "1.weight"
    torch.save(both, tmp_path / "both.pt")
    with pytest.raises(TorchImportError, match="1.weight"):
        import_torch_checkpoint(tmp_path / "both.pt", "mlp-4", (1, 3, 3), 3, "relu")
    torch.save({**sd, 7: torch.zeros(2)}, tmp_path / "int.pt")
    with pytest.raises(TorchImportError, match="7"):
        import_torch_checkpoint(tmp_path / "int.pt", "mlp-4", (1, 3, 3), 3, "relu")
    torch.save(sd, tmp_path / "ok.pt")
    for shape in ((0, 3, 3), (1, -3, 3)):
        with pytest.raises(TorchImportError, match="input shape"):
            import_torch_checkpoint(tmp_path / "ok.pt", "mlp-4", shape, 3, "relu")
    with pytest.raises(TorchImportError, match="number of classes"):
        import_torch_checkpoint(tmp_path / "ok.pt", "mlp-4", (1, 3, 3), 0, "relu")
    with pytest.raises(TorchImportError, match="stride"):
        import_torch_checkpoint(tmp_path / "ok.pt", "conv:4:3:0:1,fc:4", (1, 3, 3), 3, "relu")
    assert import_torch_checkpoint(tmp_path / "ok.pt", "mlp-4", (1, 3, 3), 3, "relu").n_classes == 3


def test_values_beyond_float32_in_a_float64_checkpoint_are_kept(tmp_path):
    """1e300 is a float64 number: the model is float64, imported as it is, and refused only
    where a float32 computation is asked for."""
    import array_api_compat.numpy as xp

    from lipref.models import ModelFileError, load_model
    net = torch_sequential(*ARCHITECTURES["2c2f"], (1, 28, 28), 10, "relu").double()
    with torch.no_grad():
        net[5].weight[0, 0] = 1e300
    torch.save({"state_dict": net.state_dict()}, tmp_path / "big.pth")
    result = _run(["import-torch", str(tmp_path / "big.pth"), "--out", str(tmp_path / "big.npz")])
    assert result.exit_code == 0 and "in float64" in result.stdout, result.output
    assert numpy.asarray(load_model(tmp_path / "big.npz", xp).parameters()["5.weight"].value)[0, 0] == 1e300
    with pytest.raises(ModelFileError, match="5.weight has values up to 1e.300, which exceed the range of float32"):
        load_model(tmp_path / "big.npz", xp, xp.float32)


@pytest.mark.parametrize("convs, widths, shape, arch", [([], [], (6,), "linear"), ([], [5, 4], (6,), "mlp-5-4"),
                                                      (*ARCHITECTURES["2c2f"], (1, 28, 28), "2c2f")])
def test_the_architecture_auto_prints_is_one_arch_accepts(tmp_path, convs, widths, shape, arch):
    import array_api_compat.numpy as xp

    from lipref.models import load_model
    torch.save({"state_dict": torch_sequential(convs, widths, shape, 10, "relu").state_dict()}, tmp_path / "c.pth")
    auto = _run(["import-torch", str(tmp_path / "c.pth"), "--out", str(tmp_path / "auto.npz")])
    assert auto.exit_code == 0 and f": {arch}, relu," in auto.stdout, auto.output
    named = _run(["import-torch", str(tmp_path / "c.pth"), "--arch", arch, "--out", str(tmp_path / "named.npz")])
    assert named.exit_code == 0, named.output
    a, b = load_model(tmp_path / "auto.npz", xp), load_model(tmp_path / "named.npz", xp)
    assert a.spec() == b.spec() and a.metadata == b.metadata
    for name, var in a.parameters().items():
        numpy.testing.assert_array_equal(numpy.asarray(var.value), numpy.asarray(b.parameters()[name].value))
