"""`lipref demo`: the main job in one command. The same network and recipe trained once with
the global and once with the local bound on the embedded Fashion-MNIST slice, both best.npz
certified at eps 1.58 on the embedded test images, one side-by-side table and one plot.

Everything runs through the library (lipref.training.train, lipref.certification.certify,
lipref.plots); a run folder already trained is resumed (a finished one costs a second)."""
import time
from dataclasses import asdict, replace
from pathlib import Path

import click

from lipref import data as D
from lipref.certification import CertifyConfig
from lipref.commands.common import EXIT_UNSOUND, emit_json, format_table, threads_option, user_errors
from lipref.errors import MissingExtraError
from lipref.inputs import load_model_and_data, resolve_domain, run_seed
from lipref.training import TrainConfig

TRAIN_SPEC, TEST_SPEC = "embedded:train", "embedded:test"
EPS = 1.58  # certified radius (the official MNIST recipe's 1.58, trained at 1.75)
# the README's main job: the official MNIST recipe's loss, scaled down to the embedded slice (docs/results.md)
RECIPE = TrainConfig(arch="mlp-256-256", activation="clipped_relu", loss="gloro-bcp", kappa_start=0.0,
                     eps_train=1.75, eps_eval=EPS, warmup=0.0, ramp=8.0, epochs=15, batch_size=128, n_iters=5)
BOUNDS = ("global", "local")  # the bound inside the training loss; also the run folders' names


def recipe(epochs, seed, eval_limit):
    """The demo's TrainConfig for `epochs` epochs: the ramp keeps its share of the run (8 of 15)."""
    ramp = RECIPE.ramp * epochs / RECIPE.epochs
    return replace(RECIPE, epochs=epochs, ramp=ramp, seed=seed, eval_limit=min(eval_limit, RECIPE.eval_limit))


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="Folder of the two runs (OUT/global, OUT/local); a run already there is resumed, not retrained "
                   "(the same options are needed).")
@click.option("--epochs", type=click.IntRange(min=1), default=RECIPE.epochs, show_default=True,
              help="Training epochs of each model (the eps ramp scales with them: 8 of 15).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Train on the first N of the 2,000 embedded training images (default: all).")
@click.option("--test-limit", type=click.IntRange(min=1), default=None,
              help="Certify the first N of the 500 embedded test images (default: all; the per-epoch evaluation "
                   "that chooses best.npz uses the first 200 of them).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the training (initialisation, shuffling, starts) and of the certification's random "
                   "starts.")
@threads_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="The PNG comparing the two models' certified-accuracy curves [default: OUT/demo.png].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of the table.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@user_errors
def demo(out_dir, epochs, limit, test_limit, seed, threads, plot_path, as_json, quiet):
    """Train the same network with the global and with the local bound, certify both, compare.

    mlp-256-256 with clipped ReLU, the gloro-bcp loss, eps 1.75 (certified at 1.58), on the
    embedded Fashion-MNIST slice (2,000 training, 500 test images): one side-by-side table
    (clean, PGD and certified accuracy, the median local/global bound, the constant
    neurons, seconds) and one plot of both models' certified accuracy against radius."""
    say = (lambda text: None) if quiet else (lambda text: click.echo(text, err=True))
    train_set = D.load_data(TRAIN_SPEC, None, limit)
    eval_limit = RECIPE.eval_limit if test_limit is None else test_limit
    config = recipe(epochs, seed, eval_limit)
    eval_set = D.load_data(TEST_SPEC, None, config.eval_limit)
    models = {}
    for i, bound in enumerate(BOUNDS):
        run_dir = Path(out_dir) / bound
        say(f"demo {i + 1}/{len(BOUNDS)}: training with the {bound} bound in {run_dir} ({_count(epochs, 'epoch')} "
            f"on {len(train_set.labels)} images)")
        trained = _train(replace(config, bound=bound), train_set, eval_set, run_dir, threads, say)
        say(f"demo {i + 1}/{len(BOUNDS)}: certifying {run_dir / 'best.npz'} at eps {EPS:g} on {TEST_SPEC}")
        models[bound] = dict(trained, **_certify(run_dir / "best.npz", test_limit, seed, threads))
    plot_path = str(Path(out_dir) / "demo.png") if plot_path is None else plot_path
    plotted = _plot(models, plot_path, say)
    result = _result(config, train_set, models, out_dir, plotted)
    if as_json:
        emit_json(result)
    else:
        click.echo(_table(result))
    _stop_if_unsound(models)


def _train(config, train_set, eval_set, run_dir, threads, say):
    """Train (or resume) one run: {run, model, epochs_trained_now, train_seconds}."""
    from lipref.training import train as run_training
    start = time.perf_counter()
    done = []

    def progress(event):
        if event["event"] == "epoch_end":
            done.append(event["epoch"])
            say(f"  epoch {event['epoch']}/{config.epochs}: clean {event['clean_accuracy']:.3f}, certified "
                f"{event['certified_accuracy_local']:.3f} at eps {event['eps']:g} on {event['n']} test images "
                f"({time.perf_counter() - start:.0f} s)")
    run_training(config, train_set, eval_set, run_dir, resume=True, progress=progress, threads=threads,
                 data_specs=(TRAIN_SPEC, TEST_SPEC))
    if not done:
        say(f"  already trained ({_count(config.epochs, 'epoch')}): resumed, nothing retrained")
    return {"run": str(run_dir), "model": str(run_dir / "best.npz"), "epochs_trained_now": len(done),
            "train_seconds": time.perf_counter() - start}


