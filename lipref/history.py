"""A training run's per-epoch record: what each epoch trained on (its mean losses, the
schedule's values, its seconds) and what the evaluation found, written after every epoch as
`history.json` (strict JSON, with the run's configuration, data record and provenance) and
`history.csv` beside it (one row per epoch), both atomically; read back for `lipref plot`.

The losses are means over the epoch's training samples of the per-batch means: `loss` the
objective minimised (kappa CE + (1 - kappa) robust + sparsity weight x sparsity), `clean_loss`
its cross-entropy, `robust_loss` the robust loss over the steps that computed it (kappa < 1;
None in a warm-up epoch), `sparsity_loss` the sparsity term before its weight (None without
--sparsity). `eps_train`, `kappa` and `lr` are the schedule's values at the epoch's last step;
`eps` is the radius of the evaluation.
"""
import csv
import io
import json
from pathlib import Path

from .errors import RunFolderError
from .models import atomic_write_bytes, read_model_file

HISTORY = "history.json"
HISTORY_CSV = "history.csv"
LOSSES = ("loss", "clean_loss", "robust_loss", "sparsity_loss")

# history.csv's columns, in order; constant_fraction_K (layer K, from 1) follow
CSV_COLUMNS = ("epoch", "loss", "clean_loss", "robust_loss", "sparsity_loss", "clean_accuracy",
               "certified_accuracy_global", "certified_accuracy_local", "eps", "n", "eps_train", "kappa", "lr",
               "train_seconds", "eval_seconds", "median_local_over_global")


class EpochMeter:
    """The running sums of one epoch's training steps: each loss weighted by its batch's
    samples, the samples that computed it, the last step's schedule values, the seconds. Its
    `state()` goes into a mid-epoch checkpoint, so that a resumed epoch reports what an
    uninterrupted one would (the seconds excepted)."""

    def __init__(self, state=None):
        state = state or {}
        self.sums = dict(state.get("sums", {}))
        self.counts = dict(state.get("counts", {}))
        self.last = dict(state.get("last", {}))
        self.seconds = float(state.get("seconds", 0.0))

    def add(self, stats, n, seconds):
        """One step of `n` samples: its stats (the losses, None where not computed; eps, kappa, lr)."""
        for key in LOSSES:
            if stats.get(key) is not None:
                self.sums[key] = self.sums.get(key, 0.0) + stats[key] * n
                self.counts[key] = self.counts.get(key, 0) + n
        self.last = {"eps_train": stats["eps"], "kappa": stats["kappa"], "lr": stats["lr"]}
        self.seconds += seconds

    def state(self):
        return {"sums": self.sums, "counts": self.counts, "last": self.last, "seconds": self.seconds}

    def summary(self):
        """{loss, clean_loss, robust_loss, sparsity_loss (means, None where no step computed one),
        eps_train, kappa, lr, train_seconds}."""
        means = {k: self.sums[k] / self.counts[k] if self.counts.get(k) else None for k in LOSSES}
        schedule = {k: self.last.get(k) for k in ("eps_train", "kappa", "lr")}
        return {**means, **schedule, "train_seconds": self.seconds}


def finite(value):
    """`value` with every non-finite float replaced by None (history.json is strict JSON)."""
    if isinstance(value, float):
        return value if value - value == 0 else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def csv_text(history):
    """history.csv: a header and one row per epoch record (an empty cell where a value is None
    or the record has none, e.g. an older lipref's); constant fractions one column per layer."""
    layers = max((len(r.get("mean_constant_fraction") or []) for r in history), default=0)
    header = list(CSV_COLUMNS) + [f"constant_fraction_{k + 1}" for k in range(layers)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for record in history:
        fractions = list(record.get("mean_constant_fraction") or [])
        row = [record.get(k) for k in CSV_COLUMNS] + fractions + [None] * (layers - len(fractions))
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return out.getvalue()


def write_history(run_dir, document):
    """history.json (`document`: config, data, provenance, earlier_sessions, history, best; strict
    JSON) and history.csv (its history), each written atomically."""
    document = finite(document)
    text = json.dumps(document, indent=2, allow_nan=False)
    atomic_write_bytes(Path(run_dir) / HISTORY, text.encode("utf-8"))
    atomic_write_bytes(Path(run_dir) / HISTORY_CSV, csv_text(document["history"]).encode("utf-8"))


def read_history(run_dir):
    """The history document of run folder `run_dir` (finished, interrupted or running): its
    history.json, else (a run an older lipref interrupted) the checkpoint's training state.
    A folder with neither, or a file that is not such a document, is a RunFolderError."""
    run_dir = Path(run_dir)
    path, checkpoint = run_dir / HISTORY, run_dir / "checkpoint.npz"
    if path.is_file():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise RunFolderError(f"{path}: not a readable history ({type(exc).__name__}: {exc})") from None
    elif checkpoint.is_file():
        metadata = read_model_file(checkpoint)[0].get("metadata", {})
        state = metadata.get("checkpoint") or {}
        document = {"config": state.get("config"), "history": state.get("history"), "best": state.get("best")}
    else:
        raise RunFolderError(f"{run_dir}: no {HISTORY} or checkpoint.npz there: not a training run folder")
    history = document.get("history") if isinstance(document, dict) else None
    if not isinstance(history, list) or not all(isinstance(r, dict) and "epoch" in r for r in history):
        raise RunFolderError(f"{path if path.is_file() else checkpoint}: no per-epoch history in it")
    return document
