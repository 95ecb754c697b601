"""The auditor's path: every function of lipref/ that runs to certify one sample, and its size.

lipref promises that an auditor can read the math of a certificate in the data's order. This
measures what there is to read: it certifies one sample of an MLP in sound mode
(`lipref.certification.certify`, no PGD: the attack checks a certificate, it does not make one) with
a profiler hook on every thread, collects every function of lipref/ that was called (the CLI,
lipref/commands/, and data loading, lipref/data/, are not part of the math), and counts the
lines of those functions: code lines (no blank lines, comments or docstrings) and all lines,
per file. A nested function is counted once, inside the function that holds it.

    python tests/auditor_path.py            # the table
    python tests/auditor_path.py --json     # the same as JSON
    python tests/auditor_path.py --kernels  # with the fast kernels on (default: plain definitions)

tests/test_auditor_path.py keeps the figure under the promised size.
"""
import ast
import json
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lipref"
EXCLUDED = ("commands", "data")  # the CLI's glue and data loading


def _in_scope(filename):
    path = Path(filename).resolve()
    if PACKAGE not in path.parents:
        return False
    return path.relative_to(PACKAGE).parts[0] not in EXCLUDED


def called_code(fn):
    """fn() with a profiler on every thread; returns the set of code objects of lipref/ called."""
    seen = set()

    def hook(frame, event, arg):
        if event == "call" and _in_scope(frame.f_code.co_filename):
            seen.add(frame.f_code)
    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return seen


def _function_spans(path):
    """{first line: (last line, set of docstring lines)} of every function defined in path."""
    tree = ast.parse(path.read_text())
    spans = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            doc = set()
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                doc = set(range(body[0].lineno, body[0].end_lineno + 1))
            spans[first] = (first, node.end_lineno, doc)  # a code object starts at its first decorator
    return spans


def path_size(codes):
    """{file relative to lipref/: {"functions", "lines", "code_lines"}} of the functions in `codes`."""
    by_file = {}
    for code in codes:
        by_file.setdefault(Path(code.co_filename).resolve(), set()).add(code.co_firstlineno)
    sizes = {}
    for path, starts in sorted(by_file.items()):
        spans = _function_spans(path)
        source = path.read_text().splitlines()
        lines, docs, functions = set(), set(), 0
        for start in starts:
            if start not in spans:  # a module body or class body: not a function
                continue
            first, last, doc = spans[start]
            functions += 1
            lines.update(range(first, last + 1))
            docs.update(doc)
        code = {n for n in lines - docs if source[n - 1].strip() and not source[n - 1].strip().startswith("#")}
        # a nested function's lines lie inside its parent's: the sets count each line once
        if functions:
            sizes[str(path.relative_to(PACKAGE))] = {"functions": functions, "lines": len(lines),
                                                    "code_lines": len(code)}
    return sizes


def mlp_sample():
    """The measured input: a 2-hidden-layer clipped-ReLU MLP (float64) and one sample."""
    from lipref.backend import get_backend, host
    from lipref.models import build_model
    xp = get_backend("numpy")
    model = build_model("mlp-32-32", (1, 6, 6), 10, xp, xp.float64, host.random.default_rng(0),
                        activation="clipped_relu")
    images = host.random.default_rng(1).uniform(0, 1, (1, 1, 6, 6))
    return model, images, host.zeros((1,), dtype=host.int64)


def measure(kernels=False):
    """The auditor's path of one sound certificate: on the plain definitions (what an auditor
    reads; each kernel is checked against them by its equivalence test), or with the kernels."""
    from lipref.certification import CertifyConfig, certify
    from lipref.kernels import reference_only_if
    model, images, labels = mlp_sample()

    def run():
        certify(model, images, labels, 0.1, CertifyConfig(mode="sound", n_iters=20, pgd_steps=0), seed=0)
    # the switch is the reader's choice (the CLI's --reference), entered outside the trace
    with reference_only_if(not kernels):
        run()  # once untraced: imports and caches are not the path
        return path_size(called_code(run))


def main(argv):
    sizes = measure(kernels="--kernels" in argv)
    total = {k: sum(s[k] for s in sizes.values()) for k in ("functions", "lines", "code_lines")}
    if "--json" in argv:
        print(json.dumps({"files": sizes, "total": total, "n_files": len(sizes)}, indent=2))
        return
    width = max(len(f) for f in sizes)
    print(f"{'file':<{width}}  functions  code lines  all lines")
    for name, s in sizes.items():
        print(f"{name:<{width}}  {s['functions']:>9}  {s['code_lines']:>10}  {s['lines']:>9}")
    print(f"{'total (' + str(len(sizes)) + ' files)':<{width}}  {total['functions']:>9}  "
          f"{total['code_lines']:>10}  {total['lines']:>9}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1:])
