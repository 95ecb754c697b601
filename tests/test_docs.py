"""What the README and the docs say about the code, checked against the code: every file they
name exists, every `module.function` they cite exists in that module, the README's layout
table names every module of lipref/, and its list of kernel modules is the registry's."""
import importlib
import re
from pathlib import Path

import pytest

from lipref.kernels import KERNEL_MODULES

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md"] + sorted((ROOT / "docs").glob("*.md"))
# dated rounds quote the code as it was then; they are history, not claims about today's code
HISTORY = {"performance-history.md"}
NOT_CODE = {"audit.seed"}  # a key of the JSON output (docs/auditing.md), not a module's attribute


def _claims():
    return [p for p in DOCS if p.name not in HISTORY]


def _modules_by_stem():
    """{stem: [dotted module names]} of every module of lipref/ (and cli)."""
    found = {"cli": ["cli"]}
    for path in (ROOT / "lipref").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.setdefault(parts[-1], []).append(".".join(parts))
    return found


@pytest.mark.parametrize("doc", _claims(), ids=lambda p: p.name)
def test_every_file_the_docs_name_exists(doc):
    text = doc.read_text()
    named = set(re.findall(r"(?<![\w/.-])((?:lipref|tests|bench|docs)/[\w/.*-]*[\w*])", text))
    missing = sorted(n for n in named if not any(ROOT.glob(n if "*" in n else n + "*")))
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", _claims(), ids=lambda p: p.name)
def test_every_function_the_docs_cite_exists(doc):
    """`rules.row_norms`, `rounding.margin_slack`, `kernels.reference_only()`: the module
    (by its file's name; any module of that name) has that attribute."""
    stems = _modules_by_stem()
    text = doc.read_text()
    missing = []
    for module, attr in set(re.findall(r"`(?:lipref\.)?(?:[a-z_]+\.)*?([a-z_]+)\.([A-Za-z_][A-Za-z_0-9]*)", text)):
        if module not in stems or attr == "py" or f"{module}.{attr}" in NOT_CODE:
            continue
        candidates = [importlib.import_module(m) for m in stems[module]]
        if not any(hasattr(m, attr) for m in candidates) and not any(
                (ROOT / (m.replace(".", "/"))).is_dir() and (ROOT / m.replace(".", "/") / f"{attr}.py").exists()
                for m in stems[module]):
            missing.append(f"{module}.{attr}")
    assert not missing, f"{doc.name} cites what the code does not have: {sorted(missing)}"


def test_the_readme_layout_names_every_module():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):]
    table = table[:table.index("\n## ", 5)]
    missing = []
    for path in sorted((ROOT / "lipref").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(ROOT / "lipref")
        if f"`{path.name}`" not in table and f"lipref/{rel}" not in table and f"`{rel}`" not in table:
            missing.append(str(rel))
    assert not missing, f"README's layout table does not name: {missing}"


def test_the_readme_kernel_list_is_the_registry():
    text = (ROOT / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `lipref/kernels/`"))
    listed = set(re.findall(r"`(\w+)\.py`", row)) - {"registry"}
    assert listed == set(KERNEL_MODULES), f"README lists kernel modules {sorted(listed)}, the registry has " \
                                          f"{sorted(KERNEL_MODULES)}"
