"""`lipref certify`, in one process or sharded over a Dask cluster (lipref.distributed), and
what `lipref bound` (commands/bound.py) and `lipref attack` (commands/attack.py) share
with it. Each reads its model file and data, then runs lipref.api's functions (`prepare`,
then `certify_prepared`, `bounds_prepared` or `attack_prepared`): the Python API and the
commands compute the same numbers by the same code."""
import contextlib
import sys
import time
from dataclasses import dataclass

import click

from lipref import api, outputs
from lipref.certification import CertifyConfig
from lipref.commands.common import (
    EXIT_UNSOUND,
    Engine,
    NullBar,
    apply_options,
    backend_option,
    data_choice,
    data_options,
    domain_option,
    dtype_option,
    emit_json,
    format_table,
    gram_limit_option,
    positive_eps,
    progress_bar,
    reference_option,
    seed_option,
    settings_options,
    take,
    threads_option,
    user_errors,
)
from lipref.errors import InputError
from lipref.distributed import Sharding
from lipref.inputs import load_data_as_given, load_model_file
from lipref.kernels import reference_only_if

SAME_ANSWERS = ("The results equal a single-process run's, bit for bit: every random draw comes from the seed and "
                "the sample's index, never from a shard or a worker.")
distributed_options = [
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="Cut the samples into shards computed by a Dask LocalCluster of N worker processes on this "
                      "machine, one thread each (pip install 'lipref[distributed]'). " + SAME_ANSWERS),
    click.option("--scheduler", default=None, metavar="ADDRESS",
                 help="Cut the samples into shards computed on the Dask cluster of the scheduler at ADDRESS "
                      "(tcp://host:8786); every worker must read MODEL's file at the same path (its sha256 is "
                      "checked). " + SAME_ANSWERS),
    click.option("--shard-size", type=click.IntRange(min=1), default=None,
                 help="Samples per shard, a multiple of --batch-size (default: one batch)."),
    click.option("--shards-dir", type=click.Path(file_okay=False), default=None,
                 help="Write each finished shard's results into this folder as it arrives (with a manifest of the "
                      "run), so that --resume can continue an interrupted run; without --workers or --scheduler "
                      "the shards run in this process."),
    click.option("--resume", is_flag=True,
                 help="Continue the run in --shards-dir: compute only the shards missing there (refused if the "
                      "folder was made with other options, model or data; the seed is the folder's). A shard file "
                      "that is not this run's (other samples, data, options; truncated, empty, an array missing) "
                      "is recomputed, with a line on stderr."),
]


CERTIFY_SEED = ("Seed of every random draw: power-iteration (fast) or Lanczos (sound) starts, PGD starts. Default: "
                "0 in fast mode; in sound mode fresh OS entropy (so that a model cannot have been fitted to a "
                "public seed), or with --resume the shard folder's. The seed used is in the JSON output.")
def _given_seed(seed, sharding):
    """--seed, or the seed a resumed shard folder recorded (None: api.prepare chooses)."""
    from lipref.distributed import resumed_seed
    return resumed_seed(sharding.folder, sharding.resume) if seed is None else seed


@contextlib.contextmanager
def _shard_progress(total, label, enabled):
    """update(n) for one bar over a sharded run's samples: done / total, rate and time left."""
    started = time.perf_counter()
    with click.progressbar(length=total, label=label, file=sys.stderr if enabled else NullBar(), show_pos=True,
                           show_eta=True, item_show_func=lambda text: text) as bar:
        def update(n):
            rate = (bar.pos + n) / max(time.perf_counter() - started, 1e-9)
            bar.update(n, f"{rate:.1f} samples/s")
        yield update


def _plan_shards(model_path, dataset, options, sharding, run_options):
    """The run's lipref.distributed.ShardPlan (None when not sharded), with a line on stderr
    for each shard file of the folder that is recomputed. run_options: the options that can
    change a number besides `options` (recorded in the folder's manifest)."""
    from lipref.distributed import plan_shards
    if not sharding.requested:
        return None
    plan = plan_shards(model_path, dataset.images, dataset.labels, options, sharding, run_options)
    for line in plan.stale:
        click.echo(line, err=True)
    return plan


