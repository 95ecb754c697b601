"""The kernels package (lipref/kernels/__init__.py): importing it registers every kernel
module's kernels, in a fresh interpreter, so no kernel depends on some other import to
run. (kernels/ball_box.py was once left out of the import list: its sorted-breakpoint
multiplier never ran, and training bisected 200 steps per call instead.)"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "lipref" / "kernels"

PROBE = ("import json, lipref.kernels as k; "
         "print(json.dumps(sorted({x.module for found in k.registered().values() for x in found})))")


def test_importing_the_package_registers_every_kernel_module():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT)
    registered = set(json.loads(out.stdout))
    registering = {f"lipref.kernels.{path.stem}" for path in KERNELS.glob("*.py")
                   if path.name != "registry.py" and "@register(" in path.read_text()}
    assert registering, "no kernel module found"
    assert registering <= registered, f"registered by nothing on import: {sorted(registering - registered)}"
