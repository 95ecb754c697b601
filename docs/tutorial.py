"""Run docs/tutorial.md's code, keep the outputs and numbers it quotes true, and draw its figures.

    python docs/tutorial.py                 # run; rewrite the page's outputs and quoted numbers; draw its figures
    python docs/tutorial.py --check         # run and compare with the page; exit 1 naming what differs
    python docs/tutorial.py --figures DIR   # run and draw the figures into DIR only (docs/tutorial-*.png)

The page's ```python blocks run in order in one namespace, each with tutorial.md's line numbers
(a traceback names the page's line). The ```text block right after a python block (one blank
line between) is what that block prints: the writer adds one where a block prints and none
follows, and removes one where it prints nothing. In the prose, `<!-- = EXPR -->VALUE<!-- / -->`
quotes a number: VALUE is str(EXPR), evaluated in that namespace after every block has run.
`--backend array_api_strict` runs the page on another array namespace (its import line,
`BACKEND_LINE`, is the one line changed). The figures read the page's variables by name.
"""
import argparse
import contextlib
import difflib
import io
import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE / "tutorial.md"
FIGURES = ("tutorial-plane.png", "tutorial-boxes.png", "tutorial-radius.png")
BACKEND_LINE = "import array_api_compat.numpy as xp"
# a python block, and the text block of its output if one follows after one blank line
BLOCK = re.compile(r"^```python\n(.*?)^```\n(?:\n```text\n(.*?)^```\n)?", re.S | re.M)
QUOTE = re.compile(r"<!-- = (.*?) -->(.*?)<!-- / -->")


def run(text, backend=None):
    """(outputs, namespace): what each python block of `text` prints, in order, and the
    namespace after the last one. backend: a module name to import as `xp` instead of
    array_api_compat.numpy."""
    namespace = {"__name__": "tutorial"}
    outputs = []
    for i, match in enumerate(BLOCK.finditer(text)):
        code = match.group(1)
        if i == 0 and backend is not None:
            if code.count(BACKEND_LINE) != 1:
                raise ValueError(f"the first block must import its namespace as `{BACKEND_LINE}`")
            code = code.replace(BACKEND_LINE, f"import {backend} as xp")
        line = text.count("\n", 0, match.start(1))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile("\n" * line + code, str(PAGE), "exec"), namespace)
        outputs.append(printed.getvalue())
    return outputs, namespace


def render(text, outputs, namespace):
    """`text` with every block's output and every quoted number as the run gave them."""
    blocks = iter(outputs)

    def block(match):
        printed = next(blocks)
        out = f"```python\n{match.group(1)}```\n"
        return out + (f"\n```text\n{printed}```\n" if printed else "")
    text = BLOCK.sub(block, text)
    return QUOTE.sub(lambda m: f"<!-- = {m.group(1)} -->{quoted(m.group(1), namespace)}<!-- / -->", text)


def quoted(expression, namespace):
    """str(expression) in the page's namespace; an error names the expression."""
    try:
        return str(eval(expression, namespace))
    except Exception as error:
        raise ValueError(f"docs/tutorial.md: the quoted number `{expression}` fails: {error!r}") from error


def differences(text, rendered):
    """The lines where the page and a fresh run differ (a unified diff; empty when none)."""
    return list(difflib.unified_diff(text.splitlines(), rendered.splitlines(), "docs/tutorial.md", "a fresh run",
                                     lineterm="", n=1))


# ---------------------------------------------------------------- figures (matplotlib, the `plot` extra)