def _run_options(data_spec, limit, gram_limit):
    """The options besides ShardOptions that a shard folder's manifest records: the data as
    named and --gram-limit (the global norms)."""
    return {"data_spec": data_spec, "limit": limit, "gram_limit": gram_limit}


def run_sharded(model_path, dataset, options, norms, sharding, plan, threads, label, quiet):
    """(the joined result, the JSON's "workers", "shards" and "shards_computed"): the run cut
    into shards (lipref.distributed, `plan` from plan_shards), computed where `sharding` says."""
    from lipref import distributed
    with _shard_progress(int(dataset.labels.shape[0]), label, not quiet) as progress:
        run = distributed.run_sharded(model_path, dataset.images, dataset.labels, options, norms, sharding,
                                      progress, threads, plan)
    return distributed.joined_shards(run, options), distributed.summary(run)


def load_given(model_path, data, mode, dtype, engine, seed, domain="auto"):
    """api.prepare on the model file at its precision and the data as given (float64 where
    the run computes in float64); a line on stderr when --dtype rounds the model."""
    native = load_model_file(model_path, "numpy")
    dataset = load_data_as_given(data.spec, data.folder, data.limit, mode, dtype, native)
    run = api.prepare(native, dataset, mode, dtype, domain, seed, engine.backend, (model_path, data.spec))
    note = run.rounding_note()
    if note is not None:
        click.echo(note, err=True)
    return run


# ----------------------------------------------------------------------------------- certify

def run_global_norms(model, config, seed, verbose):
    """The run's global norms (CertifyConfig.global_norms), computed once before any batch or
    shard; in sound mode with a line on stderr (its slowest step; see BENCHMARKS.md)."""
    sound = verbose and config.mode == "sound"
    if sound:
        click.echo("sound mode: certifying each layer's global norm (once per model) ...", err=True)
    start = time.perf_counter()
    norms = config.global_norms(model, seed)
    if sound:
        click.echo(f"sound mode: global norms certified in {time.perf_counter() - start:.1f} s", err=True)
    return norms


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@apply_options(data_options)
@click.option("--eps", type=float, required=True, callback=positive_eps, help="Radius of the l2 ball.")
@apply_options(settings_options(CertifyConfig, "mode", "n_iters", "pgd_steps", "pgd_restarts", "batch_size",
                                n_iters={"flag": "--iters"}))
@domain_option
@dtype_option
@gram_limit_option
@threads_option
@backend_option
@seed_option(CERTIFY_SEED)
@reference_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {clean_accuracy, certified_accuracy_global, certified_accuracy_local, pgd_accuracy, n, "
                   "seed, reference, ...} as JSON (lipref.certify(...).summary() with model, data, provenance).")
@click.option("--samples", "samples_path", type=click.Path(dir_okay=False), default=None,
              help="Also write per-sample results (bounds, radii, certificates) as JSON to this file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw certified accuracy against radius into this PNG file.")
