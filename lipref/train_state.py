"""A training run's state: what defines it (`TrainConfig`, stored in its checkpoint), the
checkpoint itself (a fresh run's start, a checkpoint read back, extended to more epochs, or
written), and how a run is stopped between steps (`StopRequest`, `TrainingInterrupted`).

A checkpoint holds the model, Adam's state, the global power-iteration vectors and the
run's position: the epochs done and the steps done in the next one (0 at an epoch's end;
after a Ctrl-C, the steps applied so far, with the epoch's random stream where they left it
and its loss sums), so a resumed run continues exactly where it stopped.
"""
import contextlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from . import losses
from .backend import check_seed, host, to_backend, to_host
from .bounds import BOUNDS
from .config import FLOAT_DTYPES, setting
from .data.record import check_same_data
from .errors import InputError, RunFolderError
from .history import EpochMeter
from .layers import ACTIVATIONS
from .models import (
    atomic_write_bytes,
    build_model,
    layer_inits,
    load_model,
    model_to_bytes,
    read_model_file,
    set_layer_inits,
)
from .optim import Adam
from .schedules import Schedule, describe_extension, extended

CHECKPOINT = "checkpoint.npz"
RESUMABLE = ("epochs", "extensions")  # what a resume may change: more epochs extend the run
MAX_CLASSES = 100_000  # a label of 10^9 in a file would otherwise ask for a 10^9-row last layer


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in its checkpoint; --resume reuses it). Each field
    carries its command-line help, choices and range (`lipref train` reads them)."""
    arch: str = setting("2c2f", "Architecture: 4c3f, 6c2f, 8c2f (the paper's), 4c3f-half (4c3f with every width "
                                "halved), 2c2f (small), mlp-W[-W...] (dense), linear, or a stack of "
                                "conv:OUT:K:STRIDE:PAD and avgpool:K:STRIDE:PAD, then fc:WIDTH, comma separated.")
    activation: str = setting("relu", "Activation after every hidden layer.", choices=ACTIVATIONS)
    threshold_init: float = setting(1.0, "Initial threshold of clipped ReLU / clamp of MaxMin.")
    epochs: int = setting(10, "Training epochs (with --resume, more than the run's extends it).", minimum=1)
    batch_size: int = setting(64, "Batch size.", minimum=1)
    eps_train: float = setting(0.5, "Training radius (l2), reached at the end of the ramp.")
    eps_eval: float = setting(None, "Radius of the per-epoch evaluation (default: --eps).")  # None: eps_train
    warmup: float = setting(1.0, "Epochs of clean training first (eps 0, kappa 1; --sparsity still applies).")
    ramp: float = setting(4.0, "Epochs over which eps grows 0 -> --eps and kappa moves --kappa-start -> --kappa-end.")
    kappa_end: float = setting(0.0, "Final weight of the clean loss in kappa*CE + (1-kappa)*robust.", minimum=0,
                               maximum=1)
    kappa_start: float = setting(1.0, "Weight of the clean loss when the ramp starts (0 with --kappa-end 0: the "
                                      "robust loss alone, as the official GloRo recipe).", minimum=0, maximum=1)
    lr: float = setting(1e-3, "Adam learning rate.")
    lr_end: float = setting(1e-4, "Learning rate reached at the last epoch (exponential decay from --decay-start).")
    decay_start: float = setting(None, "Epoch where the learning-rate decay starts (default: the end of the ramp, at "
                                       "most the last epoch).")
    loss: str = setting("gloro", "Robust loss: gloro (bottom logit z_j + R ||w_j - w_y||), bcp (the "
                                 "ball-and-box worst-case logits) or gloro-bcp (GloRo's bottom logit from the "
                                 "ball-and-box worst case; the official MNIST recipe).", choices=losses.ROBUST_LOSSES)
    bound: str = setting("local", "Lipschitz bound inside the loss.", choices=BOUNDS)
    sparsity: float = setting(0.0, "Weight of the sparsity loss that pushes neurons to be constant on the ball "
                                   "(paper: 0.01-0.1).")
    saturation_weight: float = setting(0.1, "c in the clipped-ReLU sparsity term mean(relu(ub)) + "
                                            "c*mean(relu(theta - lb)).")
    n_iters: int = setting(2, "Power-iteration steps per training step (warm-started: the global norms from the "
                              "previous step, the local ones per sample from its previous epoch).", minimum=1)
    eval_iters: int = setting(20, "Power-iteration steps in the per-epoch evaluation.", minimum=1)
    eval_limit: int = setting(200, "Examples used for the per-epoch evaluation.", minimum=1)
    crop_padding: int = setting(0, "Augmentation: random crop after padding each side with this many zeros "
                                   "(0: none; the official CIFAR recipe: 4).", minimum=0)
    flip: bool = setting(False, "Augmentation: horizontal flip with probability 1/2.")
    best_from: float = setting(None, "Epochs trained before a model may become best.npz (default: the end of the "
                                     "ramp, as the official code; 0: any epoch).", minimum=0)
    layer_inits: str = setting(None, "Initial threshold per activation layer, comma separated (clipped ReLU: T; "
                                     "MaxMin: HI:LO); overrides --threshold-init.")
    seed: int = 0
    dtype: str = setting("float32", "Floating-point type of the training.", choices=FLOAT_DTYPES)
    backend: str = "numpy"
    extensions: tuple = ()  # ((fractional epoch, epochs before), ...): where --resume --epochs extended the run

    def __post_init__(self):
        if self.loss not in losses.ROBUST_LOSSES:
            raise InputError(f"loss must be one of {', '.join(losses.ROBUST_LOSSES)}, got {self.loss!r}")
        if self.bound not in BOUNDS:
            raise InputError(f"bound must be one of {', '.join(BOUNDS)}, got {self.bound!r}")
        if self.batch_size < 1 or self.n_iters < 1 or self.eval_iters < 1:
            raise InputError("batch_size, n_iters and eval_iters must be >= 1")
        if self.sparsity < 0:
            raise InputError(f"sparsity weight must be >= 0, got {self.sparsity}")
        if self.eps_eval is not None and self.eps_eval < 0:
            raise InputError(f"eps_eval must be >= 0, got {self.eps_eval}")
        self.extensions = self.schedule().extensions  # validates epochs, eps, warmup, ramp, kappa, lr; tuples
        layer_inits(self.layer_inits)  # validates the list
        check_seed(self.seed)

    def schedule(self):
        return Schedule(self.epochs, self.eps_train, self.warmup, self.ramp, self.kappa_end, self.lr, self.lr_end,
                        self.decay_start, self.kappa_start, self.extensions)

    @property
    def first_best_epoch(self):
        """Epochs trained before a model may become best.npz (at most the last epoch)."""
        start = self.warmup + self.ramp if self.best_from is None else self.best_from
        return min(start, float(self.epochs))

    @property
    def eval_eps(self):
        return self.eps_train if self.eps_eval is None else self.eps_eval

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def saved_settings(run_dir):
    """(the configuration, the data record) that the checkpoint in `run_dir` recorded, as JSON
    values; None without a checkpoint, or with one that does not record them (resuming it then
    says what is wrong)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    metadata = read_model_file(path)[0].get("metadata", {})
    state, data = metadata.get("checkpoint"), metadata.get("data")
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or not isinstance(data, dict):
        return None
    if not all(isinstance(data.get(k), dict) and "resolved" in data[k] for k in ("train", "eval")):
        return None
    return config, data


