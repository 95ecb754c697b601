"""The kernel registry (kernels/registry.py): one switch turns every kernel off, and every
registered kernel has an equivalence test against its plain definition."""
import os
import subprocess
import sys
from pathlib import Path

import numpy

from lipref import kernels
from lipref.kernels import enabled, pick, reference_only, register, registered

ROOT = Path(__file__).resolve().parents[1]

# every kernel name -> the test file that checks it against the plain definition
EQUIVALENCE_TESTS = {
    "conv2d": "test_kernels_conv.py",
    "conv2d_transpose": "test_kernels_conv.py",
    "conv2d.vjp.w": "test_kernels_conv.py",
    "matmul": "test_kernels_dense.py",
    "linear": "test_kernels_dense.py",
    "linear.vjp.x": "test_kernels_dense.py",
    "norms": "test_kernels_norms.py",
    "masked_conv_operator": "test_kernels_conv_grid.py",
    "ball_box_multiplier": "test_ball_box.py",
}


def test_every_kernel_has_an_equivalence_test():
    names = set(registered())
    assert names == set(EQUIVALENCE_TESTS), (
        f"kernels without a listed test: {sorted(names - set(EQUIVALENCE_TESTS))}; "
        f"listed but not registered: {sorted(set(EQUIVALENCE_TESTS) - names)}")
    for name, test_file in EQUIVALENCE_TESTS.items():
        text = (ROOT / "tests" / test_file).read_text()
        for kernel in registered()[name]:
            short = kernel.module.rsplit(".", 1)[-1]
            assert short in text, f"{test_file} never names kernels.{short} (kernel {name})"


def test_reference_only_turns_every_kernel_off_and_nests():
    a = numpy.ones((2, 3))
    was = enabled()
    with reference_only():
        assert not enabled()
        assert all(pick(name, a, a.T) is None for name in registered())
        with reference_only():
            assert not enabled()
        assert not enabled()  # the inner exit does not switch the kernels back on
    assert enabled() == was


def test_a_kernel_applies_only_where_its_condition_holds(monkeypatch):
    monkeypatch.setattr(kernels.registry, "_KERNELS", {})
    calls = []

    @register("demo", applies=lambda x: x > 0)
    def demo(x):
        calls.append(x)
        return -x
    if enabled():
        assert pick("demo", 1) is demo and pick("demo", -1) is None
    with reference_only():
        assert pick("demo", 1) is None
    assert calls == []  # picking never runs the kernel


def test_the_environment_switch_starts_a_process_with_kernels_off():
    code = "from lipref.kernels import enabled; print(enabled())"
    env = dict(os.environ, LIPREF_REFERENCE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    env["LIPREF_REFERENCE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
