"""Plots (matplotlib, the optional `plot` extra): certified accuracy against radius, the
audit's estimates against its sound bounds, and a training run's history."""
import io
from pathlib import Path

from .backend import host
from .certification import certified_accuracy_curve
from .errors import MissingExtraError
from .history import read_history
from .models import atomic_write_bytes


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("plots need matplotlib: pip install 'lipref[plot]'") from None
    return plt


def _draw_curves(ax, result, labels, **style):
    """The global curve on [0, 2 eps] (a sample's radius is exact for the GloRo margin) and the
    local one on [0, eps] (the ball its bound was computed on); labels: (global, local)."""
    eps = result.eps if result.eps > 0 else 1.0
    curve = certified_accuracy_curve(result, host.linspace(0.0, 2 * eps, 101))
    ax.plot([r["radius"] for r in curve], [r["global"] for r in curve], label=labels[0], **style.get("global", {}))
    local = [r for r in curve if "local" in r]
    ax.plot([r["radius"] for r in local], [r["local"] for r in local], label=labels[1], **style.get("local", {}))


def _write_png(plt, fig, path):
    """The figure as PNG, written atomically; the figure closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pgd_marker(ax, result, label="PGD accuracy", color="black"):
    """PGD's accuracy at eps (when an attack ran), as a cross."""
    if result.pgd_broken is not None:
        pgd = float((result.correct & ~result.pgd_broken).mean())
        ax.scatter([result.eps], [pgd], marker="x", color=color, label=f"{label} at eps={result.eps:g}")


def _finish(plt, fig, ax, result, title, path, pgd=True):
    """PGD's accuracy at eps (unless drawn already), axes, legend; the PNG written atomically."""
    if pgd:
        _pgd_marker(ax, result)
    ax.axvline(result.eps, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("l2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _write_png(plt, fig, path)


def plot_certified_accuracy(result, path, title=""):
    """Certified accuracy against radius from a `Certification`, written atomically as PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    _draw_curves(ax, result, ("global bound", "local bound"))
    _finish(plt, fig, ax, result, title, path)


def plot_comparison(results, path, title=""):
    """Certified accuracy against radius of several models at one eps, results {name:
    Certification}: each model in its colour, its global bound dashed, its local bound solid,
    its PGD accuracy at eps a cross; written atomically as PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for (name, result), color in zip(results.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        _draw_curves(ax, result, (f"{name}, global bound", f"{name}, local bound"),
                     **{"global": {"color": color, "linestyle": "--"}, "local": {"color": color}})
        _pgd_marker(ax, result, f"{name}, PGD", color)
    _finish(plt, fig, ax, next(iter(results.values())), title, path, pgd=False)


def audit_labels(estimate):
    """The four curves of `plot_audit`, as the legend names them."""
    how = f"estimates (power iteration, --iters {estimate.n_iters})"
    return (f"global bound, {how}", f"local bound, {how}", "global bound, sound", "local bound, sound")


def plot_audit(estimate, sound, path, title=""):
    """The audit's plot: certified accuracy against radius from the estimates (fast mode, dashed)
    and from the sound bounds (solid), each labelled, beside PGD's accuracy at eps; written
    atomically as PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    labels = audit_labels(estimate)
    dashed = {"linestyle": "--"}
    _draw_curves(ax, estimate, labels[:2], **{"global": dict(dashed, color="tab:blue"),
                                              "local": dict(dashed, color="tab:orange")})
    _draw_curves(ax, sound, labels[2:], **{"global": {"color": "tab:blue"}, "local": {"color": "tab:orange"}})
    _finish(plt, fig, ax, estimate, title, path)


# the training plot's panels: (title, [(history key, label)]); lr goes on the schedule's second axis
TRAINING_PANELS = (
    ("training loss (mean over the epoch)", [("loss", "loss minimised"), ("robust_loss", "robust part"),
                                             ("clean_loss", "cross-entropy")]),
    ("evaluation at eps", [("clean_accuracy", "clean"), ("certified_accuracy_local", "certified, local bound"),
                           ("certified_accuracy_global", "certified, global bound")]),
    ("schedule (at the epoch's last step)", [("eps_train", "training eps"), ("kappa", "kappa")]),
)


def _series(history, key):
    """(epochs, values) of `key` over the records that hold a number for it."""
    points = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), (int, float))]
    return [e for e, _ in points], [v for _, v in points]


def plot_history(history, path, title=""):
    """A training run's history (history.json's per-epoch records) as three panels: the losses,
    clean and certified accuracy, and the schedule (eps, kappa; the learning rate on a log
    axis); values a record lacks (an older lipref's) are left out. Written atomically as PNG."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    for ax, (name, lines) in zip(axes, TRAINING_PANELS):
        for key, label in lines:
            epochs, values = _series(history, key)
            if values:
                ax.plot(epochs, values, marker=".", label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
    axes[1].set_ylim(0, 1)
    if history and "eps" in history[-1]:
        axes[1].set_title(f"evaluation at eps {history[-1]['eps']:g} ({history[-1].get('n', '?')} examples)",
                          fontsize=9)
    epochs, lrs = _series(history, "lr")
    if lrs:
        lr_axis = axes[2].twinx()
        lr_axis.plot(epochs, lrs, color="tab:red", marker=".", label="learning rate")
        lr_axis.set_yscale("log")
        lr_axis.legend(fontsize=8, loc="center right")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _write_png(plt, fig, path)


def plot_run(run_dir, path=None):
    """`plot_history` of run folder `run_dir` (its history.json, or an older run's checkpoint)
    into `path` (default RUN_DIR/history.png), titled with the run's progress; returns the path."""
    document = read_history(run_dir)
    path = Path(run_dir) / "history.png" if path is None else path
    history, config = document["history"], document.get("config") or {}
    done = f"{len(history)} of {config['epochs']} epochs" if "epochs" in config else f"{len(history)} epochs"
    what = ", ".join(f"{k} {config[k]}" for k in ("arch", "bound", "loss") if k in config)
    plot_history(history, path, title=f"{run_dir}: {done}" + (f" ({what})" if what else ""))
    return path
