"""The `lipref` command line: train, certify, bound, attack, data, info.

No math lives here: each command parses its options, calls the library, and prints a
table (or JSON with --json). Errors a user can fix (missing or corrupt files, shapes that do
not fit, bad values) print one line and exit with code 2; a soundness violation (a
certified sample broken by PGD) prints a loud error and exits with code 3.
"""
import contextlib
import functools
import json
import sys
import time

import click

from lipref import data as D
from lipref.attack import AttackConfig
from lipref.backend import BACKENDS, float_dtype, get_backend, host, keep_freed_memory, to_host
from lipref.certify import CertifyConfig
from lipref.check import CheckConfig
from lipref.config import setting_of
from lipref.errors import InputError, UserError
from lipref.inputs import data_for_model, load_model_and_data, load_model_file, resolve_domain, run_seed
from lipref.layers import ACTIVATIONS
from lipref.recipes import RECIPES, apply_recipe
from lipref.recipes import recipe as recipe_values
from lipref.train import TrainConfig

EXIT_USAGE = 2
EXIT_UNSOUND = 3


def _unquoted(text):
    """`text` without the quotes a KeyError puts around its message (and only those)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def user_errors(fn):
    """Turn lipref's own errors (a UserError: something the user can fix) into one line on
    stderr and exit code 2. Anything else is a bug in lipref and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            message = " ".join(_unquoted(str(exc)).split()) or type(exc).__name__
            click.echo(f"Error: {message}", err=True)
            sys.exit(EXIT_USAGE)
    return wrapper


def _positive_eps(ctx, param, value):
    # checked here rather than by click so that the error is our one line, exit code 2
    if value is not None and not 0 <= value < float("inf"):  # also rejects NaN
        click.echo(f"Error: {param.opts[0]} must be finite and >= 0, got {value}", err=True)
        sys.exit(EXIT_USAGE)
    return value


def _table(rows, columns):
    """A plain-text table: columns is [(key, header, format)]."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _emit_json(obj):
    click.echo(json.dumps(obj, indent=2, allow_nan=True))


def _progress(total, label, enabled):
    """A click progress bar on stderr (a no-op context when disabled)."""
    return click.progressbar(length=total, label=label, file=sys.stderr if enabled else _Null(), show_pos=True)


class _Null:
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


def _kernels(reference):
    """Inside: the plain definitions alone with --reference (lipref.kernels.reference_only), else
    the registered kernels."""
    from lipref.kernels import reference_only
    return reference_only() if reference else contextlib.nullcontext()


reference_option = click.option(
    "--reference", is_flag=True,
    help="Run everything on the plain definitions (lipref.kernels.reference_only(): no fast kernel). The "
         "numbers agree with the kernels' to rounding; slower. Recorded as \"reference\" in the JSON output.")

data_options = [
    click.option("--data", "data_spec", default="embedded:test", show_default=True,
                 help="Dataset: mnist, fashion-mnist, cifar10, tinyimagenet or embedded, with an optional "
                      ":train or :test split; or a .npz file with arrays 'images' (N,C,H,W) and 'labels'."),
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

engine_options = [
    click.option("--backend", type=click.Choice(list(BACKENDS)), default=BACKENDS[0], show_default=True,
                 help="Array backend (cupy needs a CUDA GPU)."),
    click.option("--seed", type=int, default=None,
                 help="Seed of every random draw (power-iteration and Lanczos starts, PGD starts, shuffling). "
                      "Default: 0, except in sound mode, where the starts come from fresh OS entropy (so that "
                      "a model cannot have been fitted to a public seed); the seed used is in the JSON output."),
]

dtype_option = setting_option(CertifyConfig, "dtype")
domain_option = setting_option(CertifyConfig, "domain")

SAME_ANSWERS = ("The results equal a single-process run's, bit for bit: every random draw comes from the seed and "
                "the sample's index, never from a shard or a worker.")
distributed_options = [
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="Cut the samples into shards computed by a Dask LocalCluster of N worker processes on this "
                      "machine, one thread each (pip install 'lipref[distributed]'). " + SAME_ANSWERS),
    click.option("--scheduler", default=None, metavar="ADDRESS",
                 help="Cut the samples into shards computed on the Dask cluster of the scheduler at ADDRESS "
                      "(tcp://host:8786); every worker must read MODEL at the same path. " + SAME_ANSWERS),
    click.option("--shard-size", type=click.IntRange(min=1), default=None,
                 help="Samples per shard, a multiple of --batch-size (default: one batch)."),
    click.option("--shards-dir", type=click.Path(file_okay=False), default=None,
                 help="Write each finished shard's results into this folder as it arrives (with a manifest of the "
                      "run), so that --resume can continue an interrupted run; without --workers or --scheduler "
                      "the shards run in this process."),
    click.option("--resume", is_flag=True,
                 help="Continue the run in --shards-dir: compute only the shards missing there (refused if the "
                      "folder was made with other options, model or data; the seed is the folder's)."),
]


def _sharding(workers, scheduler, shard_size, shards_dir, resume):
    """The run's lipref.distributed.Sharding, once its options fit together."""
    from lipref.distributed import Sharding
    if workers and scheduler:
        raise InputError("give --workers N (a cluster on this machine) or --scheduler ADDRESS, not both")
    if resume and not shards_dir:
        raise InputError("--resume continues the run in --shards-dir DIR: give the folder")
    return Sharding(scheduler, workers, shard_size, shards_dir, resume)


