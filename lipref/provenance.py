"""Where a result comes from: lipref's version, the command line, the installed extras and
the kernels in use. Every JSON output, `history.json`, a model file's metadata and `lipref
info` carry `provenance()`, so that a number can be traced to the code that printed it."""
import importlib.metadata
import importlib.util
import platform
import shlex
import sys
from pathlib import Path

from . import __version__

# extra name (pyproject.toml) -> the module whose presence says it is installed
EXTRAS = {"torch": "torch", "onnx": "onnx", "plot": "matplotlib", "distributed": "distributed",
          "cuda": "cupy", "images": "PIL"}
_DISTRIBUTIONS = {"PIL": "pillow"}  # module -> distribution, where the names differ


def command_line(argv=None):
    """The command line as a shell would read it back, the program named by its file name
    (`lipref certify ...`), or None when there is none (an interactive session)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0]:
        return None
    return shlex.join([Path(argv[0]).name] + argv[1:])


def installed_extras():
    """{extra: the version of its module, or None when it is not installed}. Asks the
    import system where the module would come from; nothing is imported."""
    found = {}
    for extra, module in EXTRAS.items():
        if importlib.util.find_spec(module) is None:
            found[extra] = None
            continue
        try:
            found[extra] = importlib.metadata.version(_DISTRIBUTIONS.get(module, module))
        except importlib.metadata.PackageNotFoundError:
            found[extra] = "installed"
    return found


def kernels_in_use(reference=False):
    """{"enabled": do kernels run (False under `reference_only()`, with LIPREF_REFERENCE=1, or
    when `reference` says the run was inside reference_only()), "registered": {name: [kernel
    module, ...]}}: the fast paths this process may take (each applies only where its
    arguments fit, e.g. NumPy arrays)."""
    from . import kernels  # importing the package registers every kernel
    return {"enabled": kernels.enabled() and not reference,
            "registered": {name: [k.module for k in found] for name, found in sorted(kernels.registered().items())}}


def provenance(argv=None, reference=False):
    """What produced a result: {"lipref_version", "command_line", "python", "numpy",
    "extras", "kernels"} (JSON-ready). reference: see `kernels_in_use`."""
    from .backend import host
    return {"lipref_version": __version__, "command_line": command_line(argv),
            "python": platform.python_version(), "numpy": host.__version__,
            "extras": installed_extras(), "kernels": kernels_in_use(reference)}