@click.option("--audit", is_flag=True,
              help="Fast mode only: certify the same samples in sound mode too (PGD checks both) and report how "
                   "many of the estimates' certificates (the paper's evaluation) hold there, how many PGD broke "
                   "(a finding: estimates can do that), and the median ratio of the estimated to the sound local "
                   "bound (docs/auditing.md). Only a sound certificate broken by PGD is a soundness error (exit "
                   "code 3). The sound run's seed comes from OS entropy and is recorded as audit.seed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@apply_options(distributed_options)
@user_errors
def certify(model_path, eps, **options):
    """Certify MODEL on a dataset at radius EPS: clean, certified (global and local) and PGD accuracy.
    MODEL: a lipref .npz, a torch .pth / .pt checkpoint or an .onnx model (imported in memory).

    What is certified: the model's parameters as stored (float32 weights computed in float64
    in sound mode) at the data as read (float64 data stay float64).

    With --workers N or --scheduler ADDRESS the samples are cut into shards computed on a
    Dask cluster; the results equal a single-process run's bit for bit (every random draw
    comes from the seed and the sample's index), and the JSON adds workers and shards."""
    config, data, engine = take(options, CertifyConfig), data_choice(options), take(options, Engine)
    sharding = take(options, Sharding, folder="shards_dir")
    out = take(options, CertifyOutputs)
    if out.audit and config.mode != "fast":
        raise InputError("--audit compares power-iteration estimates with sound bounds: use it with --mode fast")
    if out.audit and sharding.requested:
        raise InputError("--audit runs in one process: drop --workers, --scheduler and --shards-dir")
    run = prepare_run(model_path, eps, "certify", config, data, engine, sharding, pgd=True)
    result, extra = _certified(run, config, engine, sharding, out.quiet)
    summary = {"model": model_path, "data": data.spec, **result.summary(), **extra}
    sound = None
    if out.audit:
        with reference_only_if(engine.reference):
            summary["audit"], sound = _audit(result, model_path, data, eps, config, run.given.domain, engine, out.quiet)
        # the estimates' broken certificates are the audit's finding; only sound ones can be unsound
        summary["soundness_violations"] = summary["audit"]["sound_broken_samples"]
    _write_outputs(out, result, sound, f"{model_path} on {data.spec}", engine.reference)
    if out.as_json:
        emit_json(summary)
    else:
        _print_certification(summary, f"{model_path} on {data.spec} ({run.n} examples), eps = {eps:g}, mode = "
                                      f"{config.mode}", config.pgd_steps)
    _report_verdicts(summary)


@dataclass(frozen=True)
class CertifyOutputs:
    """What `lipref certify` writes besides its table: --json, --samples, --plot; --audit, --quiet."""
    as_json: bool = False
    samples_path: str = None
    plot_path: str = None
    audit: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class _Run:
    """A certify or bound run once its inputs are read and checked (`given`: api.Prepared, the
    model, data, compute dtype, seed and PGD's domain), with its shard options and plan."""
    model_path: str
    eps: float
    given: object
    shard_options: object
    plan: object

    @property
    def n(self):
        return int(self.given.dataset.labels.shape[0])


def prepare_run(model_path, eps, command, config, data, engine, sharding, pgd):
    """The run's `_Run`: model and data read and checked (`load_given`), the seed chosen (a
    resumed folder's), the data's fit to the model's input range checked (PGD's domain when
    `pgd`, else none), a shard folder that does not fit refused now."""
    from dataclasses import replace

    from lipref.distributed import ShardOptions
    given = load_given(model_path, data, config.mode, config.dtype, engine, _given_seed(engine.seed, sharding),
                    config.domain)
    given = given if pgd else replace(given, domain=None)
    pgd_steps, pgd_restarts = (config.pgd_steps, config.pgd_restarts) if pgd else (0, 1)
    options = ShardOptions(command, eps, config.mode, config.n_iters, config.batch_size, given.seed, engine.backend,
                           given.dtype, engine.reference, pgd_steps, pgd_restarts, given.domain)
    plan = _plan_shards(model_path, given.dataset, options, sharding,
                        _run_options(data.spec, data.limit, config.gram_limit))
    return _Run(model_path, eps, given, options, plan)


def _certified(run, config, engine, sharding, quiet):
    """(the Certification, the JSON's sharding keys): one process (api.certify_prepared) or shards."""
    given = run.given
    with reference_only_if(engine.reference):
        norms = run_global_norms(given.model, config, given.seed, not quiet)
        if sharding.requested:
            result, extra = run_sharded(run.model_path, given.dataset, run.shard_options, norms, sharding, run.plan,
                                         engine.threads, "certifying", quiet)
            result.context = api.certify_context(given, engine.reference)
            return result, extra
        with progress_bar(run.n, "certifying", not quiet) as bar:
            result = api.certify_prepared(given, run.eps, config, norms=norms, progress=bar.update,
                                          threads=engine.threads, reference=engine.reference)
    return result, {}


def _write_outputs(out, result, sound, title, reference):
    """--samples (with the run's provenance; reference: --reference) and --plot (the audit's
    plot when `sound`, the audit's sound Certification)."""
    from lipref.models import atomic_write_bytes
    if out.samples_path:
        doc = outputs.with_provenance({"samples": result.samples()}, reference)
        atomic_write_bytes(out.samples_path, outputs.dumps(doc, indent=1).encode("utf-8"))
    if out.plot_path:
        from lipref.plots import plot_audit, plot_certified_accuracy
        if sound is None:
            plot_certified_accuracy(result, out.plot_path, title=title)
        else:
            plot_audit(result, sound, out.plot_path, title=f"{title}, audit")


def _report_verdicts(summary):
    """The audit's finding on stderr (estimate certificates broken by PGD); a certificate lipref
    calls sound broken by PGD: SOUNDNESS ERROR and exit code 3."""
    audit = summary.get("audit")
    if audit and audit["estimate_broken_by_pgd"]:
        click.secho(f"audit finding: PGD broke {audit['estimate_broken_by_pgd']} of the "
                    f"{audit['estimate_certificates']} estimate certificates (samples "
                    f"{audit['estimate_broken_samples']}): certificates from power-iteration estimates, which can "
                    "sit below the true norms; the sound run's are the guaranteed ones (docs/auditing.md).",
                    err=True, fg="yellow")
    if summary["soundness_violations"]:
        what = "samples certified in sound mode by the audit" if audit else "certified samples"
        click.secho(f"SOUNDNESS ERROR: PGD changed the prediction of {what} {summary['soundness_violations']} "
                    "inside the eps-ball. The certificate is wrong; please report this with the model and data.",
                    err=True, fg="red", bold=True)
        sys.exit(EXIT_UNSOUND)


def _print_certification(summary, heading, pgd_steps):
    """certify's table: accuracies, the median bound ratio and, with --audit, the audit's rows."""
    click.echo(heading)
    rows = [{"what": "clean accuracy", "value": summary["clean_accuracy"]},
            {"what": f"PGD accuracy ({pgd_steps} steps)", "value": summary["pgd_accuracy"]},
            {"what": "certified accuracy, global bound", "value": summary["certified_accuracy_global"]},
            {"what": "certified accuracy, local bound", "value": summary["certified_accuracy_local"]},
            {"what": "median local/global bound", "value": summary["median_local_over_global"]}]
    click.echo(format_table(rows + _audit_rows(summary.get("audit")),
                            [("what", "quantity", "{}"), ("value", "value", "{:.4f}")]))
    click.echo(f"{summary['seconds']:.1f} s")


def _audit(estimate, model_path, data, eps, config, pgd_domain, engine, quiet):
    """(the audit's summary, the sound Certification): sound-mode certification of the samples
    `estimate` (a fast run of `config`) certified, checked by PGD (the same steps, restarts and
    domain) in its own float64 arithmetic, compared with the estimate."""
    from dataclasses import replace

    from lipref.audit import audit_summary
    sound_config = replace(config, mode="sound", dtype="auto")
    given = load_given(model_path, data, "sound", "auto", engine, None, pgd_domain)  # seed from OS entropy
    norms = run_global_norms(given.model, sound_config, given.seed, not quiet)
    with progress_bar(int(given.dataset.labels.shape[0]), "auditing (sound mode)", not quiet) as bar:
        sound = api.certify_prepared(given, eps, sound_config, norms=norms, progress=bar.update,
                                     threads=engine.threads, reference=engine.reference)
    return {**audit_summary(estimate, sound), "seed": given.seed,
            "sound_certified_accuracy_local": float(sound.certified_local.mean())}, sound


def _audit_rows(audit):
    if audit is None:
        return []
    return [{"what": f"audit: of the estimates' {audit['estimate_certified']} certificates, the fraction sound",
             "value": audit["fraction_confirmed"]},
            {"what": "audit: certified accuracy in sound mode", "value": audit["sound_certified_accuracy_local"]},
            {"what": "audit: median estimate / sound local bound",
             "value": audit["median_estimate_over_sound"]},
            {"what": f"audit: estimate certificates broken by PGD ({_count(audit['estimate_broken_by_pgd'])} of "
                     f"{audit['estimate_certificates']}), fraction",
             "value": _fraction(audit["estimate_broken_by_pgd"], audit["estimate_certificates"])}]


def _count(k):
    return "no attack" if k is None else k


def _fraction(k, n):
    return None if k is None or not n else k / n
