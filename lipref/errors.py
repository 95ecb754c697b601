"""lipref's own error types: what a user can fix, as distinct from a bug in the engine.

The CLI turns a `UserError` (and only that) into one line on stderr and exit code 2; any
other exception is a bug inside lipref and keeps its traceback. Each class also derives
from the built-in type a Python caller would expect (ValueError, ImportError, ...), so
library users may catch either.
"""
import importlib


class UserError(Exception):
    """Something a user can fix: a file, a shape, a value or an option. The message names it."""


class InputError(UserError, ValueError):
    """A bad value, option or shape passed to lipref (eps, seed, data shape, ...)."""


class BoundsOverflowError(UserError, FloatingPointError):
    """Bounds that overflow the floating-point range (an eps too large for the dtype):
    a certificate built on them would say nothing, so lipref refuses instead."""


class MissingExtraError(UserError, ImportError):
    """An optional extra that a requested feature needs is not installed (the message says
    which `pip install 'lipref[...]'`)."""


def import_extra(module, message, error=MissingExtraError):
    """The optional `module`, imported; `error(message)` (a MissingExtraError naming the
    extra to install) when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(message) from None


class RunFolderError(UserError, OSError):
    """A run folder that does not fit the request: a run already there without --resume, or
    a file of the run missing."""


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN or inf (a learning rate or radius too large)."""
