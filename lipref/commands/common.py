"""What every command shares: the one-line error handler, tables, JSON, progress bars, and
click options read from the library's config dataclasses (defaults and help written once)."""
import dataclasses
import functools
import sys
import warnings
from dataclasses import dataclass

import click

from lipref import outputs
from lipref.backend import BACKENDS
from lipref.certification import CertifyConfig
from lipref.config import setting_of
from lipref.errors import UserError

EXIT_USAGE = 2
EXIT_UNSOUND = 3


def _unquoted(text):
    """`text` without the quotes a KeyError puts around its message (and only those)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _one_line(text):
    return " ".join(_unquoted(str(text)).split())


def _show_warning(default):
    """warnings.showwarning that prints lipref's own warnings (categories defined in lipref,
    e.g. data.ranges.RangeWarning) as one line 'Warning: ...' on stderr, others as Python does."""
    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0] == "lipref":
            click.echo(f"Warning: {_one_line(message)}", err=True)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def user_errors(fn):
    """Turn lipref's own errors (a UserError: something the user can fix) into one line on
    stderr and exit code 2, and its warnings into one line each. Anything else is a bug in
    lipref and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _show_warning(warnings.showwarning)
            try:
                return fn(*args, **kwargs)
            except UserError as exc:
                click.echo(f"Error: {_one_line(exc) or type(exc).__name__}", err=True)
                sys.exit(EXIT_USAGE)
    return wrapper


def positive_eps(ctx, param, value):
    # checked here rather than by click so that the error is our one line, exit code 2
    if value is not None and not 0 <= value < float("inf"):  # also rejects NaN
        click.echo(f"Error: {param.opts[0]} must be finite and >= 0, got {value}", err=True)
        sys.exit(EXIT_USAGE)
    return value


def format_table(rows, columns):
    """A plain-text table: columns is [(key, header, format)]."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit_json(obj):
    """Print the JSON object `obj` with its "provenance" (its "reference" key, where the
    command has --reference, says whether the kernels were off): strict JSON, infinities as
    "inf" / "-inf", a NaN an error (lipref.outputs)."""
    reference = isinstance(obj, dict) and obj.get("reference") is True
    click.echo(outputs.dumps(outputs.with_provenance(obj, reference), indent=2))


def progress_bar(total, label, enabled):
    """A click progress bar on stderr (a no-op context when disabled)."""
    return click.progressbar(length=total, label=label, file=sys.stderr if enabled else NullBar(), show_pos=True)


class NullBar:
    def write(self, s):
        pass

    def flush(self):
        pass

    def isatty(self):
        return False


def _python_type(annotation):
    return annotation if isinstance(annotation, type) else {"int": int, "float": float, "str": str,
                                                             "bool": bool}[annotation]


def setting_option(cls, name, flag=None, **overrides):
    """A click option for the field `name` of config class `cls`: its default, choices, range
    and help come from the field (written once, in the library); `flag` (default --field-name)
    and `overrides` (a callback, a command-specific help) from here."""
    f = setting_of(cls, name)
    meta, kind = f.metadata, _python_type(f.type)
    flag = flag or "--" + name.replace("_", "-")
    if kind is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=f.default,
                            help=f"{meta.get('help')} [default: {flag[2:] if f.default else '--no-' + flag[2:]}]",
                            **overrides)
    if meta.get("choices"):
        value_type = click.Choice(list(meta["choices"]))
    elif meta.get("min") is not None or meta.get("max") is not None:
        value_type = (click.IntRange if kind is int else click.FloatRange)(meta.get("min"), meta.get("max"))
    else:
        value_type = kind
    options = {"type": value_type, "default": f.default, "show_default": f.default is not None,
               "help": meta.get("help")}
    options.update(overrides)
    return click.option(flag, name, **options)


def settings_options(cls, *names, **per_name):
    """setting_option for each of `names`, with per_name[name] a dict of its overrides."""
    return [setting_option(cls, name, **per_name.get(name, {})) for name in names]


reference_option = click.option(
    "--reference", is_flag=True,
    help="Run everything on the plain definitions (lipref.kernels.reference_only(): no fast kernel). The "
         "numbers agree with the kernels' to rounding; slower. Recorded as \"reference\" in the JSON output.")

data_options = [
    click.option("--data", "data_spec", default="embedded:test", show_default=True,
                 help="Dataset: mnist, fashion-mnist, cifar10, tinyimagenet or embedded, with an optional "
                      ":train or :test split (the test split when none is given); or a .npz file with arrays 'images' "
                      "(N,C,H,W), or (N,D) for a model that reads vectors, and 'labels'."),
    click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                 help="Folder holding the dataset's files (default: the embedded slice, OS package folders, "
                      "~/.cache/lipref/<name>)."),
    click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N examples."),
]

gram_limit_option = setting_option(CertifyConfig, "gram_limit")

threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="Threads on the CPU: blocks of samples run in parallel (bounds, training steps, PGD; default: as "
         "many as NumPy's BLAS uses, the CPUs available unless OPENBLAS_NUM_THREADS says otherwise). The "
         "numbers do not depend on it.")

backend_option = click.option("--backend", type=click.Choice(list(BACKENDS)), default=BACKENDS[0], show_default=True,
                              help="Array backend (cupy needs a CUDA GPU).")


def seed_option(help):
    """--seed, with `help` saying which draws it seeds and its default (they differ by command)."""
    return click.option("--seed", type=int, default=None, help=help)


engine_options = [  # lipref train's
    backend_option,
    seed_option("Seed of every random draw of the run (initial weights, shuffling, augmentation, power-iteration "
                "starts). Default: 0."),
]

dtype_option = setting_option(CertifyConfig, "dtype")
domain_option = setting_option(CertifyConfig, "domain")

@dataclass(frozen=True)
class DataChoice:
    """--data, --data-dir and --limit: which examples a command reads."""
    spec: str
    folder: str = None
    limit: int = None


def data_choice(options):
    """The DataChoice of a command's --data, --data-dir and --limit (`data_options`)."""
    return take(options, DataChoice, spec="data_spec", folder="data_dir")


@dataclass(frozen=True)
class Engine:
    """--backend, --threads, --seed and --reference: where and how a command computes (no number
    depends on --threads)."""
    backend: str = "numpy"
    threads: int = None
    seed: int = None
    reference: bool = False


def take(options, cls, **renamed):
    """An instance of dataclass `cls` from the click options of its fields, removed from
    `options` (a command's **kwargs); renamed: {field: option name} where they differ."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: options.pop(renamed.get(name, name)) for name in names
                  if renamed.get(name, name) in options})


def apply_options(options):
    def decorator(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorator
