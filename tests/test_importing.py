"""`lipref.importing`: certify, bound and check take a torch checkpoint directly (imported in
memory), with the same results as on the model imported to a file first."""
import json

import numpy
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'lipref[torch]')")

from official_models import MNIST_4C3F, official_model, randomised  # noqa: E402

from cli import main  # noqa: E402

SMALL = ((1, 28, 28), [(16, 4, 2, 1), (32, 4, 2, 1)], [100], 10)  # lipref's 2c2f in the official layout


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    net = randomised(official_model(SMALL, "relux"), seed=3).float()
    path = tmp_path_factory.mktemp("ckpt") / "official.pth"
    torch.save({"state_dict": net.state_dict(), "err": 0.1, "epoch": 2}, path)
    return path


def _without_paths(doc):
    return {k: v for k, v in doc.items() if k not in ("model", "seconds")}


@pytest.mark.parametrize("command, extra", [
    ("certify", ["--pgd-steps", "3", "--iters", "5"]),
    ("certify", ["--mode", "sound", "--seed", "4", "--pgd-steps", "0"]),
    ("bound", ["--iters", "5"]),
])
def test_a_checkpoint_gives_what_its_imported_file_gives(checkpoint, tmp_path, command, extra):
    imported = tmp_path / "m.npz"
    assert _run(["import-torch", str(checkpoint), "--out", str(imported)]).exit_code == 0
    common = ["--data", "embedded:test", "--limit", "12", "--eps", "0.3", "--json"] + extra
    direct = _run([command, str(checkpoint), *common] + (["--quiet"] if command == "certify" else []))
    via_file = _run([command, str(imported), *common] + (["--quiet"] if command == "certify" else []))
    assert direct.exit_code == 0 and via_file.exit_code == 0, direct.output + via_file.output
    assert _without_paths(json.loads(direct.stdout)) == _without_paths(json.loads(via_file.stdout))


def test_check_takes_a_checkpoint(checkpoint):
    result = _run(["check", str(checkpoint), "--limit", "3", "--iters", "3", "--eps", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"]


def test_a_checkpoint_that_fits_no_architecture_is_a_one_line_error(tmp_path):
    state = official_model(MNIST_4C3F, "relux").state_dict()
    state.pop("9.weight")
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": state}, path)
    result = CliRunner().invoke(main, ["certify", str(path), "--eps", "0.1", "--limit", "2", "--quiet"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "missing 9.weight" in lines[0], result.output


def test_the_imported_logits_are_the_checkpoints(checkpoint):
    import array_api_compat.numpy as xp

    from lipref.importing import load_any_model
    net = official_model(SMALL, "relux").double()
    net.load_state_dict({k: v.double() for k, v in torch.load(checkpoint)["state_dict"].items()})
    model = load_any_model(checkpoint, xp, xp.float64)
    x = numpy.random.default_rng(0).uniform(0, 1, (4, 1, 28, 28))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    numpy.testing.assert_allclose(numpy.asarray(model(xp.asarray(x), record=False)), expected, rtol=1e-6, atol=1e-6)
