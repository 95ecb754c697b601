"""`lipref data`, `import-torch`, `import-onnx`, `check` and `info`: datasets, model files
from elsewhere, the torch reference, and what is installed."""
import json
import sys

import click

from lipref import data as D
from lipref.backend import host
from lipref.check import CheckConfig
from lipref.commands.common import (
    apply_options,
    data_options,
    emit_json,
    format_table,
    positive_eps,
    setting_option,
    settings_options,
    user_errors,
)
from lipref.data.ranges import expected_range
from lipref.errors import InputError
from lipref.importing import import_summary
from lipref.inputs import data_for_model, load_model_file
from lipref.layers import ACTIVATIONS
from lipref.models import ARCHITECTURES, GENERIC_STACK
from lipref.onnx_import.chain import SUPPORTED as ONNX_OPS
from lipref.outputs import json_ready

# -------------------------------------------------------------------------------------- data

@click.group()
def data():
    """List, verify and download datasets."""


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_list(as_json):
    """Known datasets, where they are looked for, and whether their files verify."""
    rows = []
    for name, info in D.DATASETS.items():
        report = D.verify(name)
        status = "ok" if all(s == D.OK for _, s in report) else ", ".join(sorted({s for _, s in report if s != D.OK}))
        rows.append({"name": name, "shape": "x".join(map(str, info.input_shape)), "classes": info.n_classes,
                     "status": status, "where": " | ".join(str(d) for d in D.search_dirs(name))})
    if as_json:
        emit_json({"datasets": rows})
    else:
        columns = [
            ("name", "dataset", "{}"),
            ("shape", "shape", "{}"),
            ("classes", "classes", "{}"),
            ("status", "files", "{}"),
            ("where", "searched in", "{}"),
        ]
        click.echo(format_table(rows, columns))


@data.command("verify")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder to check.")
@user_errors
def data_verify(name, data_dir):
    """Check NAME's files against their checksums (exit 2 if any is missing or wrong)."""
    report = D.verify(name, data_dir)
    for file_name, status in report:
        click.echo(f"{status:>12}  {file_name}")
    if any(s != D.OK for _, s in report):
        raise D.DataError(f"{name}: {sum(s != D.OK for _, s in report)} file(s) missing or with a bad checksum")


@data.command("download")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Destination folder (default ~/.cache/lipref/<name>).")
@click.option("--base-url", default=None, help="Download from this address instead of the canonical one.")
@user_errors
def data_download(name, data_dir, base_url):
    """Download NAME from its canonical address, verifying every file's checksum."""
    def progress(file_name, done, total):
        if total:
            click.echo(f"\r{file_name}: {100 * done // total:3d}%", nl=False, err=True)
    paths = D.download(name, data_dir, base_url, progress)
    click.echo("", err=True)
    for p in paths:
        click.echo(str(p))


# ------------------------------------------------------------------------- torch interop

def _input_shape(text):
    """None for "auto", else the integers of "C,H,W" or "D"."""
    if text == "auto":
        return None
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise InputError(f"--input-shape must be auto or integers separated by commas, got {text!r}") from None


@click.command("import-torch")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--arch", default="auto", show_default=True,
              help=f"{', '.join(ARCHITECTURES)}, mlp-W[-W...] (a dense stack), linear (one linear layer), 'auto' (the "
                   f"one whose names and shapes fit the checkpoint), or a generic stack '{GENERIC_STACK}' (strides, "
                   "paddings and average poolings are not in a state dict).")
@click.option("--input-shape", default="auto", show_default=True,
              help="Input shape C,H,W (MNIST 1,28,28; CIFAR-10 3,32,32; TinyImageNet 3,64,64), or auto: the "
                   "one on which the architecture fits the checkpoint (the datasets' sizes and the first "
                   "activation's shape are tried).")
@click.option("--classes", "n_classes", type=int, default=None,
              help="Number of classes (default: read from the last linear layer).")
@click.option("--activation", type=click.Choice(["auto", *ACTIVATIONS]), default="auto",
              show_default=True, help="Activation (auto: from the parameter names: threshold, max/min).")
