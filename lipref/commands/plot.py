"""`lipref plot RUN_DIR`: a training run's history drawn (finished, interrupted or running)."""
import click

from lipref.commands.common import user_errors


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="The PNG file to write (default: RUN_DIR/history.png).")
@user_errors
def plot(run_dir, out_path):
    """Draw the per-epoch history of the training run in RUN_DIR (its history.json, written after
    every epoch; a run an older lipref interrupted: its checkpoint): the losses, clean and
    certified accuracy, and the eps, kappa and learning-rate schedule. Needs matplotlib
    (pip install 'lipref[plot]')."""
    from lipref.plots import plot_run
    click.echo(f"wrote {plot_run(run_dir, out_path)}")