def _certify(model_path, test_limit, seed, threads):
    """`lipref certify MODEL --data embedded:test --eps 1.58`'s numbers (fast mode, 100 PGD steps)
    and the epoch that made MODEL best.npz, with the Certification itself under "certification"."""
    from lipref.certification import certify
    config = CertifyConfig()
    model, dataset, _ = load_model_and_data(str(model_path), TEST_SPEC, None, test_limit, "numpy", config.mode,
                                            config.dtype)
    domain = resolve_domain(config.domain, dataset, model, TEST_SPEC)
    certification = certify(model, dataset.images, dataset.labels, EPS, config, seed=run_seed(config.mode, seed),
                            domain=domain, threads=threads)
    summary = certification.summary()
    summary["certify_seconds"] = summary.pop("seconds")
    summary["best_epoch"] = (model.metadata.get("best") or {}).get("epoch")
    return dict(summary, certification=certification)


def _plot(models, path, say):
    """The comparison plot written to `path` (its path), or None with a line saying why not."""
    from lipref.plots import plot_comparison
    try:
        plot_comparison({f"{bound}-trained": m["certification"] for bound, m in models.items()},
                        path, title=f"{RECIPE.arch}, clipped ReLU, gloro-bcp: certified accuracy on {TEST_SPEC}")
    except MissingExtraError as exc:
        click.echo(f"note: no plot ({exc})", err=True)
        return None
    say(f"plot: {path}")
    return path


def _result(config, train_set, models, out_dir, plot_path):
    """The demo's JSON document (before provenance): the recipe, the data, each model's numbers."""
    first = next(iter(models.values()))
    per_model = {bound: {k: v for k, v in m.items() if k != "certification"} for bound, m in models.items()}
    gain = models["local"]["certified_accuracy_local"] - models["global"]["certified_accuracy_local"]
    return {"eps": EPS, "out": str(out_dir), "plot": plot_path,
            "training": {k: v for k, v in asdict(config).items() if k != "bound"},
            "data": {"train": TRAIN_SPEC, "train_examples": int(train_set.labels.shape[0]), "test": TEST_SPEC,
                     "test_examples": first["n"], "eval_examples": config.eval_limit},
            "models": per_model, "certified_gain": gain}


ROWS = [  # (what, key, format) of the table's rows
    ("clean accuracy", "clean_accuracy", "{:.3f}"),
    ("PGD accuracy ({pgd_steps} steps)", "pgd_accuracy", "{:.3f}"),
    ("certified accuracy, local bound", "certified_accuracy_local", "{:.3f}"),
    ("certified accuracy, global bound", "certified_accuracy_global", "{:.3f}"),
    ("median local/global bound", "median_local_over_global", "{:.4f}"),
    ("mean constant fraction per layer", "mean_constant_fraction", "{}"),
    ("seconds: training (this run)", "train_seconds", "{:.1f}"),
    ("seconds: certifying", "certify_seconds", "{:.1f}"),
]


def _count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _cell(value, fmt):
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join(f"{v:.3f}" for v in value)
    return fmt.format(value)


def _table(result):
    """The side-by-side table, its heading and a line on what was resumed and where things are."""
    models, data, t = result["models"], result["data"], result["training"]
    rows = [{"what": what.format(**models["local"]), **{b: _cell(m[key], fmt) for b, m in models.items()}}
            for what, key, fmt in ROWS]
    columns = [("what", f"eps {result['eps']:g}, {data['test_examples']} test images", "{}")]
    columns += [(b, f"trained with {b} bound", "{}") for b in models]
    heading = (f"{t['arch']} ({t['activation']}), {t['loss']}, eps {t['eps_train']:g}, {_count(t['epochs'], 'epoch')} on "
               f"{data['train_examples']} images of {data['train']}; best.npz chosen on the first "
               f"{data['eval_examples']} test images")
    resumed = [b for b, m in models.items() if m["epochs_trained_now"] < t["epochs"]]
    notes = [f"certified (local bound): {result['certified_gain']:+.3f} for the model trained with the local bound"]
    if resumed:
        notes.append(f"resumed: {', '.join(resumed)} (training seconds are this run's only)")
    where = ", ".join(m["model"] for m in models.values())
    notes.append(f"models: {where}" + (f"; plot: {result['plot']}" if result["plot"] else ""))
    return "\n".join([heading, format_table(rows, columns)] + notes)


def _stop_if_unsound(models):
    """A certified sample broken by PGD inside the ball: SOUNDNESS ERROR and exit code 3, as certify."""
    broken = {b: m["soundness_violations"] for b, m in models.items() if m["soundness_violations"]}
    if broken:
        click.secho(f"SOUNDNESS ERROR: PGD changed the prediction of certified samples {broken} inside the eps-ball. "
                    "The certificate is wrong; please report this with the model and data.", err=True, fg="red",
                    bold=True)
        raise SystemExit(EXIT_UNSOUND)
