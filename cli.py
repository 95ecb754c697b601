"""The `lipref` command line: demo, train, certify, bound, attack, data, import-torch,
import-onnx, check, info, plot (each in lipref/commands/).

No math lives here: each command parses its options, calls the library, and prints a
table (or JSON with --json). Errors a user can fix (missing or corrupt files, shapes that do
not fit, bad values) print one line and exit with code 2; a soundness violation (a
certified sample broken by PGD) prints a loud error and exits with code 3.
"""
import click

from lipref.backend import keep_freed_memory
from lipref.commands.attack import attack
from lipref.commands.bound import bound
from lipref.commands.certify import certify
from lipref.commands.common import user_errors  # noqa: F401 (every command's error handler, for scripts)
from lipref.commands.demo import demo
from lipref.commands.files import check, data, import_onnx, import_torch, info
from lipref.commands.plot import plot
from lipref.commands.train import train


@click.group()
@click.version_option(package_name="lipref")
def main():
    """lipref: certified robustness through local Lipschitz bounds (Huang et al., NeurIPS 2021).

    Train a classifier whose predictions provably cannot change within an l2 ball, and
    certify it: `lipref train`, then `lipref certify` (`lipref demo` does both, twice, and compares)."""
    keep_freed_memory()  # a process setting (glibc), fewer page faults; see lipref/backend.py


for command in (demo, train, certify, bound, attack, data, import_torch, import_onnx, check, info, plot):
    main.add_command(command)


if __name__ == "__main__":
    main()
