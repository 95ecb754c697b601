"""`lipref train`: options (from TrainConfig, a --recipe preset, or on --resume the run's own),
progress, Ctrl-C, the per-epoch plot and the history table."""
import contextlib
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import click

from lipref import data as D
from lipref.commands.common import (
    Engine,
    apply_options,
    data_choice,
    emit_json,
    engine_options,
    format_table,
    positive_eps,
    reference_option,
    setting_option,
    settings_options,
    take,
    threads_option,
    user_errors,
)
from lipref.data.registry import EVALUATION_SPLIT, TRAINING_SPLIT, with_split
from lipref.errors import InputError, MissingExtraError
from lipref.inputs import run_seed
from lipref.kernels import reference_only_if
from lipref.recipes import RECIPES, apply_recipe
from lipref.recipes import recipe as recipe_values
from lipref.schedules import eps_at
from lipref.training import CHECKPOINT, StopRequest, TrainConfig, TrainingInterrupted
from lipref.train_state import saved_settings

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


@dataclass(frozen=True)
class TrainRun:
    """--out, --resume and --recipe: which run folder, continued or new, from which preset."""
    out_dir: str
    resume: bool = False
    recipe: str = None


@dataclass(frozen=True)
class EvalChoice:
    """--eval-data and --allow-overlap: the held-out examples that choose best.npz."""
    spec: str = None
    allow_overlap: bool = False


@dataclass(frozen=True)
class TrainOutputs:
    """--json, --quiet and --plot: what `lipref train` prints and draws besides the run folder."""
    as_json: bool = False
    quiet: bool = False
    plot_path: str = None


# the options of TrainConfig that `lipref train` offers, in --help's order (seed and backend: the engine's)
CONFIG_OPTIONS = ("arch", "activation", "threshold_init", "epochs", "batch_size", "eps_train", "eps_eval", "warmup",
                  "ramp", "kappa_start", "kappa_end", "lr", "lr_end", "decay_start", "loss", "bound", "sparsity",
                  "saturation_weight", "n_iters", "eval_iters", "crop_padding", "flip", "best_from", "layer_inits",
                  "dtype")

seed_option = click.option(
    "--seed", type=int, default=None,
    help="Seed of every random draw of the run: initial weights, shuffling, augmentation, power-iteration starts "
         "(training and evaluation). Default: 0; on --resume, the run's.")


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: checkpoint.npz, best.npz, model.npz, history.json and history.csv (per epoch), "
                   "vectors/.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=None,
              help="The paper's setting for one model (lipref/recipes.py); what it sets is printed. Options given "
                   "explicitly override it; with other --epochs than the recipe's, its warm-up, ramp and decay "
                   "start are scaled with them (printed).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out where its checkpoint stands (a new run when there is none): "
                   "options not given are the run's; those given must be the run's, except a larger --epochs, "
                   "which extends it (eps and kappa keep their ramp; the learning-rate decay ends at the new last "
                   "epoch, continuing from the rate the run has reached).")
@click.option("--data", "data_spec", default="embedded:train", show_default=True,
              help="Training data: a dataset (mnist, fashion-mnist, cifar10, tinyimagenet, embedded) with an "
                   "optional :train or :test split, its training split when none is given; or a .npz with arrays "
                   "'images' (N,C,H,W) and 'labels'.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding the dataset's files (default: the embedded slice, OS package folders, "
                   "~/.cache/lipref/<name>).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Train on the first N examples only.")
@click.option("--eval-data", default=None,
              help="Data for the per-epoch certified accuracy, which also chooses best.npz, so it must be held "
                   "out: a dataset, its test split when no split is given, or a .npz (default: the training "
                   "dataset's test split; a .npz training file needs it).")
@click.option("--allow-overlap", is_flag=True,
              help="Train even when --eval-data overlaps the training data (the same dataset and split, the same "
                   "file, or only training images); recorded in history.json. best.npz is then chosen on "
                   "training data.")
@setting_option(TrainConfig, "eval_limit")
@apply_options(settings_options(TrainConfig, *CONFIG_OPTIONS, eps_train={"flag": "--eps", "callback": positive_eps},
                                eps_eval={"callback": positive_eps}, n_iters={"flag": "--iters"}))
