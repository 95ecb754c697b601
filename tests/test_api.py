"""The Python API (lipref/api.py, docs/api.md) against the command line it shares its code with:
`lipref.certify(...).summary()` is `lipref certify --json` less "model", "data" and
"provenance" (run as a user runs it, in a fresh process), `samples()` its --samples file;
`bounds`, `attack` and `train` likewise. Also: `from_torch` against torch and against the
checkpoint import, options checked as click checks them, the names `lipref.certify` & co.
kept as functions whatever is imported later, `import lipref` light, and every example of
docs/api.md run."""
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import array_api_compat.numpy as np_xp
import numpy
import pytest

import lipref
from lipref import outputs
from lipref.data import DataError
from lipref.errors import InputError, UserError
from lipref.models import build_model, load_model, save_model
from test_cli_json import lipref_command, strict_loads

ROOT = Path(__file__).resolve().parents[1]
ONLY_CLI = {"model", "data", "provenance"}  # what only a command line knows: the file, the spec, the process


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A float64 model (dense, 3 classes on 1x4x4 inputs), float64 data and data that float32
    holds exactly (pixels k/255 rounded to float32)."""
    folder = tmp_path_factory.mktemp("api")
    rng = numpy.random.default_rng(0)
    save_model(folder / "m64.npz", build_model("mlp-16", (1, 4, 4), 3, np_xp, np_xp.float64, rng))
    labels = rng.integers(0, 3, 24)
    numpy.savez(folder / "d64.npz", images=rng.random((24, 1, 4, 4)), labels=labels)
    pixels = (rng.integers(0, 256, (24, 1, 4, 4)) / 255).astype(numpy.float32)
    numpy.savez(folder / "d32.npz", images=pixels, labels=labels)
    return folder


def cli_json(args, samples=None):
    """The JSON a `lipref` command prints (a fresh process), and its --samples file's rows."""
    extra = ["--samples", str(samples)] if samples else []
    result = subprocess.run(lipref_command() + args + ["--json"] + extra, capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return strict_loads(result.stdout), (strict_loads(Path(samples).read_text())["samples"] if samples else None)


def as_json(obj):
    """`obj` as the CLI writes it (strict JSON: tuples as lists, infinities as strings)."""
    return strict_loads(outputs.dumps(obj))


def assert_same_but_what_only_the_cli_knows(cli, api_summary):
    api_summary = as_json(api_summary)
    assert set(cli) - set(api_summary) == ONLY_CLI and set(api_summary) <= set(cli)
    differing = {k: (cli[k], api_summary[k]) for k in api_summary if k != "seconds" and cli[k] != api_summary[k]}
    assert not differing  # "seconds": each run's own time


CERTIFY_CASES = [  # (CLI options, the same as API arguments, data file)
    (["--pgd-steps", "5"], {"pgd_steps": 5}, "d64"),
    (["--mode", "sound", "--seed", "7", "--pgd-steps", "3"], {"mode": "sound", "seed": 7, "pgd_steps": 3}, "d64"),
    (["--dtype", "float32", "--pgd-steps", "0", "--iters", "7", "--batch-size", "5"],
     {"dtype": "float32", "pgd_steps": 0, "n_iters": 7, "batch_size": 5}, "d32"),
    (["--domain", "none", "--pgd-restarts", "2", "--pgd-steps", "4"],
     {"domain": None, "pgd_restarts": 2, "pgd_steps": 4}, "d64"),
]


@pytest.mark.parametrize("cli_options, kwargs, data", CERTIFY_CASES)
def test_certify_summary_and_samples_are_the_cli_json_and_samples_file(files, tmp_path, cli_options, kwargs, data):
    model, data_file = str(files / "m64.npz"), str(files / f"{data}.npz")
    cli, cli_rows = cli_json(["certify", model, "--data", data_file, "--eps", "0.2", "--quiet", *cli_options],
                             tmp_path / "s.json")
    given = lipref.data.load_data(data_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = lipref.certify(lipref.load(model), given.images, given.labels, 0.2, **kwargs)
    assert_same_but_what_only_the_cli_knows(cli, result.summary())
    assert as_json(result.samples()) == cli_rows
    rounded = kwargs.get("dtype") == "float32"  # a float64 model certified in float32: said, and recorded
    assert cli["model_rounded"] is rounded and [w.category for w in caught] == [lipref.RoundingWarning] * rounded


def test_bounds_and_attack_are_the_cli_bound_and_attack(files):
    model, data_file = str(files / "m64.npz"), str(files / "d64.npz")
    given = lipref.data.load_data(data_file)
    for args, kwargs in ((["--iters", "9"], {"n_iters": 9}), (["--mode", "sound", "--seed", "3"],
                                                                {"mode": "sound", "seed": 3})):
        cli, _ = cli_json(["bound", model, "--data", data_file, "--eps", "0.3", *args])
        result = lipref.bound(lipref.load(model), given.images, given.labels, 0.3, **kwargs)
        assert_same_but_what_only_the_cli_knows(cli, result.summary())
        assert as_json(result.samples()) == cli["samples"]
    cli, _ = cli_json(["attack", model, "--data", data_file, "--eps", "0.5", "--steps", "4", "--restarts", "2",
                       "--batch-size", "7", "--seed", "11"])
    outcome = lipref.attack(lipref.load(model), given.images, given.labels, 0.5, steps=4, restarts=2, seed=11,
                            batch_size=7)
    assert_same_but_what_only_the_cli_knows(cli, outcome.summary())
    distances = numpy.linalg.norm((outcome.adversarial - given.images).reshape(24, -1), axis=1)
    assert outcome.broken.any() and numpy.all(distances <= 0.5)  # the attack found points, inside the ball


def test_train_is_the_cli_train(tmp_path):
    """The same run through `lipref train` and `lipref.train`: the same history and the same
    model, bit for bit."""
    options = {"arch": "mlp-8", "epochs": 2, "batch_size": 32, "n_iters": 1, "eval_iters": 2, "warmup": 0.0,
               "ramp": 1.0, "eval_limit": 16, "eps_train": 0.3}
    flags = ["--arch", "mlp-8", "--epochs", "2", "--batch-size", "32", "--iters", "1", "--eval-iters", "2",
             "--warmup", "0", "--ramp", "1", "--eval-limit", "16", "--eps", "0.3", "--limit", "64", "--quiet"]
    cli, _ = cli_json(["train", "--out", str(tmp_path / "cli"), *flags])
    history = lipref.train(lipref.TrainConfig(**options), "embedded", None, tmp_path / "api", limit=64)
    timeless = ("train_seconds", "eval_seconds")  # each run's own times
    assert [{k: v for k, v in e.items() if k not in timeless} for e in as_json(history)] == \
        [{k: v for k, v in e.items() if k not in timeless} for e in cli["history"]]
    ours, theirs = (load_model(tmp_path / run / "model.npz", np_xp) for run in ("api", "cli"))
    for name, value in ours.parameters().items():
        assert numpy.array_equal(value.value, theirs.parameters()[name].value), name


def test_certify_runs_on_every_backend_with_the_same_numbers(xp):
    """A model on the backend under test (NumPy, array-api-strict, CuPy) certified through the
    API: the certificates NumPy's run gives, the bounds to rounding."""
    rng = numpy.random.default_rng(1)
    images, labels = rng.random((12, 1, 3, 3)), rng.integers(0, 4, 12)
    results = []
    for namespace in (xp, np_xp):
        model = build_model("mlp-12", (1, 3, 3), 4, namespace, namespace.float64, numpy.random.default_rng(2))
        results.append(lipref.certify(model, images, labels, 0.1, seed=5, pgd_steps=2, n_iters=30))
    ours, reference = results
    for name in ("certified_local", "certified_global", "predictions", "pgd_broken"):
        assert numpy.array_equal(getattr(ours, name), getattr(reference, name)), name
    for name in ("local_bound", "global_bound", "radius_local"):
        numpy.testing.assert_allclose(getattr(ours, name), getattr(reference, name), rtol=1e-9)


def test_options_and_arrays_are_checked_in_one_line(files):
    model = lipref.load(files / "m64.npz")
    images, labels = numpy.random.default_rng(0).random((4, 1, 4, 4)), numpy.array([0, 1, 2, 0])
    bad = [({"n_iters": 0}, InputError, "n_iters must be >= 1, got 0"),
           ({"mode": "exact"}, InputError, "mode must be one of fast, sound, got 'exact'"),
           ({"batch_size": 2.5}, InputError, "batch_size must be an integer, got 2.5"),
           ({"domain": (0.2, 0.3)}, InputError, "the data lie outside the domain [0.2, 0.3]"),
           ({"eps": -1.0}, InputError, "eps must be finite and >= 0")]
    for kwargs, error, message in bad:
        arguments = {"eps": 0.1, **kwargs}
        with pytest.raises(error) as caught:
            lipref.certify(model, images, labels, arguments.pop("eps"), **arguments)
        assert message in str(caught.value) and isinstance(caught.value, UserError), kwargs
    with pytest.raises(TypeError, match="unknown options iters"):
        lipref.certify(model, images, labels, 0.1, iters=5)
    with pytest.raises(TypeError, match="unknown options pgd_steps"):
        lipref.bound(model, images, labels, 0.1, pgd_steps=5)
    nan = images.copy()
    nan[1, 0, 2, 3] = numpy.nan
    with pytest.raises(DataError, match=r"arrays: images contain NaN or inf \(first at index \(1, 0, 2, 3\)"):
        lipref.certify(model, nan, labels, 0.1)
    with pytest.raises(DataError, match="has label 7, the model has 3 classes"):
        lipref.attack(model, images, numpy.array([0, 1, 7, 0]), 0.1)
    with pytest.raises(DataError, match=r"images of shape \(1, 2, 4\), the model needs \(1, 4, 4\)"):
        lipref.bound(model, images[:, :, :2], labels, 0.1)
    with pytest.raises(TypeError, match="takes a TrainConfig"):
        lipref.train({"epochs": 1}, "embedded", None, files / "never")


# ----------------------------------------------------------------------------- from_torch

def test_from_torch_is_the_module_and_the_checkpoint_import(tmp_path):
    """A torch nn.Sequential in memory: the logits torch computes, and the model (layers and
    parameters, bit for bit) that importing its checkpoint with the same stack gives."""
    torch = pytest.importorskip("torch")
    from lipref.torch_import import import_torch_checkpoint
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=1, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = numpy.random.default_rng(0).random((5, 1, 8, 8))
    for dtype in (numpy.float32, numpy.float64):
        module = net if dtype == numpy.float32 else net.double()  # .double() converts in place: second
        model = lipref.from_torch(module, (1, 8, 8))
        assert model.precision == numpy.dtype(dtype).name
        with torch.no_grad():
            expected = module(torch.from_numpy(x.astype(dtype))).numpy()
        numpy.testing.assert_allclose(model(x.astype(dtype), record=False), expected,
                                      rtol=0, atol=1e-5 if dtype == numpy.float32 else 1e-13)
        torch.save({"state_dict": module.state_dict()}, tmp_path / "net.pth")
        imported = import_torch_checkpoint(tmp_path / "net.pth", "conv:4:3:1:1,avgpool:2:2:0,fc:8", (1, 8, 8), None,
                                           "relu")
        assert model.spec() == imported.spec()
        for name, value in imported.parameters().items():
            assert numpy.array_equal(model.parameters()[name].value, value.value), name


def test_from_torch_names_what_it_cannot_take():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    cases = [(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 2)),
              "BatchNorm2d at 1: in training mode (call module.eval() first)"),
             (nn.Sequential(nn.Flatten(), nn.LayerNorm(64), nn.Linear(64, 2)), "LayerNorm at 1: not a module lipref reads"),
             (nn.Sequential(nn.Conv2d(1, 2, (3, 5)), nn.Flatten(), nn.Linear(40, 2)), "Conv2d at 0: kernel (3, 5)"),
             (nn.Sequential(nn.Linear(64, 2)), "Linear at 0: in_features 64 for inputs (1, 8, 8)"),
             (nn.Sequential(nn.Flatten(), nn.Linear(64, 2), nn.ReLU()), "the last layer of a classifier must be Linear"),
             (nn.Linear(64, 2), "from_torch takes an nn.Sequential, got Linear")]
    for module, message in cases:
        with pytest.raises(UserError) as caught:
            lipref.from_torch(module, (1, 8, 8))
        assert message in str(caught.value)


