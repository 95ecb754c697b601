"""`lipref train`: options (from TrainConfig, or a --recipe preset), progress, the history table."""
import sys

import click

from lipref import data as D
from lipref.commands.common import (
    apply_options,
    emit_json,
    engine_options,
    format_table,
    positive_eps,
    reference_option,
    setting_option,
    settings_options,
    threads_option,
    user_errors,
)
from lipref.data.registry import EVALUATION_SPLIT, TRAINING_SPLIT, with_split
from lipref.errors import InputError
from lipref.inputs import run_seed
from lipref.kernels import reference_only_if
from lipref.recipes import RECIPES, apply_recipe
from lipref.recipes import recipe as recipe_values
from lipref.train import TrainConfig

# ------------------------------------------------------------------------------------- train

@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: checkpoint.npz, best.npz, model.npz, history.json.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=None,
              help="The paper's setting for one model (lipref/recipes.py); printed when used. Options given "
                   "explicitly override it.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (same options).")
@click.option("--data", "data_spec", default="embedded:train", show_default=True,
              help="Training data: a dataset (mnist, fashion-mnist, cifar10, tinyimagenet, embedded) with an "
                   "optional :train or :test split, its training split when none is given; or a .npz with arrays "
                   "'images' (N,C,H,W) and 'labels'.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder with the data files.")
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
@apply_options(settings_options(
    TrainConfig, "arch", "activation", "threshold_init", "epochs", "batch_size", "eps_train", "eps_eval", "warmup",
    "ramp", "kappa_start", "kappa_end", "lr", "lr_end", "decay_start", "loss", "bound", "sparsity",
    "saturation_weight", "n_iters", "eval_iters", "crop_padding", "flip", "best_from", "layer_inits", "dtype",
    eps_train={"flag": "--eps", "callback": positive_eps},
    eps_eval={"callback": positive_eps}, n_iters={"flag": "--iters"}))
@threads_option
@apply_options(engine_options)
@reference_option
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@user_errors
def train(out_dir, recipe, resume, data_spec, data_dir, limit, eval_data, allow_overlap, eval_limit, threads,
          reference, as_json, quiet, **options):
    """Train a certifiably robust classifier with the local (or global) Lipschitz bound."""
    from lipref.train import train as run_training
    if recipe is not None:
        options["data_spec"] = data_spec
        options = _with_recipe(recipe, options)
        data_spec = options.pop("data_spec")
    options["seed"] = run_seed("fast", options["seed"])
    config = TrainConfig(eval_limit=eval_limit, **options)
    train_set = D.load_data(with_split(data_spec, TRAINING_SPLIT), data_dir, limit)
    if eval_data is None and train_set.split == "file":
        raise InputError(f"--data {data_spec}: a file has no test split to evaluate on; give --eval-data with "
                         "held-out data (it chooses best.npz)")
    eval_spec = with_split(eval_data, EVALUATION_SPLIT) if eval_data else f"{train_set.name}:{EVALUATION_SPLIT}"
    eval_set = D.load_data(eval_spec, data_dir, eval_limit)
    reporter = _TrainProgress(not quiet, config.epochs)
    try:
        with reference_only_if(reference):
            history = run_training(config, train_set, eval_set, out_dir, resume, reporter, threads,
                                   allow_overlap=allow_overlap, data_specs=(data_spec, eval_data))
    finally:
        reporter.close()
    if as_json:
        emit_json({"out": out_dir, "reference": reference, "history": history})
        return
    columns = [
        ("epoch", "epoch", "{}"),
        ("clean_accuracy", "clean", "{:.3f}"),
        ("certified_accuracy_global", "cert(global)", "{:.3f}"),
        ("certified_accuracy_local", "cert(local)", "{:.3f}"),
        ("median_local_over_global", "local/global", "{:.3f}"),
    ]
    click.echo(format_table(history, columns))
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
    kept = sorted(given & set(recipe_values(name)))
    if kept:
        click.echo(f"  (given explicitly, kept: {', '.join(flags[k] for k in kept)})", err=True)
    return options


def _warn_about_overlap(data):
    """A line on stderr when the evaluation data share images with the training data."""
    if data["overlap"]:
        click.secho(f"warning: the evaluation data overlap the training data ({data['overlap']}), as "
                    "--allow-overlap allows: best.npz is chosen on training data", err=True, fg="yellow")
    elif data["shared_examples"]:
        click.secho(f"warning: {data['shared_examples']} of the {data['eval']['examples']} evaluation images are "
                    "also training images", err=True, fg="yellow")


class _TrainProgress:
    """Progress of a training run: a bar per epoch on a terminal, a line per epoch otherwise."""

    def __init__(self, enabled, epochs):
        self.enabled, self.epochs = enabled, epochs
        self.bar = None
        self.tty = sys.stderr.isatty()

    def __call__(self, event):
        if event["event"] == "data":  # shown even with --quiet: it says what best.npz was chosen on
            _warn_about_overlap(event)
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
