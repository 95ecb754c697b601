"""`lipref bound`: the global and local Lipschitz bounds of a model per sample, in one
process or sharded over a Dask cluster as `lipref certify` is (lipref/commands/certify.py
reads the model and data and plans the shards; lipref.api computes)."""
import click

from lipref import api
from lipref.backend import host
from lipref.certification import CertifyConfig, local_over_global
from lipref.commands.certify import (
    distributed_options,
    prepare_run,
    run_global_norms,
    run_sharded,
)
from lipref.commands.common import (
    Engine,
    apply_options,
    backend_option,
    data_choice,
    data_options,
    dtype_option,
    emit_json,
    format_table,
    gram_limit_option,
    positive_eps,
    progress_bar,
    reference_option,
    seed_option,
    setting_option,
    settings_options,
    take,
    threads_option,
    user_errors,
)
from lipref.distributed import Sharding
from lipref.kernels import reference_only_if

BOUND_SEED = ("Seed of the power-iteration (fast) or Lanczos (sound) starts. Default: 0 in fast mode; in sound mode "
              "fresh OS entropy, or with --resume the shard folder's. The seed used is in the JSON output.")


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@apply_options(data_options)
@click.option("--eps", type=float, required=True, callback=positive_eps, help="Radius of the l2 ball.")
@apply_options(settings_options(
    CertifyConfig, "n_iters", "mode", "batch_size",
    n_iters={"flag": "--iters", "help": "Power-iteration (fast) or Lanczos (sound) steps per layer."},
    mode={"help": "fast: power-iteration estimates; sound: upper bounds (float64)."}))
@dtype_option
@setting_option(CertifyConfig, "domain", help="The data's domain, checked against the model's input range as for "
                "certify (auto: refuse data outside the range the model records; LO,HI or none: use them as they "
                "are). No attack runs here.")
@gram_limit_option
@threads_option
@backend_option
@seed_option(BOUND_SEED)
@reference_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {model, data, eps, mode, iters, seed, dtype, model_rounded, reference, samples: [{index, "
                   "label, prediction, global, local, constant_fraction}]} (sharded: also workers, shards, "
                   "shards_computed).")
@apply_options(distributed_options)
@user_errors
def bound(model_path, eps, as_json, **options):
    """Global and local Lipschitz bounds of MODEL per sample, and the fraction of constant neurons.
    MODEL: a lipref .npz, a torch .pth / .pt checkpoint or an .onnx model (imported in memory).

    With --workers N or --scheduler ADDRESS the samples are cut into shards computed on a
    Dask cluster; the bounds equal a single-process run's bit for bit."""
    config, data, engine = take(options, CertifyConfig), data_choice(options), take(options, Engine)
    sharding = take(options, Sharding, folder="shards_dir")
    run = prepare_run(model_path, eps, "bound", config, data, engine, sharding, pgd=False)
    given, extra = run.given, {}
    with reference_only_if(engine.reference):
        norms = run_global_norms(given.model, config, given.seed, True)
        if sharding.requested:
            rows, extra = run_sharded(model_path, given.dataset, run.shard_options, norms, sharding, run.plan,
                                       engine.threads, "bounding", False)
            result = api.bounds_of(given, eps, config, engine.reference, rows)
        else:
            with progress_bar(run.n, "bounding", True) as bar:
                result = api.bounds_prepared(given, eps, config, norms=norms, progress=bar.update,
                                             threads=engine.threads, reference=engine.reference)
    samples = result.samples()
    if as_json:
        summary = result.summary()
        del summary["samples"]  # last, after the sharding keys
        emit_json({"model": model_path, "data": data.spec, **summary, **extra, "samples": samples})
        return
    ratios = local_over_global(*(host.asarray([r[k] for r in samples]) for k in ("local", "global")))
    rows = [dict(r, ratio=float(q), const=" ".join(f"{c:.2f}" for c in r["constant_fraction"]))
            for r, q in zip(samples, ratios)]
    columns = [
        ("index", "index", "{}"),
        ("label", "label", "{}"),
        ("prediction", "pred", "{}"),
        ("global", "global", "{:.4g}"),
        ("local", "local", "{:.4g}"),
        ("ratio", "local/global", "{:.3f}"),
        ("const", "constant fraction per layer", "{}"),
    ]
    click.echo(format_table(rows, columns))
