"""docs/tutorial.md runs, and says what its code prints now.

Every code block runs in order (on each test backend: the page's `xp` import is the one line
changed), and every output block and quoted number is compared with that run
(`docs/tutorial.py`, the page's runner); a stale number fails, and so does the runner's
`--check`. The figures are drawn into a temporary folder (skipped, with the reason, without
matplotlib). The page's claims are checked against ground truth: its grid radius against the
exact radius of tests/exact_radius.py, every certified radius below it, and the cases the
page is built to show (a neuron off, one saturated, one at exactly [0, 0] that only fast mode
calls constant).
"""
import importlib.util
import math
from pathlib import Path

import numpy
import pytest
from exact_radius import ExactNet, exact_radius

from lipref.backend import to_host

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lipref_tutorial", ROOT / "docs" / "tutorial.py")
tutorial = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tutorial)

_RUNS = {}  # backend module -> (outputs, namespace): one run of the page per backend


def page_run(xp):
    name = xp.__name__
    if name not in _RUNS:
        _RUNS[name] = tutorial.run(tutorial.PAGE.read_text(), name)
    return _RUNS[name]


def numpy_run():
    import array_api_compat.numpy as xp
    return page_run(xp)


def test_the_page_says_what_its_code_prints(xp):
    text = tutorial.PAGE.read_text()
    outputs, namespace = page_run(xp)
    diff = tutorial.differences(text, tutorial.render(text, outputs, namespace))
    assert not diff, "docs/tutorial.md is stale (python docs/tutorial.py rewrites it):\n" + "\n".join(diff)


def test_the_page_quotes_numbers_and_outputs():
    """The comparison has something to compare: outputs after most blocks, numbers in the prose."""
    text = tutorial.PAGE.read_text()
    blocks = list(tutorial.BLOCK.finditer(text))
    assert len(blocks) >= 10 and sum(1 for b in blocks if b.group(2)) >= 10
    assert len(tutorial.QUOTE.findall(text)) >= 15


def test_a_stale_number_or_output_is_caught(tmp_path, monkeypatch, capsys):
    text = tutorial.PAGE.read_text()
    outputs, namespace = numpy_run()
    number = "<!-- = num(L_global) -->5.728<!-- / -->"
    line = "local norm of layer 1: [1.414]   global norm: [3.162]"
    assert number in text and line in text
    stale_number, stale_output = number.replace("5.728", "5.73"), line.replace("3.162", "3.2")
    for stale in (text.replace(number, stale_number), text.replace(line, stale_output)):
        diff = tutorial.differences(stale, tutorial.render(stale, outputs, namespace))
        assert any(d.startswith("-") and ("5.73" in d or "3.2]" in d) for d in diff), diff
    page = tmp_path / "tutorial.md"
    page.write_text(text.replace(number, stale_number))
    monkeypatch.setattr(tutorial, "PAGE", page)
    assert tutorial.main(["--check"]) == 1
    assert "-->5.73<!--" in capsys.readouterr().out
    assert page.read_text() != text  # --check writes nothing


def test_the_figures_are_drawn(tmp_path):
    pytest.importorskip("matplotlib", reason="the figures need matplotlib (the `plot` extra); the text is checked "
                                             "without it")
    from PIL import Image
    _, namespace = numpy_run()
    paths = tutorial.draw(namespace, tmp_path)
    assert [p.name for p in paths] == list(tutorial.FIGURES)
    for path in paths:
        with Image.open(path) as image:
            assert image.width >= 800 and image.height >= 400, (path.name, image.size)
            assert len(image.convert("RGB").getcolors(1 << 20)) > 20, f"{path.name} is nearly blank"
    assert all((ROOT / "docs" / name).exists() for name in tutorial.FIGURES), "the page's figures are committed"


def test_the_grid_radius_is_the_exact_radius_and_every_certificate_is_below_it():
    _, ns = numpy_run()
    exact = exact_radius(ExactNet.from_model(ns["model"]), to_host(ns["x"])[0], 0)
    lower, upper = math.sqrt(float(exact.lower_sq)), math.sqrt(float(exact.upper_sq))
    assert lower <= ns["exact"] <= upper + 1e-9, (lower, ns["exact"], upper)  # the page says: within 1e-9
    certified = list(ns["largest"].values()) + [float(ns["certify_bounds"](
        ns["glob"], ns["W3v"], ns["b3v"], ns["onehot"], ns["eps"], False, cap_at_eps=False)[1][0])]
    assert all(0 < r < lower for r in certified), (certified, lower)
    assert ns["eps"] < ns["largest"]["local", "fast"] and ns["largest"]["global", "fast"] < ns["eps"]


def test_the_cases_the_page_shows_are_there():
    _, ns = numpy_run()
    local, sound, theta = ns["local"], ns["sound"], 1.0
    first, second = (to_host(a.lower)[0] for a in local.activations), (to_host(a.upper)[0] for a in local.activations)
    (lo1, lo2), (up1, up2) = first, second
    assert up1[0] <= 0 and lo1[1] > 0 and up1[2] < theta  # a off; b and c free, on their linear piece
    assert lo2[0] == 0 == up2[0]  # d: exactly [0, 0]
    assert 0 < lo2[1] and up2[1] < theta and lo2[2] >= theta  # e free, linear; f saturated
    assert to_host(local.activations[1].output_mask)[0].tolist() == [0, 1, 0]
    assert to_host(sound.activations[1].output_mask)[0].tolist() == [1, 1, 0]
    e = float(to_host(sound.activations[1].upper)[0, 0])
    assert 0 < e < 1e-13 and float(to_host(sound.activations[1].lower)[0, 0]) == -e
    assert e == float(to_host(ns["e2"])[0, 0])  # the page's e, computed from rounding.py, is the walk's
    assert float(to_host(sound.lower)[0, 0]) == 0 and float(to_host(sound.upper)[0, 0]) == e  # d's output box
    # the local bound is the network's Lipschitz constant on the ball, sqrt 5, which the global bound is far above
    assert abs(float(to_host(local.lipschitz)[0]) - math.sqrt(5)) < 1e-12
    assert float(to_host(sound.lipschitz)[0]) >= math.sqrt(5)
    assert float(ns["L_global"]) > 2.5 * math.sqrt(5)


def test_the_readme_points_to_the_tutorial():
    readme = (ROOT / "README.md").read_text()
    assert "docs/tutorial.md" in readme[:readme.index("## What it computes")]


def test_the_page_runs_on_the_plain_definitions():
    """With the kernels off (LIPREF_REFERENCE=1's switch), the page prints the same."""
    from lipref.kernels import reference_only
    text = tutorial.PAGE.read_text()
    with reference_only():
        outputs, namespace = tutorial.run(text)
    assert outputs == numpy_run()[0]
    assert numpy.isclose(namespace["exact"], numpy_run()[1]["exact"], rtol=0, atol=1e-12)