@threads_option
@apply_options(engine_options[:1])
@seed_option
@reference_option
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress output (the lines on resuming, warnings and Ctrl-C stay).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw the history into this PNG file after every epoch: losses, accuracies, the eps and "
                   "learning-rate schedule (needs matplotlib; without it, a note and no plot). `lipref plot "
                   "RUN_DIR` draws any run's.")
@user_errors
def train(**options):
    """Train a certifiably robust classifier with the local (or global) Lipschitz bound.

    After every epoch the run folder gets checkpoint.npz, history.json and history.csv (and
    best.npz when the model is the best so far). Ctrl-C stops after the current step, writes
    the checkpoint of the steps done and prints the command that resumes exactly there (exit
    code 130); a second Ctrl-C abandons the step under way."""
    from lipref.training import train as run_training
    given = _given()
    run, outputs = take(options, TrainRun), take(options, TrainOutputs)
    stop = StopRequest()
    with _sigint_presses(stop):
        try:
            options = _resolved(run, options, given)
            data, engine = data_choice(options), take(options, Engine)
            evaluation = take(options, EvalChoice, spec="eval_data")
            config = TrainConfig(**options, seed=run_seed("fast", engine.seed), backend=engine.backend)
            train_set, eval_set = _datasets(data, evaluation, config)
            reporter = _TrainProgress(not outputs.quiet, run, _plotter(outputs.plot_path, run.out_dir))
            with reference_only_if(engine.reference), contextlib.closing(reporter):
                history = run_training(config, train_set, eval_set, run.out_dir, run.resume, reporter, engine.threads,
                                       allow_overlap=evaluation.allow_overlap, data_specs=(data.spec, evaluation.spec),
                                       stop=stop)
        except KeyboardInterrupt as exc:  # TrainingInterrupted, or a second Ctrl-C before training began
            click.echo(_interrupted_line(run.out_dir, exc), err=True)
            sys.exit(EXIT_INTERRUPTED)
    _report(history, run.out_dir, outputs.as_json, engine.reference)


def _given():
    """The names of the options given on the command line (or in the environment)."""
    ctx = click.get_current_context()
    explicit = {click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT}
    return {p.name for p in ctx.command.params if ctx.get_parameter_source(p.name) in explicit}


def _resolved(run, options, given):
    """The options with a recipe's values and, on --resume, the run's own where none was given
    (the run's are what the checkpoint recorded: its settings and its data specs and size);
    a warning where the ramp ends after the last epoch of a new run."""
    if run.recipe is not None:
        options = _with_recipe(run.recipe, options, given)
    saved = saved_settings(run.out_dir) if run.resume else None
    if saved is not None:
        config, data = saved
        theirs = {**{k: config[k] for k in CONFIG_OPTIONS + ("eval_limit",) if k in config},
                  "seed": config.get("seed"), "backend": config.get("backend"),
                  "data_spec": data["train"].get("spec") or data["train"]["resolved"],
                  "eval_data": data["eval"].get("spec"), "limit": data["train"].get("examples")}
        set_by_recipe = set(recipe_values(run.recipe)) if run.recipe else set()
        options.update({k: v for k, v in theirs.items() if k not in given | set_by_recipe and k in options})
    else:
        _warn_unfinished_ramp(options)
    return options


def _warn_unfinished_ramp(options):
    warmup, ramp, epochs = options["warmup"], options["ramp"], options["epochs"]
    if warmup + ramp > epochs:
        reached = eps_at(TrainConfig(**{k: options[k] for k in CONFIG_OPTIONS}).schedule(), epochs)
        click.secho(f"warning: the ramp ends at epoch {warmup + ramp:g} (--warmup {warmup:g} --ramp {ramp:g}), "
                    f"after the last epoch {epochs}: the training eps reaches {reached:.4g} of --eps "
                    f"{options['eps_train']:g}", err=True, fg="yellow")


