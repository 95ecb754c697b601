"""The kernel registry (kernels/registry.py): plain definitions marked `@replaceable`, kernels
with the same signature beside them, one switch that turns every kernel off, and every
kernel with an equivalence test. What a real process registers is checked in a fresh
process of the installed CLI, not in this one (where import order could hide a module that
nothing imports)."""
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy

import lipref.training  # noqa: F401 (imports every module that defines a replaceable)
from lipref import kernels
from lipref.kernels import (
    KERNEL_MODULES,
    applying_kernel,
    enabled,
    reference_only,
    register,
    registered,
    replaceable,
    replaceables,
)

ROOT = Path(__file__).resolve().parents[1]

# every kernel name -> the test files that check its kernels against the plain definition
EQUIVALENCE_TESTS = {
    "conv2d": ("test_kernels_conv.py", "test_kernels_conv_winograd.py"),
    "conv2d_transpose": ("test_kernels_conv.py", "test_kernels_conv_winograd.py"),
    "conv2d_weight_grad": ("test_kernels_conv.py", "test_kernels_conv_winograd.py"),
    "matmul": "test_kernels_dense.py",
    "linear": "test_kernels_dense.py",
    "linear_input_grad": "test_kernels_dense.py",
    "norms": "test_kernels_norms.py",
    "power_iteration_vector": "test_kernels_norms.py",
    "masked_power_iteration": "test_kernels_conv_grid.py",
    "ball_box_multiplier": "test_ball_box.py",
}


def _installed_cli():
    return Path(sys.executable).parent / "lipref"


def test_every_kernel_has_an_equivalence_test():
    names = set(registered())
    assert names == set(EQUIVALENCE_TESTS), (
        f"kernels without a listed test: {sorted(names - set(EQUIVALENCE_TESTS))}; "
        f"listed but not registered: {sorted(set(EQUIVALENCE_TESTS) - names)}")
    for name, files in EQUIVALENCE_TESTS.items():
        files = (files,) if isinstance(files, str) else files
        text = "".join((ROOT / "tests" / f).read_text() for f in files)
        for kernel in registered()[name]:
            short = kernel.module.rsplit(".", 1)[-1]
            assert short in text, f"{files} never name kernels.{short} (kernel {name})"


def test_a_fresh_process_of_the_installed_cli_registers_exactly_these_kernels():
    """`lipref info --json` in a new process names the kernels that process registered:
    every kernel module runs in a real run, and each has its equivalence test."""
    out = subprocess.run([str(_installed_cli()), "info", "--json"], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "LIPREF_REFERENCE"})
    found = json.loads(out.stdout)["provenance"]["kernels"]["registered"]
    assert set(found) == set(EQUIVALENCE_TESTS)


def test_every_kernel_module_in_the_folder_is_listed_and_imported():
    folder = ROOT / "lipref" / "kernels"
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "registry"}
    assert set(KERNEL_MODULES) == modules
    code = "import sys, lipref.certification; from lipref.kernels import registry; " \
           "registry.load_kernels(); print(sorted(m for m in sys.modules if m.startswith('lipref.kernels.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    imported = {m.rsplit(".", 1)[-1] for m in eval(out.stdout)} - {"registry"}
    assert imported == modules


def test_every_kernel_replaces_a_replaceable_with_its_signature():
    """A kernel takes exactly the arguments of the plain function it replaces (names and
    order; a kernel may add trailing optional ones that tests use to pick a form)."""
    plain = replaceables()
    for name, found in registered().items():
        assert name in plain, f"kernel {name} replaces no @replaceable function"
        want = list(inspect.signature(plain[name].plain).parameters)
        for kernel in found:
            params = inspect.signature(kernel.fn).parameters
            got = list(params)[:len(want)]
            assert got == want, f"kernel {name} ({kernel.module}) takes {got}, the plain function {want}"
            extra = list(params.values())[len(want):]
            assert all(p.default is not inspect.Parameter.empty for p in extra), f"{name}: extra required arguments"


def test_no_dispatch_code_in_the_plain_definitions():
    """The plain definitions (primitives/, bounds/) hold no dispatch: no registry lookup, no
    kernel object threaded through; only the @replaceable mark."""
    for folder in ("primitives", "bounds"):
        for path in (ROOT / "lipref" / folder).glob("*.py"):
            text = path.read_text()
            assert not re.search(r"\bpick\(|_KERNELS|applying_kernel|registered\(", text), f"dispatch in {path}"


def test_reference_only_turns_every_kernel_off_and_nests():
    a = numpy.ones((2, 3))
    was = enabled()
    with reference_only():
        assert not enabled()
        assert all(applying_kernel(name, a, a.T) is None for name in registered())
        with reference_only():
            assert not enabled()
        assert not enabled()  # the inner exit does not switch the kernels back on
    assert enabled() == was


def test_a_replaceable_runs_its_kernel_where_it_applies_else_its_body(monkeypatch):
    monkeypatch.setattr(kernels.registry, "_KERNELS", {})
    calls = []

    @replaceable("demo")
    def demo(x):
        calls.append(("plain", x))
        return x

    @register("demo", applies=lambda x: x > 0)
    def fast(x):
        calls.append(("kernel", x))
        return x if x < 10 else NotImplemented  # declines after a look at the value
    for x in (1, -1, 20):
        assert demo(x) == x
    with reference_only():
        assert demo(2) == 2
    expected = [("kernel", 1), ("plain", -1), ("kernel", 20), ("plain", 20), ("plain", 2)] if enabled() else \
        [("plain", 1), ("plain", -1), ("plain", 20), ("plain", 2)]
    assert calls == expected
    assert demo.plain(5) == 5 and calls[-1] == ("plain", 5)


def test_the_environment_switch_starts_a_process_with_kernels_off():
    code = "from lipref.kernels import enabled; print(enabled())"
    env = dict(os.environ, LIPREF_REFERENCE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    env["LIPREF_REFERENCE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