@click.option("--batchnorm-eps", type=float, default=1e-5, show_default=True,
              help="The eps of the checkpoint's BatchNorm modules (folded into the layer before each; a state dict "
                   "does not hold it: torch's default unless the model set another).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="The lipref model file to write.")
@user_errors
def import_torch(checkpoint, arch, input_shape, n_classes, activation, batchnorm_eps, out_path):
    """Import a PyTorch checkpoint of an nn.Sequential model (the paper's code) as a lipref model,
    its parameters exactly as the checkpoint holds them (float64 stays float64; float16 and
    bfloat16 widen exactly to float32)."""
    from lipref.torch_import import import_torch_checkpoint
    shape = _input_shape(input_shape)
    model = import_torch_checkpoint(checkpoint, arch, shape, n_classes, activation, out_path, batchnorm_eps)
    n_params = sum(int(v.value.size) for v in model.parameters().values())
    click.echo(f"{checkpoint} -> {out_path}: {model.metadata['arch']}, {model.metadata['activation']}, "
               f"{len(model.layers)} layers, {n_params} parameters in {model.precision}{import_summary(model)}")


@click.command("import-onnx", help=f"""Import an ONNX model ({ONNX_OPS}; any framework's export) as a
    lipref model, its parameters exactly as the file holds them (DOUBLE stays float64); anything else is
    an error naming the node and its op type. Needs the onnx package: pip install 'lipref[onnx]'.""")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="The lipref model file to write.")
@user_errors
def import_onnx(onnx_path, out_path):
    from lipref.onnx_import import import_onnx_model
    model = import_onnx_model(onnx_path, out_path)
    n_params = sum(int(v.value.size) for v in model.parameters().values())
    click.echo(f"{onnx_path} -> {out_path}: {model.metadata['activation']}, input {tuple(model.input_shape)}, "
               f"{len(model.layers)} layers, {n_params} parameters in {model.precision}{import_summary(model)}")


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@setting_option(CheckConfig, "against")
@apply_options(data_options[:2])  # --data, --data-dir; --limit has check's own default
@apply_options(settings_options(CheckConfig, "limit", "eps", "n_iters", "seed",
                                eps={"callback": positive_eps, "required": True}, n_iters={"flag": "--iters"}))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@user_errors
def check(model_path, against, data_spec, data_dir, limit, eps, n_iters, seed, as_json):
    """Recompute MODEL's logits, masks, bounds, margins and loss gradients with the torch
    reference, in float64, and compare; exit code 1 if any differs beyond its tolerance.
    MODEL: a lipref .npz, a torch .pth / .pt checkpoint or an .onnx model (imported in memory)."""
    from lipref.check import LOSSES, check_against_torch
    model = load_model_file(model_path, "numpy", "float64")
    dataset = data_for_model(model, data_spec, data_dir, limit)
    rows = check_against_torch(model, dataset.images.astype("float64"), dataset.labels, eps, n_iters,
                               host.random.default_rng(seed), loss_names=LOSSES)
    ok = all(r["ok"] for r in rows)
    if as_json:
        emit_json({"model": model_path, "against": against, "ok": ok, "n": int(dataset.labels.shape[0]),
                    "results": rows})
    else:
        table_rows = [dict(r, verdict="ok" if r["ok"] else "DIFFERS") for r in rows]
        columns = [
            ("quantity", "quantity", "{}"),
            ("max_rel_diff", "largest difference", "{:.3g}"),
            ("unit", "unit", "{}"),
            ("tolerance", "tolerance", "{:.0e}"),
            ("verdict", "", "{}"),
        ]
        click.echo(format_table(table_rows, columns))
        click.echo(f"{'all within tolerance' if ok else 'SOME QUANTITIES DIFFER'} "
                   f"({dataset.labels.shape[0]} examples, eps {eps:g}, {n_iters} power iterations)")
    if not ok:
        sys.exit(1)


# -------------------------------------------------------------------------------------- info

def _installation():
    """What `lipref info` says about this installation: lipref's provenance (version, extras,
    kernels), the BLAS and the GPU."""
    from lipref.backend import cupy_unavailable_reason, host_blas
    from lipref.provenance import provenance
    found = provenance()
    blas, hint = host_blas()
    reason = cupy_unavailable_reason()
    out = {key: found[key] for key in ("lipref_version", "python", "numpy")}
    out.update({"blas": blas, "cupy": "available" if reason is None else reason, "extras": found["extras"],
                "kernels": found["kernels"]})
    if hint:
        out["hint"] = hint
    return out