def _datasets(data, evaluation, config):
    """(training set, evaluation set): the evaluation data as given, else the training dataset's
    test split (a .npz training file has none: refused)."""
    train_set = D.load_data(with_split(data.spec, TRAINING_SPLIT), data.folder, data.limit)
    if evaluation.spec is None and train_set.split == "file":
        raise InputError(f"--data {data.spec}: a file has no test split to evaluate on; give --eval-data with "
                         "held-out data (it chooses best.npz)")
    eval_spec = (with_split(evaluation.spec, EVALUATION_SPLIT) if evaluation.spec else
                 f"{train_set.name}:{EVALUATION_SPLIT}")
    return train_set, D.load_data(eval_spec, data.folder, config.eval_limit)


def _report(history, out_dir, as_json, reference):
    if as_json:
        emit_json({"out": out_dir, "reference": reference, "history": history})
        return
    if not history:
        return
    columns = [
        ("epoch", "epoch", "{}"),
        ("loss", "loss", "{:.4f}"),
        ("robust_loss", "robust", "{:.4f}"),
        ("clean_accuracy", "clean", "{:.3f}"),
        ("certified_accuracy_global", "cert(global)", "{:.3f}"),
        ("certified_accuracy_local", "cert(local)", "{:.3f}"),
        ("median_local_over_global", "local/global", "{:.3f}"),
        ("lr", "lr", "{:.3g}"),
        ("train_seconds", "train s", "{:.1f}"),
        ("eval_seconds", "eval s", "{:.1f}"),
    ]
    click.echo(format_table(history, columns))
    click.echo(f"eps {history[-1]['eps']:g} on {history[-1]['n']} evaluation examples; "
               f"models in {out_dir}/ (best.npz = best certified accuracy, model.npz = last epoch)")


def _with_recipe(name, options, given):
    """`options` with recipe `name`'s values where the user gave none; prints what it set and
    what it scaled to the run's epochs."""
    flags = {p.name: p.opts[0] for p in click.get_current_context().command.params}
    options, used, scaled = apply_recipe(name, options, given)

    def shown(k, v):
        if isinstance(v, bool):
            return flags[k] if v else "--no-" + flags[k][2:]
        return f"{flags[k]} {v:g}" if isinstance(v, float) else f"{flags[k]} {v}"
    click.echo(f"recipe {name} sets: {' '.join(shown(k, v) for k, v in used.items())}", err=True)
    kept = sorted(given & set(recipe_values(name)))
    if kept:
        click.echo(f"  (given explicitly, kept: {', '.join(flags[k] for k in kept)})", err=True)
    if scaled:
        click.echo(f"  (scaled from the recipe's {recipe_values(name)['epochs']} epochs to {options['epochs']}: "
                   + ", ".join(f"{flags[k]} {old:g} -> {new:g}" for k, (old, new) in scaled.items()) + ")", err=True)
    return options