# ------------------------------------------------------------------------------- the package

def test_import_is_light_and_the_api_names_survive_every_later_import():
    """In a fresh process: `import lipref` loads no torch, onnx, matplotlib, click or dask, and
    after every module of lipref has been imported, lipref.certify & co. are still the API's
    functions (a first import of a submodule binds its name in the package)."""
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        import lipref
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "onnx", "matplotlib", "click", "dask"})
        for found in pkgutil.walk_packages(lipref.__path__, "lipref."):
            if not found.name.startswith(("lipref.reference", "lipref.distributed.cluster")):  # need extras
                importlib.import_module(found.name)
        from lipref import api
        names = [n for n in ("load", "from_torch", "certify", "bound", "attack", "train")
                 if getattr(lipref, n) is not getattr(api, n)]
        import lipref.certification as c, lipref.training as t, lipref.pgd as p, lipref.bounds.walk as w
        assert all(type(m).__name__ == "module" for m in (c, t, p, w))  # modules, never an API function
        print(heavy, names)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]


def test_the_missing_dataset_error_names_a_function_and_a_command_that_exist(tmp_path):
    """The CIFAR-10 error told users to call lipref.data.download(...), which `import lipref`
    did not make reachable; each function and command a not-found error names exists."""
    from cli import main
    from lipref.data.registry import DATASETS, not_found
    message = str(not_found(DATASETS["cifar10"], [tmp_path], "cifar-10-batches-py/"))
    functions = re.findall(r"\b(lipref(?:\.\w+)+)\(", message)
    commands = re.findall(r"`lipref ((?:[a-z-]+ )+)[\w-]+`", message)
    assert functions and commands
    script = "import lipref\n" + "".join(f"assert callable({f})\n" for f in functions)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in commands:
        group = main
        for word in command.split():
            group = group.commands[word]


def test_every_example_of_docs_api_runs(tmp_path, monkeypatch):
    """docs/api.md's python blocks, executed in order in one namespace in an empty folder (their
    asserts check what the text says)."""
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    if any("import torch" in b for b in blocks) and importlib.util.find_spec("torch") is None:
        pytest.skip("docs/api.md's torch example needs the torch extra (pip install -e '.[torch]')")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_api"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)
    assert (tmp_path / "runs" / "api-mlp" / "best.npz").is_file()