def _print_installation(out):
    extras = out["extras"]
    installed = ", ".join(f"{name} {version}" for name, version in extras.items() if version)
    missing = ", ".join(name for name, version in extras.items() if not version)
    kernels = out["kernels"]
    state = ("on (off with --reference or LIPREF_REFERENCE=1)" if kernels["enabled"] else
             "off (LIPREF_REFERENCE=1: the plain definitions only)")
    lines = [("lipref", out["lipref_version"]), ("python", out["python"]), ("numpy", out["numpy"]),
             ("blas", out["blas"]), ("cupy", out["cupy"]),
             ("extras", installed + (f"; not installed: {missing}" if missing else "")),
             ("kernels", state)]
    lines += [("", f"{name}: {', '.join(modules)}") for name, modules in kernels["registered"].items()]
    if "hint" in out:
        lines.append(("hint", out["hint"]))
    for key, value in lines:
        click.echo(f"{key:>8}{':' if key else ' '} {value}")


def _print_model_provenance(meta):
    """The model file's provenance metadata (what wrote it), when it has some; metadata is
    free-form: shown, never failed on."""
    found = meta.get("provenance")
    if not isinstance(found, dict):
        click.echo("provenance: not recorded in the file")
        return
    kernels = found.get("kernels")
    state = kernels.get("enabled") if isinstance(kernels, dict) else None
    click.echo(f"written by lipref {found.get('lipref_version', '?')}"
               + ("" if state is None else f", kernels {'on' if state else 'off'}"))
    if found.get("command_line"):
        click.echo(f"command: {found['command_line']}")


@click.command()
@click.argument("model_path", metavar="[MODEL]", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def info(model_path, as_json):
    """Describe MODEL (layers, parameters, training metadata and what wrote the file), or the
    installation when no MODEL: lipref's version, the extras installed, the kernels registered
    and whether they are on, the BLAS and the GPU."""
    if model_path is None:
        out = _installation()
        if as_json:
            emit_json(out)
        else:
            _print_installation(out)
        return
    model = load_model_file(model_path, "numpy")  # the file's own precision
    layers = []
    for i, layer in enumerate(model.layers):
        n_params = sum(int(v.value.size) for v in layer.params.values())
        layers.append({"index": i, "layer": layer.kind, "in": "x".join(map(str, layer.in_shape)),
                       "out": "x".join(map(str, layer.out_shape)), "params": n_params})
    expected = expected_range(model.metadata)
    out = {"model": model_path, "layers": layers, "parameters": sum(r["params"] for r in layers),
           "precision": getattr(model, "precision", None),
           "input_range": None if expected is None else dict(zip(("lo", "hi", "why"), expected)),
           "metadata": json_ready(model.metadata, nan="nan")}  # a NaN there is the file's: kept as "nan"
    if as_json:
        emit_json(out)
        return
    columns = [
        ("index", "#", "{}"),
        ("layer", "layer", "{}"),
        ("in", "input", "{}"),
        ("out", "output", "{}"),
        ("params", "parameters", "{}"),
    ]
    click.echo(format_table(layers, columns))
    click.echo(f"{out['parameters']} parameters")
    meta = model.metadata
    best = meta.get("best")
    keys = ("epoch", "clean_accuracy", "certified_accuracy_local", "eps")
    if isinstance(best, dict) and all(isinstance(best.get(k), (int, float)) for k in keys):
        click.echo(f"best epoch {best['epoch']}: clean {best['clean_accuracy']:.3f}, certified "
                   f"{best['certified_accuracy_local']:.3f} at eps {best['eps']:g}")
    elif best is not None:  # metadata is free-form: show it, never fail on it
        click.echo(f"best: {json.dumps(best)[:200]}")
    click.echo("inputs: range not recorded" if expected is None else
               f"inputs: [{expected[0]:g}, {expected[1]:g}] ({expected[2]})")
    _print_model_provenance(meta)
