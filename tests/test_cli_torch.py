"""`lipref import-torch` and `lipref check` from the command line (needs torch)."""
import json

import numpy
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'lipref[torch]')")

from cli import main  # noqa: E402
from lipref.reference.torch_reference import torch_sequential  # noqa: E402
from lipref.models import ARCHITECTURES  # noqa: E402


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
    import lipref.check as C
    from lipref.models import build_model, save_model
    import array_api_compat.numpy as xp
    path = tmp_path / "m.npz"
    save_model(path, build_model("mlp-8", (1, 28, 28), 10, xp, xp.float32, numpy.random.default_rng(0)))
    real = C.lipref_values

    def skewed(*args):  # lipref's logits off by 1e-3: the check must say so
        values = real(*args)
        values["logits"] = values["logits"] * (1 + 1e-3)
        return values
    monkeypatch.setattr(C, "lipref_values", skewed)
    result = _run(["check", str(path), "--limit", "2", "--iters", "5"])
    assert result.exit_code == 1 and "SOME QUANTITIES DIFFER" in result.stdout


def test_import_bad_keys_is_a_one_line_error(tmp_path):
    net = torch_sequential(*ARCHITECTURES["2c2f"], (1, 28, 28), 10, "relu")
    sd = net.state_dict()
    sd.pop("0.bias")
    sd["9.weight"] = torch.zeros(3)
    ckpt = tmp_path / "bad.pth"
    torch.save(sd, ckpt)
    result = _run(["import-torch", str(ckpt), "--arch", "2c2f", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "0.bias" in line and "9.weight" in line
    assert not (tmp_path / "x.npz").exists()