def _rng(seed, *keys):
    return host.random.default_rng([seed, *keys])


class StopRequest:
    """Ctrl-C during training, as `lipref train` wires it (its SIGINT handler calls `press`): the
    first press stops the run before its next step or evaluation, with a checkpoint of the
    steps done; a second abandons the step or evaluation under way (KeyboardInterrupt; the
    checkpoint holds the steps before it), except while the trainer applies a step or writes
    a file, which always completes first."""

    def __init__(self):
        self.presses = 0
        self.committing = False

    @property
    def requested(self):
        return self.presses > 0

    def press(self):
        self.presses += 1
        if self.presses > 1 and not self.committing:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def commit(self):
        """A block that a press does not abandon (a step's updates, the end of an epoch)."""
        was, self.committing = self.committing, True
        try:
            yield
        finally:
            self.committing = was


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by its StopRequest: `checkpoint` (None: nothing to resume from) holds
    `epoch` completed epochs and `step` of the next one's `steps` steps, of `epochs`."""

    def __init__(self, checkpoint, epoch, step, steps, epochs):
        super().__init__(f"training interrupted after epoch {epoch} + {step}/{steps} steps")
        self.checkpoint, self.epoch, self.step, self.steps, self.epochs = checkpoint, epoch, step, steps, epochs


class StopNow(Exception):
    """Raised between steps when a stop was requested."""


def best_record(history, first_best_epoch):
    """The record best.npz holds after `history`: the first with the highest local certified
    accuracy among the epochs >= first_best_epoch (None before any)."""
    best = None
    for record in history:
        if record["epoch"] >= first_best_epoch and (
                best is None or record["certified_accuracy_local"] > best["certified_accuracy_local"]):
            best = record
    return best


class RunState:
    """The state half of the `Trainer` (train.py): a fresh run, a checkpoint read, extended or written."""

    def _fresh(self):
        c = self.config
        if self.train_set.n_classes > MAX_CLASSES:
            raise InputError(f"data {self.train_set.name} have labels up to {self.train_set.n_classes - 1}; lipref "
                             f"trains classifiers of at most {MAX_CLASSES} classes")
        self.model = build_model(c.arch, self.train_set.input_shape, self.train_set.n_classes, self.xp, self.dtype,
                                 _rng(c.seed, 0xA11), c.activation, c.threshold_init)
        set_layer_inits(self.model, layer_inits(c.layer_inits), self.xp, self.dtype)
        self.optimizer = self._make_optimizer()
        self.epoch, self.step, self.meter, self.rng_state = 0, 0, EpochMeter(), None
        self.history = []
        self.best = None
        self.global_vectors = {}

    def _make_optimizer(self):
        params = self.model.parameters()
        thresholds = [k for k in params if k.endswith(".threshold")]
        return Adam(params, lr=self.config.lr, project=thresholds)

    def _load_checkpoint(self, path):
        model = load_model(path, self.xp, self.dtype)
        state = model.metadata.get("checkpoint")
        if state is None:
            raise InputError(f"{path}: a model file without training state; not a checkpoint")
        try:
            saved = TrainConfig.from_dict(state["config"])
            epoch, history, step_count = int(state["epoch"]), list(state["history"]), int(state["step_count"])
            step = int(state.get("step", 0))  # steps done in epoch `epoch` (0: at its start)
            meter, rng_state = (EpochMeter(state["meter"]), state["rng"]) if step else (EpochMeter(), None)
            if step:
                _rng(0).bit_generator.state = rng_state  # checks it
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a hand-edited or foreign file
            raise RunFolderError(f"{path}: corrupted training state ({type(exc).__name__}: {exc})") from None
        changed = [f.name for f in fields(TrainConfig)
                   if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(self.config, f.name)]
        if changed:
            raise InputError(f"{path}: the run was started with different settings ({', '.join(changed)}); "
                             "resume with the same options, or give only --epochs (the others are then the run's)")
        if not (0 <= epoch <= saved.epochs and 0 <= step <= self.steps and (step == 0 or epoch < saved.epochs)):
            raise RunFolderError(f"{path}: corrupted training state (epoch {epoch}, step {step}: not within "
                                 f"{saved.epochs} epochs of {self.steps} steps)")
        check_same_data(path, model.metadata.get("data"), self.data)
        earlier = model.metadata.get("earlier_sessions")
        self.sessions = (earlier if isinstance(earlier, list) else []) + [model.metadata.get("provenance")]
        self.model = model
        self.optimizer = self._make_optimizer()
        extra = {k: to_backend(v, self.xp, self.dtype) for k, v in model.extra_arrays.items()}
        self.optimizer.load_state({k: v for k, v in extra.items() if k.startswith("adam.")}, step_count)
        self.global_vectors = {int(k.split(".")[1]): v for k, v in extra.items() if k.startswith("global_vector.")}
        self.epoch, self.step, self.meter, self.rng_state, self.history = epoch, step, meter, rng_state, history
        self.best = state.get("best")
        self.model.metadata = {k: v for k, v in model.metadata.items() if k != "checkpoint"}
        self.resumed = {"checkpoint": str(path), "epoch": epoch, "step": step, "extension": None}
        self.config = saved if self.config.epochs == saved.epochs else self._extended(saved, self.config.epochs)

    def _extended(self, saved, epochs):
        """The run's configuration continued to `epochs`: the schedule as `schedules.extended` plans
        it, best.npz re-chosen from the epochs the longer run may choose from."""
        t0 = self.epoch + self.step / max(self.steps, 1)
        if epochs < saved.epochs:
            raise InputError(f"--epochs {epochs}: the run in {self.run_dir} is planned for {saved.epochs} epochs "
                             f"({t0:g} trained); give --epochs {saved.epochs} to continue it, or more to extend it")
        schedule = extended(saved.schedule(), epochs, t0)
        config = replace(saved, epochs=epochs, extensions=schedule.extensions)
        note = f"from {saved.epochs} to {epochs} epochs: {describe_extension(saved.schedule(), schedule, t0)}"
        if self.best is not None and best_record(self.history, config.first_best_epoch) is None:
            # best.npz was chosen at the old last epoch, before the end of the ramp the longer run waits for
            note += (f"; best.npz (epoch {self.best['epoch']}) is removed: the longer run chooses from epoch "
                     f"{config.first_best_epoch:g} on")
            self.best, self._remove_best = None, True
            self.model.metadata.pop("best", None)
        self.resumed["extension"] = note
        return config

    def _write_checkpoint(self):
        extra = {k: to_host(v) for k, v in self.optimizer.state().items()}
        extra.update({f"global_vector.{k}": to_host(v) for k, v in self.global_vectors.items()})
        meta = dict(self.model.metadata)
        state = {"epoch": self.epoch, "step": self.step, "step_count": self.optimizer.step_count,
                 "config": asdict(self.config), "history": self.history, "best": self.best}
        if self.step:  # mid-epoch: where the epoch's random stream stands, and its sums so far
            state.update(rng=self.rng_state, meter=self.meter.state())
        self.model.metadata = dict(meta, checkpoint=state)
        try:
            atomic_write_bytes(self.run_dir / CHECKPOINT, model_to_bytes(self.model, extra))
        finally:
            self.model.metadata = meta

    def _history_document(self):
        return {"config": asdict(self.config), "data": self.data, "provenance": self.model.metadata["provenance"],
                "earlier_sessions": self.sessions, "history": self.history, "best": self.best}

    # ----------------------------------------------------------- loop
