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