def _sharded_seed(mode, seed, sharding):
    """run_seed, except that a resumed run takes the seed its shard folder recorded."""
    from lipref.distributed import resumed_seed
    from lipref.seeds import check_seed
    if seed is None:
        seed = resumed_seed(sharding.folder, sharding.resume)
    return check_seed(run_seed(mode, seed))


@contextlib.contextmanager
def _shard_progress(total, label, enabled):
    """update(n) for one bar over a sharded run's samples: done / total, rate and time left."""
    started = time.perf_counter()
    with click.progressbar(length=total, label=label, file=sys.stderr if enabled else _Null(), show_pos=True,
                           show_eta=True, item_show_func=lambda text: text) as bar:
        def update(n):
            rate = (bar.pos + n) / max(time.perf_counter() - started, 1e-9)
            bar.update(n, f"{rate:.1f} samples/s")
        yield update


def _plan_shards(model_path, dataset, options, sharding):
    """The run's lipref.distributed.ShardPlan (None when not sharded)."""
    from lipref.distributed import plan_shards
    return plan_shards(model_path, dataset.images, dataset.labels, options, sharding) if sharding.requested else None


def _run_sharded(model_path, dataset, options, norms, sharding, plan, threads, label, quiet):
    """(the joined result, the JSON's "workers", "shards" and "shards_computed"): the run cut
    into shards (lipref.distributed, `plan` from plan_shards), computed where `sharding` says."""
    from lipref import distributed
    with _shard_progress(int(dataset.labels.shape[0]), label, not quiet) as progress:
        run = distributed.run_sharded(model_path, dataset.images, dataset.labels, options, norms, sharding,
                                      progress, threads, plan)
    return distributed.joined_shards(run, options), distributed.summary(run)


def apply_options(options):
    def decorator(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorator


@click.group()
@click.version_option(package_name="lipref")
def main():
    """lipref: certified robustness through local Lipschitz bounds (Huang et al., NeurIPS 2021).

    Train a classifier whose predictions provably cannot change within an l2 ball, and
    certify it: `lipref train`, then `lipref certify`."""
    keep_freed_memory()  # a process setting (glibc), fewer page faults; see lipref/backend.py


# ------------------------------------------------------------------------------------- train

@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: checkpoint.npz, best.npz, model.npz, history.json.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=None,
              help="The paper's setting for one model (lipref/recipes.py); printed when used. Options given "
                   "explicitly override it.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (same options).")
@click.option("--data", "data_spec", default="embedded:train", show_default=True,
              help="Training data (dataset[:split] or .npz), as for certify.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder with the data files.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Train on the first N examples only.")
@click.option("--eval-data", default=None,
              help="Data for the per-epoch certified accuracy (default: the training set's test split).")
@setting_option(TrainConfig, "eval_limit")
@apply_options(settings_options(
    TrainConfig, "arch", "activation", "threshold_init", "epochs", "batch_size", "eps_train", "eps_eval", "warmup",
    "ramp", "kappa_start", "kappa_end", "lr", "lr_end", "decay_start", "loss", "bound", "sparsity",
    "saturation_weight", "n_iters", "eval_iters", "crop_padding", "flip", "best_from", "layer_inits", "dtype",
    eps_train={"flag": "--eps", "callback": _positive_eps},
    eps_eval={"callback": _positive_eps}, n_iters={"flag": "--iters"}))
