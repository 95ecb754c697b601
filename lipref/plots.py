"""Plots (matplotlib, the optional `plot` extra): certified accuracy against radius."""
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


def plot_certified_accuracy(result, path, title=""):
    """Certified accuracy against radius from a `Certification`, written atomically as PNG.

    Global bound: a sample's radius is exact for the GloRo margin, so the curve is drawn on
    [0, 2 eps]. Local bound: valid up to eps (the ball its bound was computed on)."""
    plt = pyplot()
    eps = result.eps if result.eps > 0 else 1.0
    radii = host.linspace(0.0, 2 * eps, 101)
    curve = certified_accuracy_curve(result, radii)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([r["radius"] for r in curve], [r["global"] for r in curve], label="global bound")
    local = [r for r in curve if "local" in r]
    ax.plot([r["radius"] for r in local], [r["local"] for r in local], label="local bound")
    if result.pgd_broken is not None:
        pgd = float((result.correct & ~result.pgd_broken).mean())
        ax.scatter([result.eps], [pgd], marker="x", color="black", label=f"PGD accuracy at eps={result.eps:g}")
    ax.axvline(result.eps, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("l2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