@contextlib.contextmanager
def _sigint_presses(stop):
    """Ctrl-C (SIGINT) presses `stop` while training runs (train_state.StopRequest); outside
    the main thread, where Python delivers no signal, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.press())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def resume_command(argv=None, orig_argv=None):
    """The command line that resumes this run: the one given, with --resume (a script run by
    its file, `python cli.py ...`, with its interpreter)."""
    argv = list(sys.argv if argv is None else argv)
    if argv[0].endswith(".py"):
        argv = list(sys.orig_argv if orig_argv is None else orig_argv)
    return shlex.join(argv + ([] if "--resume" in argv else ["--resume"]))


def _interrupted_line(out_dir, exc):
    """The one line printed on Ctrl-C: what the checkpoint holds, and the command that resumes."""
    command = resume_command()
    if isinstance(exc, TrainingInterrupted) and exc.checkpoint is not None:
        where = (f"the end of epoch {exc.epoch} of {exc.epochs}" if exc.step == 0 else
                 f"epoch {exc.epoch + 1} of {exc.epochs} after step {exc.step} of {exc.steps}")
        return f"interrupted: {exc.checkpoint} holds the run at {where}; resume with: {command}"
    checkpoint = Path(out_dir) / CHECKPOINT
    if checkpoint.exists():
        return f"interrupted: {checkpoint} holds the run's last checkpoint; resume with: {command}"
    return f"interrupted before the first training step, nothing to resume; start again with: {command}"


def _plotter(path, out_dir):
    """draw(): the run's history into `path` (None: no plot); a note instead where matplotlib is
    missing, and where the file cannot be written (the training goes on)."""
    if path is None:
        return None
    from lipref import plots
    try:
        plots.pyplot()
    except MissingExtraError as exc:
        click.echo(f"note: --plot: {exc}; training without the plot", err=True)
        return None

    def draw():
        try:
            plots.plot_run(out_dir, path)
        except OSError as exc:
            click.echo(f"note: --plot: could not write {path} ({exc.strerror or exc}); training goes on", err=True)
    return draw


def _warn_about_overlap(data):
    """A line on stderr when the evaluation data share images with the training data."""
    if data["overlap"]:
        click.secho(f"warning: the evaluation data overlap the training data ({data['overlap']}), as "
                    "--allow-overlap allows: best.npz is chosen on training data", err=True, fg="yellow")
    elif data["shared_examples"]:
        click.secho(f"warning: {data['shared_examples']} of the {data['eval']['examples']} evaluation images are "
                    "also training images", err=True, fg="yellow")


def _start_line(event, run):
    """Where a run starts or resumes (None for a new run started without --resume)."""
    resumed, epochs, out_dir = event["resumed"], event["epochs"], run.out_dir
    if resumed is None:
        return f"no checkpoint in {out_dir}: a new run of {epochs} epoch{'s' * (epochs != 1)}" if run.resume else None
    epoch, step = resumed["epoch"], resumed["step"]
    extension = f"extending {out_dir} {resumed['extension']}; " if resumed["extension"] else ""
    if epoch >= epochs:
        return (f"{out_dir}: the run has finished its {epochs} epochs; nothing to train (--resume --epochs N, N > "
                f"{epochs}, extends it)")
    at = f"epoch {epoch + 1} of {epochs}" + (f", step {step + 1} of {event['steps']}" if step else "")
    done = f"after epoch {epoch}" + (f" and {step} steps" if step else "") if epoch or step else "at the start"
    return f"{extension}resuming at {at}, from {resumed['checkpoint']} ({done})"


class _TrainProgress:
    """Progress of a training run: where it starts, a bar per epoch on a terminal (a line per
    tenth of an epoch otherwise), a line per epoch, and the plot after each."""

    def __init__(self, enabled, run, draw=None):
        self.enabled, self.run, self.draw = enabled, run, draw
        self.epochs, self.bar = None, None
        self.tty = sys.stderr.isatty()

    def __call__(self, event):
        kind = event["event"]
        if kind == "start":
            self.epochs = event["epochs"]
            line = _start_line(event, self.run)
            if line:  # shown even with --quiet, as the warnings: it says what the run continues
                click.echo(line, err=True)
            if self.draw and event["resumed"] and event["resumed"]["epoch"] >= self.epochs:
                self.draw()  # a finished run: no epoch ends to draw after
        elif kind == "data":
            _warn_about_overlap(event)
        elif kind == "epoch_end" and self.draw:
            self.draw()
        if self.enabled and kind == "step":
            self._step(event)
        elif self.enabled and kind == "epoch_end":
            self.close()
            e = event
            robust = "" if e["robust_loss"] is None else f" (robust {e['robust_loss']:.4f})"
            click.echo(f"epoch {e['epoch']}: loss {e['loss']:.4f}{robust}, clean {e['clean_accuracy']:.3f}, "
                       f"certified {e['certified_accuracy_local']:.3f} (local) {e['certified_accuracy_global']:.3f} "
                       f"(global) at eps {e['eps']:g}; {e['train_seconds']:.1f} s training, "
                       f"{e['eval_seconds']:.1f} s evaluation", err=True)

    def _step(self, event):
        if self.tty:
            if self.bar is None:
                self.bar = click.progressbar(length=event["steps"], file=sys.stderr,
                                             label=f"epoch {event['epoch'] + 1}/{self.epochs}")
                self.bar.__enter__()
                self.bar.update(event["step"] - 1)  # a resumed epoch starts part-way
            self.bar.update(1)
        elif event["step"] % max(1, event["steps"] // 10) == 0 or event["step"] == event["steps"]:
            # not a terminal (a log file): about ten lines per epoch
            click.echo(f"epoch {event['epoch'] + 1}/{self.epochs} step {event['step']}/{event['steps']} "
                       f"loss {event['loss']:.4f} eps {event['eps']:.3f} kappa {event['kappa']:.2f}", err=True)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
