"""Plots (matplotlib, the optional `plot` extra): certified accuracy against radius, and the
audit's estimates against its sound bounds."""
import io

from .backend import host
from .certify import certified_accuracy_curve
from .errors import MissingExtraError
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


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