@threads_option
@apply_options(engine_options)
@reference_option
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@user_errors
def train(out_dir, recipe, resume, data_spec, data_dir, limit, eval_data, eval_limit, threads, reference, as_json,
          quiet, **options):
    """Train a certifiably robust classifier with the local (or global) Lipschitz bound."""
    from lipref.train import train as run_training
    if recipe is not None:
        options["data_spec"] = data_spec
        options = _with_recipe(recipe, options)
        data_spec = options.pop("data_spec")
    options["seed"] = run_seed("fast", options["seed"])
    config = TrainConfig(eval_limit=eval_limit, **options)
    train_set = D.load_data(data_spec, data_dir, limit)
    eval_spec = eval_data or (f"{train_set.name}:test" if train_set.split != "file" else data_spec)
    eval_set = D.load_data(eval_spec, data_dir, eval_limit)
    reporter = _TrainProgress(not quiet, config.epochs)
    try:
        with _kernels(reference):
            history = run_training(config, train_set, eval_set, out_dir, resume, reporter, threads)
    finally:
        reporter.close()
    if as_json:
        _emit_json({"out": out_dir, "reference": reference, "history": history})
        return
    click.echo(_table(history, [("epoch", "epoch", "{}"), ("clean_accuracy", "clean", "{:.3f}"),
                                ("certified_accuracy_global", "cert(global)", "{:.3f}"),
                                ("certified_accuracy_local", "cert(local)", "{:.3f}"),
                                ("median_local_over_global", "local/global", "{:.3f}")]))
    click.echo(f"eps {history[-1]['eps']:g} on {history[-1]['n']} evaluation examples; "
               f"models in {out_dir}/ (best.npz = best certified accuracy, model.npz = last epoch)")


def _with_recipe(name, options):
    """`options` with recipe `name`'s values where the user gave none; prints what it set."""
    ctx = click.get_current_context()
    explicit = {click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT}
    given = {k for k in options if ctx.get_parameter_source(k) in explicit}
    options, used = apply_recipe(name, options, given)
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    shown = " ".join(f"{flags[k]} {v:g}" if isinstance(v, float) else
                     (flags[k] if v else "--no-" + flags[k][2:]) if isinstance(v, bool) else f"{flags[k]} {v}"
                     for k, v in used.items())
    click.echo(f"recipe {name} sets: {shown}", err=True)
    if given & set(recipe_values(name)):
        click.echo(f"  (given explicitly, kept: {', '.join(flags[k] for k in sorted(given & set(recipe_values(name))))})",
                   err=True)
    return options


