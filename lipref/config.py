"""Options as data: a dataclass field that carries its help text, choices and range, so that
a command's defaults and choices are written once, in the library (lipref/commands/ reads them)."""
from dataclasses import field, fields

FLOAT_DTYPES = ("float32", "float64")


def setting(default, help, choices=None, minimum=None, maximum=None):
    """A dataclass field with `default` and, for the command line, its help, choices and range."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": minimum, "max": maximum})


def setting_of(cls, name):
    """The dataclass field `name` of config class `cls` (KeyError names it when absent)."""
    for f in fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}


def _of_kind(value, kind):
    """Whether `value` is a `kind` as a setting takes it (an int is a float; a bool is no number)."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def check_settings(config):
    """`config` (a dataclass of `setting` fields) once every setting holds a value of its type
    inside its choices and range (what click checks on the command line; a Python caller's
    values are checked here); InputError names the field and the value otherwise."""
    from .errors import InputError  # config.py stays free of lipref imports at module level
    for f in fields(config):
        if "help" not in f.metadata:
            continue  # a plain field, not a setting
        value, meta = getattr(config, f.name), f.metadata
        if value is None and f.default is None:
            continue  # an optional setting left unset
        kind = _KINDS.get(f.type, f.type)
        if not _of_kind(value, kind):
            raise InputError(f"{f.name} must be {_NAMES.get(kind, kind)}, got {value!r}")
        if meta["choices"] and value not in meta["choices"]:
            raise InputError(f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}")
        low, high = meta["min"], meta["max"]
        if (low is not None and not value >= low) or (high is not None and not value <= high):
            bounds = [f">= {low}"] * (low is not None) + [f"<= {high}"] * (high is not None)
            raise InputError(f"{f.name} must be {' and '.join(bounds)}, got {value!r}")
    return config