def draw(namespace, folder):
    """Draw the three figures into folder; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder = Path(folder)
    paths = []
    for name, draw_one in zip(FIGURES, (_plane, _boxes, _radius)):
        fig = draw_one(plt, namespace)
        paths.append(folder / name)
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths


def _host(namespace, a):
    from lipref.backend import to_host
    return to_host(a)


def _on_grid(namespace, lo, hi, n, quantity):
    """quantity(points) (arrays (n*n, 2) -> (n*n, k)) on an n x n grid of [lo, hi]^2, as host
    arrays (X, Y, values (n, n, k))."""
    import numpy
    xp, centre = namespace["xp"], _host(namespace, namespace["x"])[0]
    ticks = numpy.linspace(lo, hi, n)
    X, Y = numpy.meshgrid(ticks + centre[0], ticks + centre[1])
    points = xp.asarray(numpy.stack([X.ravel(), Y.ravel()], axis=1), dtype=xp.float64)
    values = _host(namespace, quantity(points))
    return X, Y, values.reshape(n, n, -1)


def _pre_activations(namespace):
    """points -> the six hidden pre-activations (a, b, c, d, e, f)."""
    xp = namespace["xp"]
    layer1, act1, layer2 = namespace["layer1"], namespace["act1"], namespace["layer2"]
    params = namespace["params"]

    def quantity(points):
        z1 = layer1(points, params(layer1))
        return xp.concat([z1, layer2(act1(z1, params(act1)), params(layer2))], axis=1)
    return quantity


def _regions(ax, namespace, lo, hi, n=400):
    X, Y, logits = _on_grid(namespace, lo, hi, n, lambda p: namespace["model"](p, record=False))
    ax.contourf(X, Y, logits[..., 1] - logits[..., 0], levels=[-1e9, 0, 1e9], colors=["#dbe9f6", "#fbe3d6"])
    ax.contour(X, Y, logits[..., 1] - logits[..., 0], levels=[0], colors="black", linewidths=1.2)


def _ball(ax, namespace, radius, **style):
    import matplotlib.patches as patches
    centre = _host(namespace, namespace["x"])[0]
    ax.add_patch(patches.Circle(centre, radius, fill=False, **style))


NEURON_COLOURS = dict(zip("abcdef", ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#d62728", "#ff7f0e")))


def _plane(plt, namespace):
    fig, (wide, close) = plt.subplots(1, 2, figsize=(12, 5.6))
    eps, centre = namespace["eps"], _host(namespace, namespace["x"])[0]
    _regions(wide, namespace, -1.5, 1.5)
    _ball(wide, namespace, eps, color="black", linewidth=1.5)
    wide.set_title("decision regions (blue: class 0, red: class 1), the ball")
    half = 8 * eps
    _regions(close, namespace, -half, half)
    X, Y, pre = _on_grid(namespace, -half, half, 500, _pre_activations(namespace))
    handles = []
    for k, name in enumerate("abcdef"):
        for level, style, label in ((0.0, "dashed", "0"), (1.0, "dotted", "theta")):
            if pre[..., k].min() < level < pre[..., k].max():
                close.contour(X, Y, pre[..., k], levels=[level], colors=NEURON_COLOURS[name], linewidths=1.6,
                              linestyles=style)
                handles += close.plot([], [], color=NEURON_COLOURS[name], linestyle=style, label=f"{name} = {label}")
    _ball(close, namespace, eps, color="black", linewidth=1.5)
    close.set_title(f"close up: the ball (eps = {eps}) and where each neuron has a kink")
    close.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)
    for ax in (wide, close):
        ax.plot(*centre, "k+", markersize=10)
        ax.set_aspect("equal")
        ax.set_xlabel("x_1")
        ax.set_ylabel("x_2")
    return fig


def _ball_points(namespace, radius, n_angles=720, n_radii=200):
    """A dense polar grid of the closed disc of `radius` around x, as (points (A*S, 2), radii (S,))."""
    import numpy
    centre = _host(namespace, namespace["x"])[0]
    angles = numpy.linspace(0, 2 * math.pi, n_angles, endpoint=False)
    radii = numpy.linspace(0, radius, n_radii)
    points = centre + radii[None, :, None] * numpy.stack([numpy.cos(angles), numpy.sin(angles)], 1)[:, None, :]
    return points.reshape(-1, 2), radii


def _boxes(plt, namespace):
    xp = namespace["xp"]
    points, _ = _ball_points(namespace, namespace["eps"])
    true = _host(namespace, _pre_activations(namespace)(xp.asarray(points, dtype=xp.float64)))
    kinds = {"interval bound": ("interval1", "interval2", "#6baed6", 0.25),
             "ball bound": ("ball1", "ball2", "#74c476", 0.08), "box kept": ("box1", "box2", "#404040", -0.09)}
    sound_d = _host(namespace, namespace["sound"].activations[1].upper)[0, 0]
    notes = ("a: off", "b: free", "c: free", f"d: [0, 0], off\n(sound: +-{sound_d:.2g}, free)", "e: free",
             "f: saturated")
    fig, ax = plt.subplots(figsize=(10, 6))
    for k in range(6):
        y = 5 - k
        for label, (first, second, colour, dy) in kinds.items():
            lower, upper = namespace[first if k < 3 else second]
            lo, up = float(_host(namespace, lower)[0, k % 3]), float(_host(namespace, upper)[0, k % 3])
            ax.plot([lo, up], [y + dy] * 2, color=colour, linewidth=6, solid_capstyle="butt",
                    label=label if k == 0 else None)
            if up == lo:  # a box of one point
                ax.plot([lo], [y + dy], marker="D", color=colour, markersize=6)
        ax.plot([true[:, k].min(), true[:, k].max()], [y - 0.27] * 2, color="#d62728", linewidth=2,
                marker="|", markersize=10, label="range over the ball (dense grid)" if k == 0 else None)
    for v, label in ((0.0, "0"), (1.0, "theta")):
        ax.axvline(v, color="grey", linestyle="--", linewidth=1)
        ax.text(v, 1.01, label, ha="center", fontsize=9, color="grey", transform=ax.get_xaxis_transform())
    ax.set_yticks(range(6), list(reversed(notes)))
    ax.set_ylim(-0.6, 5.8)
    ax.set_xlabel("pre-activation")
    ax.set_title(f"each hidden neuron's pre-activation over the ball (eps = {namespace['eps']}), fast mode",
                 pad=18)
    ax.legend(loc="lower left", fontsize=9, framealpha=0.95)
    return fig


def _certificate_margins(namespace, eps_values):
    """Per eps, z_0 minus class 1's worst-case logit as the certificate bounds it: (local
    ball-and-box, local GloRo, global ball-and-box)."""
    import numpy
    ns = namespace
    xp, onehot, W = ns["xp"], ns["onehot"], ns["W3v"]
    rows = []
    for eps in eps_values:
        row = []
        for bound in ("local", "global"):
            b = ns["network_bounds"](ns["model"], ns["x"], float(eps), ns["BoundOptions"](bound, "fast", 100),
                                     ns["norms"], rng=numpy.random.default_rng(1))
            worst = ns["bcp_worst_logits_upper"](b.logits, W, onehot, b.radius, b.penultimate, b.lower, b.upper)
            row.append(float(b.logits[0, 0] - worst[0, 1]))
            if bound == "local":
                c = ns["c"]
                row.append(float(b.logits[0, 0] - b.logits[0, 1] - b.radius[0] * xp.sqrt(xp.sum(c * c))))
        rows.append(row)
    return numpy.asarray(rows)


def _true_margins(namespace, eps_values):
    """Per eps, the least z_0 - z_1 over the disc of radius eps, on a dense polar grid."""
    import numpy
    xp = namespace["xp"]
    points, radii = _ball_points(namespace, float(eps_values[-1]), 1440, 400)
    logits = _host(namespace, namespace["model"](xp.asarray(points, dtype=xp.float64), record=False))
    margin = (logits[:, 0] - logits[:, 1]).reshape(1440, radii.shape[0]).min(axis=0)
    return numpy.minimum.accumulate(margin)[numpy.searchsorted(radii, eps_values, side="right") - 1]


def _radius(plt, namespace):
    import numpy
    fig, (plane, curve) = plt.subplots(1, 2, figsize=(12, 5.2))
    largest, exact = namespace["largest"], namespace["exact"]
    circles = (("local bound certifies", largest["local", "fast"], "#2ca02c", "-"),
               ("global bound certifies", largest["global", "fast"], "#d62728", "-"),
               ("exact radius (grid)", exact, "black", "--"))
    _regions(plane, namespace, -1.6 * exact, 1.6 * exact)
    for label, radius, colour, style in circles:
        _ball(plane, namespace, radius, color=colour, linestyle=style, linewidth=1.5, label=f"{label}: {radius:.4f}")
    _ball(plane, namespace, namespace["eps"], color="grey", linestyle=":", linewidth=1.2,
          label=f"eps = {namespace['eps']}")
    plane.plot(*_host(namespace, namespace["x"])[0], "k+", markersize=10)
    plane.set_aspect("equal")
    plane.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8)
    plane.set_title("largest certified radii against the exact radius")
    eps_values = numpy.linspace(0.005, 0.2, 40)
    proved = _certificate_margins(namespace, eps_values)
    curve.plot(eps_values, _true_margins(namespace, eps_values), color="black", label="truth: least margin on the ball")
    for col, (label, colour, style) in enumerate((("local, ball-and-box", "#2ca02c", "-"),
                                                  ("local, GloRo's ball", "#2ca02c", ":"),
                                                  ("global, ball-and-box", "#d62728", "-"))):
        curve.plot(eps_values, proved[:, col], color=colour, linestyle=style, label=label)
    curve.axhline(0, color="grey", linewidth=1)
    curve.axvline(exact, color="black", linestyle="--", linewidth=1)
    kink = float(_host(namespace, namespace["kink"])[0])
    curve.axvline(kink, color="#9467bd", linestyle=":", linewidth=1)
    curve.text(kink, 0.27, " c reaches theta", color="#9467bd", fontsize=8, ha="right", rotation=90, va="top")
    curve.text(exact, 0.27, " exact radius", fontsize=8, ha="right", rotation=90, va="top")
    curve.set_xlabel("eps")
    curve.set_ylabel("z_0 - (worst-case z_1)")
    curve.set_ylim(-0.4, 0.3)
    curve.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    curve.set_title("what each certificate proves of the margin")
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with tutorial.md; write nothing")
    parser.add_argument("--figures", metavar="DIR", help="draw the figures into DIR (and write no text)")
    parser.add_argument("--backend", help="the array namespace's module (default: array_api_compat.numpy)")
    args = parser.parse_args(argv)
    text = PAGE.read_text()
    outputs, namespace = run(text, args.backend)
    rendered = render(text, outputs, namespace)
    if args.check:
        diff = differences(text, rendered)
        print("\n".join(diff) if diff else "docs/tutorial.md: every output and quoted number is what the code prints")
        return 1 if diff else 0
    if args.figures:
        for path in draw(namespace, args.figures):
            print(path)
        return 0
    if rendered != text:
        PAGE.write_text(rendered)
    for path in draw(namespace, HERE):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