class _TrainProgress:
    """Progress of a training run: a bar per epoch on a terminal, a line per epoch otherwise."""

    def __init__(self, enabled, epochs):
        self.enabled, self.epochs = enabled, epochs
        self.bar = None
        self.tty = sys.stderr.isatty()

    def __call__(self, event):
        if not self.enabled:
            return
        if event["event"] == "step":
            if self.tty:
                if self.bar is None:
                    self.bar = click.progressbar(length=event["steps"], file=sys.stderr,
                                                 label=f"epoch {event['epoch'] + 1}/{self.epochs}")
                    self.bar.__enter__()
                self.bar.update(1)
            elif event["step"] % max(1, event["steps"] // 10) == 0 or event["step"] == event["steps"]:
                # not a terminal (a log file): about ten lines per epoch
                click.echo(f"epoch {event['epoch'] + 1}/{self.epochs} step {event['step']}/{event['steps']} "
                           f"loss {event['loss']:.4f} eps {event['eps']:.3f} kappa {event['kappa']:.2f}",
                           err=True)
        elif event["event"] == "epoch_end":
            self.close()
            click.echo(f"epoch {event['epoch']}: clean {event['clean_accuracy']:.3f}, certified "
                       f"{event['certified_accuracy_local']:.3f} (local) {event['certified_accuracy_global']:.3f} "
                       f"(global) at eps {event['eps']:g}", err=True)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


# ----------------------------------------------------------------------------------- certify

def _global_norms(model, mode, n_iters, seed, verbose, gram_limit):
    """The run's global norms (certify.global_norms_once), computed once before any batch or
    shard; in sound mode with a line on stderr (its slowest step; see BENCHMARKS.md)."""
    from lipref.certify import global_norms_once
    sound = verbose and mode == "sound"
    if sound:
        click.echo("sound mode: certifying each layer's global norm (once per model) ...", err=True)
    start = time.perf_counter()
    norms = global_norms_once(model, mode, n_iters, seed, gram_limit)
    if sound:
        click.echo(f"sound mode: global norms certified in {time.perf_counter() - start:.1f} s", err=True)
    return norms


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@apply_options(data_options)
@click.option("--eps", type=float, required=True, callback=_positive_eps, help="Radius of the l2 ball.")
@apply_options(settings_options(CertifyConfig, "mode", "n_iters", "pgd_steps", "pgd_restarts", "batch_size",
                                n_iters={"flag": "--iters"}))
@domain_option
@dtype_option
@gram_limit_option
@threads_option
@apply_options(engine_options)
@reference_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {clean_accuracy, certified_accuracy_global, certified_accuracy_local, pgd_accuracy, n, "
                   "seed, reference, ...} as JSON.")
@click.option("--samples", "samples_path", type=click.Path(dir_okay=False), default=None,
              help="Also write per-sample results (bounds, radii, certificates) as JSON to this file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw certified accuracy against radius into this PNG file.")
@click.option("--audit", is_flag=True,
              help="Fast mode only: certify the same samples in sound mode too and report how many of the "
                   "estimates' certificates (the paper's evaluation) hold there, and the median ratio of the "
                   "estimated to the sound local bound (docs/auditing.md). The sound run's seed comes from OS "
                   "entropy and is recorded as audit.seed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@apply_options(distributed_options)
@user_errors
def certify(model_path, data_spec, data_dir, limit, eps, mode, n_iters, pgd_steps, pgd_restarts, batch_size,
            domain, dtype, gram_limit, threads, backend, seed, reference, audit, as_json, samples_path, plot_path,
            quiet, workers, scheduler, shard_size, shards_dir, resume):
    """Certify MODEL on a dataset at radius EPS: clean, certified (global and local) and PGD accuracy.
    MODEL: a lipref .npz, a torch .pth / .pt checkpoint or an .onnx model (imported in memory).

    What is certified: the model's parameters as stored (float32 weights computed in float64
    in sound mode) at the data as read (float64 data stay float64).

    With --workers N or --scheduler ADDRESS the samples are cut into shards computed on a
    Dask cluster; the results equal a single-process run's bit for bit (every random draw
    comes from the seed and the sample's index), and the JSON adds workers and shards."""
    from lipref.certify import certify as run_certify
    from lipref.distributed import ShardOptions
    from lipref.models import atomic_write_bytes
    if audit and mode != "fast":
        raise InputError("--audit compares power-iteration estimates with sound bounds: use it with --mode fast")
    sharding = _sharding(workers, scheduler, shard_size, shards_dir, resume)
    if audit and sharding.requested:
        raise InputError("--audit runs in one process: drop --workers, --scheduler and --shards-dir")
    model, dataset, compute = load_model_and_data(model_path, data_spec, data_dir, limit, backend, mode, dtype)
    n = int(dataset.labels.shape[0])
    seed = _sharded_seed(mode, seed, sharding)
    pgd_domain = resolve_domain(domain, dataset)
    extra = {}
    options = ShardOptions("certify", eps, mode, n_iters, batch_size, seed, backend, compute, reference, pgd_steps,
                           pgd_restarts, pgd_domain)
    plan = _plan_shards(model_path, dataset, options, sharding)  # a folder that does not fit: refused now
    with _kernels(reference):
        norms = _global_norms(model, mode, n_iters, seed, not quiet, gram_limit)
        if sharding.requested:
            result, extra = _run_sharded(model_path, dataset, options, norms, sharding, plan, threads, "certifying",
                                         quiet)
        else:
            with _progress(n, "certifying", not quiet) as bar:
                result = run_certify(model, dataset.images, dataset.labels, eps, mode, n_iters, None, batch_size,
                                     pgd_steps, pgd_restarts, pgd_domain, progress=bar.update, threads=threads,
                                     seed=seed, norms=norms)
    summary = result.summary()
    summary.update({"model": model_path, "data": data_spec, "seed": seed, "dtype": compute, "reference": reference,
                    "domain": None if pgd_domain is None else list(pgd_domain), **extra})
    if audit:
        with _kernels(reference):
            summary["audit"] = _audit(result, model_path, data_spec, data_dir, limit, eps, n_iters, batch_size,
                                      gram_limit, threads, backend, quiet)
    if samples_path:
        atomic_write_bytes(samples_path, json.dumps(result.samples(), indent=1).encode("utf-8"))
    if plot_path:
        from lipref.plots import plot_certified_accuracy
        plot_certified_accuracy(result, plot_path, title=f"{model_path} on {data_spec}")
    if as_json:
        _emit_json(summary)
    else:
        rows = [{"bound": "global", "acc": summary["certified_accuracy_global"]},
                {"bound": "local", "acc": summary["certified_accuracy_local"]}]
        click.echo(f"{model_path} on {data_spec} ({n} examples), eps = {eps:g}, mode = {mode}")
        click.echo(_table([{"what": "clean accuracy", "value": summary["clean_accuracy"]},
                           {"what": f"PGD accuracy ({pgd_steps} steps)", "value": summary["pgd_accuracy"]},
                           {"what": "certified accuracy, global bound", "value": rows[0]["acc"]},
                           {"what": "certified accuracy, local bound", "value": rows[1]["acc"]},
                           {"what": "median local/global bound", "value": summary["median_local_over_global"]}]
                          + _audit_rows(summary.get("audit")),
                          [("what", "quantity", "{}"), ("value", "value", "{:.4f}")]))
        click.echo(f"{summary['seconds']:.1f} s")
    if summary["soundness_violations"]:
        click.secho(f"SOUNDNESS ERROR: PGD changed the prediction of certified samples "
                    f"{summary['soundness_violations']} inside the eps-ball. The certificate is wrong; "
                    "please report this with the model and data.", err=True, fg="red", bold=True)
        sys.exit(EXIT_UNSOUND)


def _audit(estimate, model_path, data_spec, data_dir, limit, eps, n_iters, batch_size, gram_limit, threads, backend,
           quiet):
    """Sound-mode certification of the samples `estimate` (a fast run) certified, compared with it."""
    from lipref.audit import audit_summary
    from lipref.certify import certify as run_certify
    model, dataset, _ = load_model_and_data(model_path, data_spec, data_dir, limit, backend, "sound", "auto")
    seed = run_seed("sound", None)
    norms = _global_norms(model, "sound", n_iters, seed, not quiet, gram_limit)
    with _progress(int(dataset.labels.shape[0]), "auditing (sound mode)", not quiet) as bar:
        sound = run_certify(model, dataset.images, dataset.labels, eps, "sound", n_iters, None, batch_size, 0,
                            progress=bar.update, threads=threads, seed=seed, norms=norms)
    return {**audit_summary(estimate, sound), "seed": seed,
            "sound_certified_accuracy_local": float(sound.certified_local.mean())}


def _audit_rows(audit):
    if audit is None:
        return []
    return [{"what": f"audit: of the estimates' {audit['estimate_certified']} certificates, the fraction sound",
             "value": audit["fraction_confirmed"]},
            {"what": "audit: certified accuracy in sound mode", "value": audit["sound_certified_accuracy_local"]},
            {"what": "audit: median estimate / sound local bound",
             "value": audit["median_estimate_over_sound"]}]


# ------------------------------------------------------------------------------------- bound

@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@apply_options(data_options)
@click.option("--eps", type=float, required=True, callback=_positive_eps, help="Radius of the l2 ball.")
@apply_options(settings_options(
    CertifyConfig, "n_iters", "mode", "batch_size",
    n_iters={"flag": "--iters", "help": "Power-iteration (fast) or Lanczos (sound) steps per layer."},
    mode={"help": "fast: power-iteration estimates; sound: upper bounds (float64)."}))
@dtype_option
@gram_limit_option
@threads_option
@apply_options(engine_options)
@reference_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {seed, reference, samples: [{index, label, prediction, global, local, "
                   "constant_fraction}]} (sharded: also workers, shards).")
@apply_options(distributed_options)
@user_errors
def bound(model_path, data_spec, data_dir, limit, eps, n_iters, mode, batch_size, dtype, gram_limit, threads, backend,
          seed, reference, as_json, workers, scheduler, shard_size, shards_dir, resume):
    """Global and local Lipschitz bounds of MODEL per sample, and the fraction of constant neurons.
    MODEL: a lipref .npz, a torch .pth / .pt checkpoint or an .onnx model (imported in memory).

    With --workers N or --scheduler ADDRESS the samples are cut into shards computed on a
    Dask cluster; the bounds equal a single-process run's bit for bit."""
    from lipref.certify import bounds_per_sample
    from lipref.distributed import ShardOptions
    sharding = _sharding(workers, scheduler, shard_size, shards_dir, resume)
    model, dataset, compute = load_model_and_data(model_path, data_spec, data_dir, limit, backend, mode, dtype)
    n = int(dataset.labels.shape[0])
    seed = _sharded_seed(mode, seed, sharding)
    extra = {}
    options = ShardOptions("bound", eps, mode, n_iters, batch_size, seed, backend, compute, reference)
    plan = _plan_shards(model_path, dataset, options, sharding)  # a folder that does not fit: refused now
    with _kernels(reference):
        norms = _global_norms(model, mode, n_iters, seed, True, gram_limit)
        if sharding.requested:
            samples, extra = _run_sharded(model_path, dataset, options, norms, sharding, plan, threads, "bounding",
                                          False)
        else:
            with _progress(n, "bounding", True) as bar:
                samples = bounds_per_sample(model, dataset.images, dataset.labels, eps, mode, n_iters, None,
                                            batch_size, progress=bar.update, threads=threads, seed=seed, norms=norms)
    if as_json:
        _emit_json({"model": model_path, "data": data_spec, "eps": eps, "mode": mode, "iters": n_iters,
                    "seed": seed, "dtype": compute, "reference": reference, **extra, "samples": samples})
        return
    rows = [dict(r, ratio=r["local"] / r["global"], const=" ".join(f"{c:.2f}" for c in r["constant_fraction"]))
            for r in samples]
    click.echo(_table(rows, [("index", "index", "{}"), ("label", "label", "{}"), ("prediction", "pred", "{}"),
                             ("global", "global", "{:.4g}"), ("local", "local", "{:.4g}"),
                             ("ratio", "local/global", "{:.3f}"), ("const", "constant fraction per layer", "{}")]))


# ------------------------------------------------------------------------------------ attack

@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@apply_options(data_options)
@click.option("--eps", type=float, required=True, callback=_positive_eps, help="Radius of the l2 ball.")
@apply_options(settings_options(AttackConfig, "steps", "step_size", "restarts"))
@setting_option(CertifyConfig, "batch_size")
@domain_option
@dtype_option
@threads_option
@apply_options(engine_options)
@click.option("--json", "as_json", is_flag=True, help="Print {clean_accuracy, pgd_accuracy, n, ...} as JSON.")
@user_errors
def attack(model_path, data_spec, data_dir, limit, eps, steps, step_size, restarts, batch_size, domain, dtype,
           threads, backend, seed, as_json):
    """Empirical robust accuracy of MODEL under an l2 PGD attack (an upper bound on certified accuracy)."""
    from lipref.attack import pgd_l2
    from lipref.bounds.margins import predictions
    if step_size is not None and not 0 < step_size < float("inf"):
        raise InputError(f"--step-size must be finite and > 0, got {step_size}")
    model, dataset, compute = load_model_and_data(model_path, data_spec, data_dir, limit, backend, "fast", dtype)
    pgd_domain = resolve_domain(domain, dataset)
    xp = get_backend(backend)
    seed = run_seed("fast", seed)
    rng = host.random.default_rng(seed)
    n = int(dataset.labels.shape[0])
    correct = broken = 0
    for _, _, x, y in D.batches(dataset.images, dataset.labels, batch_size, xp, float_dtype(xp, compute)):
        ok = to_host(predictions(model(x, record=False)) == y)
        result = pgd_l2(model, x, y, eps, rng, steps, step_size, restarts, pgd_domain, threads=threads)
        correct += int(ok.sum())
        broken += int((to_host(result.success) & ok).sum())
    out = {"model": model_path, "data": data_spec, "eps": eps, "steps": steps, "restarts": restarts, "n": n,
           "seed": seed, "domain": None if pgd_domain is None else list(pgd_domain),
           "clean_accuracy": correct / n, "pgd_accuracy": (correct - broken) / n}
    if as_json:
        _emit_json(out)
    else:
        click.echo(_table([out], [("n", "n", "{}"), ("eps", "eps", "{:g}"), ("clean_accuracy", "clean", "{:.4f}"),
                                  ("pgd_accuracy", "PGD", "{:.4f}")]))


# -------------------------------------------------------------------------------------- data

@main.group()
def data():
    """List, verify and download datasets."""


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_list(as_json):
    """Known datasets, where they are looked for, and whether their files verify."""
    rows = []
    for name, info in D.DATASETS.items():
        report = D.verify(name)
        status = "ok" if all(s == D.OK for _, s in report) else ", ".join(sorted({s for _, s in report if s != D.OK}))
        rows.append({"name": name, "shape": "x".join(map(str, info.input_shape)), "classes": info.n_classes,
                     "status": status, "where": " | ".join(str(d) for d in D.search_dirs(name))})
    if as_json:
        _emit_json(rows)
    else:
        click.echo(_table(rows, [("name", "dataset", "{}"), ("shape", "shape", "{}"), ("classes", "classes", "{}"),
                                 ("status", "files", "{}"), ("where", "searched in", "{}")]))


@data.command("verify")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder to check.")
@user_errors
def data_verify(name, data_dir):
    """Check NAME's files against their checksums (exit 2 if any is missing or wrong)."""
    report = D.verify(name, data_dir)
    for file_name, status in report:
        click.echo(f"{status:>12}  {file_name}")
    if any(s != D.OK for _, s in report):
        raise D.DataError(f"{name}: {sum(s != D.OK for _, s in report)} file(s) missing or with a bad checksum")


@data.command("download")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Destination folder (default ~/.cache/lipref/<name>).")
@click.option("--base-url", default=None, help="Download from this address instead of the canonical one.")
@user_errors
def data_download(name, data_dir, base_url):
    """Download NAME from its canonical address, verifying every file's checksum."""
    def progress(file_name, done, total):
        if total:
            click.echo(f"\r{file_name}: {100 * done // total:3d}%", nl=False, err=True)
    paths = D.download(name, data_dir, base_url, progress)
    click.echo("", err=True)
    for p in paths:
        click.echo(str(p))


# ------------------------------------------------------------------------- torch interop

def _input_shape(text):
    """None for "auto", else the integers of "C,H,W" or "D"."""
    if text == "auto":
        return None
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise InputError(f"--input-shape must be auto or integers separated by commas, got {text!r}") from None


@main.command("import-torch")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--arch", default="auto", show_default=True,
              help="4c3f, 6c2f, 8c2f, 2c2f, mlp-W..., 'auto' (match the checkpoint's names and shapes), or a "
                   "generic stack 'conv:OUT:K:STRIDE:PAD,...,fc:WIDTH,...'.")
@click.option("--input-shape", default="auto", show_default=True,
              help="Input shape C,H,W (MNIST 1,28,28; CIFAR-10 3,32,32; TinyImageNet 3,64,64), or auto: the "
                   "one on which the architecture fits the checkpoint (the datasets' sizes and the first "
                   "activation's shape are tried).")
@click.option("--classes", "n_classes", type=int, default=None,
              help="Number of classes (default: read from the last linear layer).")
@click.option("--activation", type=click.Choice(["auto", *ACTIVATIONS]), default="auto",
              show_default=True, help="Activation (auto: from the parameter names: threshold, max/min).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="The lipref model file to write.")
@user_errors
def import_torch(checkpoint, arch, input_shape, n_classes, activation, out_path):
    """Import a PyTorch checkpoint of an nn.Sequential model (the paper's code) as a lipref model."""
    from lipref.torch_import import import_torch_checkpoint
    shape = _input_shape(input_shape)
    model = import_torch_checkpoint(checkpoint, arch, shape, n_classes, activation, out_path)
    n_params = sum(int(v.value.size) for v in model.parameters().values())
    click.echo(f"{checkpoint} -> {out_path}: {model.metadata['arch']}, {model.metadata['activation']}, "
               f"{len(model.layers)} layers, {n_params} parameters")


@main.command("import-onnx")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="The lipref model file to write.")
@user_errors
def import_onnx(onnx_path, out_path):
    """Import an ONNX model (Conv, Gemm / MatMul + Add, Relu, Clip, Min + Relu, Flatten / Reshape; any
    framework's export) as a lipref model; anything else is an error naming the node and its op type.
    Needs the onnx package: pip install 'lipref[onnx]'."""
    from lipref.onnx_import import import_onnx_model
    model = import_onnx_model(onnx_path, out_path)
    n_params = sum(int(v.value.size) for v in model.parameters().values())
    click.echo(f"{onnx_path} -> {out_path}: {model.metadata['activation']}, input {tuple(model.input_shape)}, "
               f"{len(model.layers)} layers, {n_params} parameters")


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@setting_option(CheckConfig, "against")
@apply_options(data_options)
@apply_options(settings_options(CheckConfig, "eps", "n_iters", "seed", eps={"callback": _positive_eps},
                                n_iters={"flag": "--iters"}))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@user_errors
def check(model_path, against, data_spec, data_dir, limit, eps, n_iters, seed, as_json):
    """Recompute MODEL's logits, masks, bounds, margins and loss gradients with the torch
    reference, in float64, and compare; exit code 1 if any differs beyond its tolerance."""
    from lipref.check import LOSSES, check_against_torch
    model = load_model_file(model_path, "numpy", "float64")
    dataset = data_for_model(model, data_spec, data_dir, limit or CheckConfig.limit)
    rows = check_against_torch(model, dataset.images.astype("float64"), dataset.labels, eps, n_iters,
                               host.random.default_rng(seed), loss_names=LOSSES)
    ok = all(r["ok"] for r in rows)
    if as_json:
        _emit_json({"model": model_path, "against": against, "ok": ok, "n": int(dataset.labels.shape[0]),
                    "results": rows})
    else:
        table_rows = [dict(r, verdict="ok" if r["ok"] else "DIFFERS") for r in rows]
        click.echo(_table(table_rows, [("quantity", "quantity", "{}"), ("max_rel_diff", "largest difference", "{:.3g}"),
                                       ("unit", "unit", "{}"), ("tolerance", "tolerance", "{:.0e}"),
                                       ("verdict", "", "{}")]))
        click.echo(f"{'all within tolerance' if ok else 'SOME QUANTITIES DIFFER'} "
                   f"({dataset.labels.shape[0]} examples, eps {eps:g}, {n_iters} power iterations)")
    if not ok:
        sys.exit(1)


# -------------------------------------------------------------------------------------- info

@main.command()
@click.argument("model_path", metavar="MODEL", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def info(model_path, as_json):
    """Describe MODEL (layers, parameters, training metadata), or the installation when no MODEL."""
    from lipref.backend import cupy_unavailable_reason, host_blas
    if model_path is None:
        import platform
        reason = cupy_unavailable_reason()
        blas, hint = host_blas()
        out = {"python": platform.python_version(), "numpy": host.__version__, "blas": blas,
               "cupy": "available" if reason is None else reason}
        if hint:
            out["hint"] = hint
        if as_json:
            _emit_json(out)
        else:
            for k, v in out.items():
                click.echo(f"{k:>8}: {v}")
        return
    model = load_model_file(model_path, "numpy", "float32")
    layers = []
    for i, layer in enumerate(model.layers):
        n_params = sum(int(v.value.size) for v in layer.params.values())
        layers.append({"index": i, "layer": layer.kind, "in": "x".join(map(str, layer.in_shape)),
                       "out": "x".join(map(str, layer.out_shape)), "params": n_params})
    out = {"model": model_path, "layers": layers, "parameters": sum(r["params"] for r in layers),
           "metadata": model.metadata}
    if as_json:
        _emit_json(out)
        return
    click.echo(_table(layers, [("index", "#", "{}"), ("layer", "layer", "{}"), ("in", "input", "{}"),
                               ("out", "output", "{}"), ("params", "parameters", "{}")]))
    click.echo(f"{out['parameters']} parameters")
    meta = model.metadata
    best = meta.get("best")
    keys = ("epoch", "clean_accuracy", "certified_accuracy_local", "eps")
    if isinstance(best, dict) and all(isinstance(best.get(k), (int, float)) for k in keys):
        click.echo(f"best epoch {best['epoch']}: clean {best['clean_accuracy']:.3f}, certified "
                   f"{best['certified_accuracy_local']:.3f} at eps {best['eps']:g}")
    elif best is not None:  # metadata is free-form: show it, never fail on it
        click.echo(f"best: {json.dumps(best)[:200]}")


if __name__ == "__main__":
    main()
