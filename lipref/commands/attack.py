"""`lipref attack`: the empirical robust accuracy of a model under an l2 PGD attack (an upper
bound on its certified accuracy), on the model and data read as `lipref certify` reads them."""
import click

from lipref import api
from lipref.certification import CertifyConfig
from lipref.commands.certify import load_given
from lipref.commands.common import (
    Engine,
    apply_options,
    backend_option,
    data_choice,
    data_options,
    domain_option,
    emit_json,
    format_table,
    positive_eps,
    seed_option,
    setting_option,
    settings_options,
    take,
    threads_option,
    user_errors,
)
from lipref.errors import InputError
from lipref.pgd import AttackConfig

ATTACK_SEED = "Seed of PGD's random starts (one generator, drawn batch by batch). Default: 0; in the JSON output."
ATTACK_DTYPE = ("Floating-point type of the attack. auto: float32 unless the data or the model's parameters hold "
                "values float32 cannot (then float64). float32 with a float64 model attacks the model rounded to "
                "float32 (said on stderr; model_rounded in the JSON).")


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@apply_options(data_options)
@click.option("--eps", type=float, required=True, callback=positive_eps, help="Radius of the l2 ball.")
@apply_options(settings_options(AttackConfig, "steps", "step_size", "restarts"))
@setting_option(CertifyConfig, "batch_size")
@domain_option
@setting_option(CertifyConfig, "dtype", help=ATTACK_DTYPE)
@threads_option
@backend_option
@seed_option(ATTACK_SEED)
@click.option("--json", "as_json", is_flag=True,
              help="Print {clean_accuracy, pgd_accuracy, n, seed, dtype, domain, ...} as JSON "
                   "(lipref.attack(...).summary() with model, data, provenance).")
@user_errors
def attack(model_path, eps, as_json, **options):
    """Empirical robust accuracy of MODEL under an l2 PGD attack (an upper bound on certified accuracy)."""
    pgd, config = take(options, AttackConfig), take(options, CertifyConfig)  # certify's batch size, domain, dtype
    data, engine = data_choice(options), take(options, Engine)
    if pgd.step_size is not None and not 0 < pgd.step_size < float("inf"):
        raise InputError(f"--step-size must be finite and > 0, got {pgd.step_size}")
    given = load_given(model_path, data, "fast", config.dtype, engine, engine.seed, config.domain)
    result = api.attack_prepared(given, eps, pgd, config.batch_size, engine.threads)
    out = {"model": model_path, "data": data.spec, **result.summary()}
    if as_json:
        emit_json(out)
    else:
        columns = [
            ("n", "n", "{}"),
            ("eps", "eps", "{:g}"),
            ("clean_accuracy", "clean", "{:.4f}"),
            ("pgd_accuracy", "PGD", "{:.4f}"),
        ]
        click.echo(format_table([out], columns))
