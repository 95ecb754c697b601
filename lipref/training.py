"""Certified training (Huang et al. 2021): the local (or global) bound inside the loss.

One step: walk the network over the eps-ball of each sample of the batch (interval and ball
bounds, masks, masked power iteration warm-started from the sample's stored vectors),
build the loss kappa * CE + (1 - kappa) * robust + sparsity_weight * sparsity on the tape,
take its gradient with respect to every parameter and apply Adam (thresholds projected to
>= 0). eps, kappa and the learning rate follow `schedules.py`. On the CPU a step runs in
blocks of samples (in threads; each loss term is a mean over samples, so the batch's
gradient is the blocks' weighted sum).

A run folder holds: checkpoint.npz (model, optimiser state, schedule position, history;
written atomically after every epoch, and after the last step applied when a StopRequest
stops the run: train_state.py), best.npz (the model with the best certified accuracy on the
evaluation set among those trained at least `first_best_epoch` epochs, by default the end of
the ramp), model.npz (the final model), history.json and history.csv (per epoch: history.py),
and vectors/ (the per-sample power-iteration vectors, memory-mapped). Everything random is
drawn from generators seeded by (seed, epoch), so a run resumed from an epoch's end replays
the next epoch exactly; one stopped mid-epoch continues that epoch's stream where it stood.

The evaluation set chooses best.npz, so it must not overlap the training set
(`data.record`: refused unless allowed). history.json and every model file's metadata
record the data (specs, sources, sizes, digests) and lipref's provenance (version, command
line, extras, kernels); a resumed run must be given the same examples.
"""
import time
from dataclasses import asdict
from pathlib import Path

from . import losses
from . import primitives as P
from .backend import float_dtype, get_backend, host, map_in_threads, sample_blocks, to_backend, to_host
from .bounds import BoundOptions, global_norms, network_bounds, start_vectors
from .bounds import margins as M
from .certification import CertifyConfig, certify
from .data.augment import augment
from .data.record import input_range, refuse_overlap, training_data
from .errors import InputError, RunFolderError, TrainingDiverged
from .history import LOSSES, EpochMeter, write_history
from .history import finite as _finite
from .models import save_model
from .provenance import provenance
from .schedules import eps_at, kappa_at, lr_at
from .tape import grad, value_of
from .train_state import (  # noqa: F401 (TrainConfig, StopRequest, TrainingInterrupted: lipref.training's names)
    CHECKPOINT,
    RunState,
    StopRequest,
    TrainConfig,
    StopNow,
    TrainingInterrupted,
    _rng,
)
from .vectors import VectorStore, epoch_folder, remove_other_epochs


def blocked_gradients(xp, n, params, block_loss, threads=None, sample_block=None):
    """The loss of a batch of n samples and its gradients, computed block by block.

    block_loss(s) takes a slice of the batch and returns (loss, extra): loss a scalar Var
    that is a mean over the block's samples (so that the batch's loss is the sum over
    blocks of share * loss, share the block's fraction of the batch, and its gradient the
    same sum of gradients), extra anything the caller wants back. The blocks come from
    backend.sample_blocks(xp, n, sample_block) and run in `threads` threads
    (map_in_threads; None: backend.default_threads); the sums run in block order, so the
    result does not depend on `threads`. Returns (loss value, [gradient per param],
    [extra per block])."""
    def one_block(s):
        loss, extra = block_loss(s)
        loss = P.multiply(loss, (s.stop - s.start) / n)
        return loss.value, grad(loss, params), extra
    parts = map_in_threads(xp, one_block, sample_blocks(xp, n, sample_block), threads)
    value, grads = parts[0][0], list(parts[0][1])
    for part_value, part_grads, _ in parts[1:]:
        value = value + part_value
        grads = [a + b for a, b in zip(grads, part_grads)]
    return value, grads, [extra for _, _, extra in parts]


def _affine_input_shapes(model):
    """{layer index: input shape} of the affine layers whose masked norms are estimated."""
    return {i: layer.in_shape for i, layer in enumerate(model.layers[:-1]) if layer.is_affine}


def _share_of(var, share):
    """A block's loss term as a float, weighted by the block's share of the batch."""
    return float(to_host(value_of(var))) * share


def _block_sum(values):
    """The sum over blocks (in block order) of a loss term, None where no block computed it."""
    return None if values[0] is None else sum(values[1:], values[0])


class Trainer(RunState):
    """One training run in `run_dir`: its state (fresh or from the checkpoint: RunState) and its
    loop (`run`), stopped between steps by `stop` (a StopRequest)."""

    def __init__(self, config, train_set, eval_set, run_dir, resume=False, progress=None, threads=None,
                 sample_block=None, allow_overlap=False, data_specs=(None, None), stop=None):
        self.config = config
        self.sample_block = sample_block  # None: backend.sample_blocks' default
        self.train_set, self.eval_set = train_set, eval_set
        self.run_dir = Path(run_dir)
        self.progress = progress or (lambda event: None)
        self.stop = stop or StopRequest()
        self.xp = get_backend(config.backend)
        self.dtype = float_dtype(self.xp, config.dtype)
        self.threads = threads  # None: backend.default_threads
        if (threads is not None and threads < 1) or (sample_block is not None and sample_block < 1):
            raise InputError(f"threads and sample_block must be >= 1, got {threads} and {sample_block}")
        self.steps = -(-int(train_set.labels.shape[0]) // config.batch_size)  # per epoch
        self.data = dict(training_data(train_set, eval_set, data_specs), allow_overlap=bool(allow_overlap))
        self.sessions = []  # the provenance of each earlier process that trained this run
        self.resumed, self._remove_best, self._current = None, False, None
        checkpoint = self.run_dir / CHECKPOINT
        if checkpoint.exists() and not resume:
            raise RunFolderError(f"{checkpoint} exists: pass --resume to continue that run, or choose another --out")
        if resume and checkpoint.exists():
            self._load_checkpoint(checkpoint)
        else:
            self._fresh()
        if tuple(train_set.input_shape) != tuple(self.model.input_shape):
            raise InputError(f"data {train_set.name} has input shape {train_set.input_shape}, "
                             f"the model needs {self.model.input_shape}")
        if train_set.n_classes != self.model.n_classes:
            raise InputError(f"data {train_set.name} has {train_set.n_classes} classes, "
                             f"the model {self.model.n_classes}")
        refuse_overlap(self.data, allow_overlap)

    # ----------------------------------------------------------- loop
    def run(self):
        c = self.config
        if self.stop.requested:  # before anything is written
            raise self._interrupted()
        self.progress({"event": "start", "run_dir": str(self.run_dir), "epochs": c.epochs, "steps": self.steps,
                       "resumed": self.resumed})
        if self.epoch >= c.epochs:  # a finished run resumed with its own epochs: nothing to do
            return self.history
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._remove_best:
            (self.run_dir / "best.npz").unlink(missing_ok=True)
        self.model.metadata.update({"training": asdict(c), "data": self.data, "provenance": provenance(),
                                    "earlier_sessions": self.sessions, "input_range": input_range(self.train_set)})
        self.progress({"event": "data", **self.data})
        try:
            while self.epoch < c.epochs:
                self._stop_if_requested()
                self._train_epoch()
                self._stop_if_requested()
                started = time.perf_counter()
                record = self._evaluate(self.epoch + 1)
                with self.stop.commit():
                    record = self._end_epoch(record, time.perf_counter() - started)
                self.progress({"event": "epoch_end", **record})
        except (StopNow, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt) and self.stop.presses < 2:
                raise  # not the StopRequest's: it may have come mid-update, so the last checkpoint stands
            with self.stop.commit():
                if self._current is not None:
                    self._current.flush()
                if self.step:
                    self._write_checkpoint()
            raise self._interrupted() from None
        self.model.metadata["history"] = self.history
        save_model(self.run_dir / "model.npz", self.model)
        return self.history

    def _stop_if_requested(self):
        if self.stop.requested:
            raise StopNow()

    def _interrupted(self):
        path = self.run_dir / CHECKPOINT
        return TrainingInterrupted(path if path.exists() else None, self.epoch, self.step, self.steps,
                                   self.config.epochs)

    def _end_epoch(self, record, eval_seconds):
        """An evaluated epoch's record in the history, best.npz, the checkpoint, history.json/.csv."""
        c = self.config
        record = _finite({**record, **self.meter.summary(), "eval_seconds": eval_seconds})
        self.epoch += 1
        self.history.append(record)
        eligible = self.epoch >= c.first_best_epoch
        if eligible and (self.best is None or
                         record["certified_accuracy_local"] > self.best["certified_accuracy_local"]):
            self.best = record
            self.model.metadata["best"] = record
            save_model(self.run_dir / "best.npz", self.model)
        self.step, self.meter, self.rng_state = 0, EpochMeter(), None
        self._write_checkpoint()
        if c.bound == "local":
            remove_other_epochs(self.run_dir, self.epoch)
        write_history(self.run_dir, self._history_document())
        return record

    def _vector_stores(self, epoch, reopen=False):
        """(the vectors epoch `epoch` reads, those it writes; reopen: the epoch resumed mid-way)."""
        if self.config.bound != "local":
            return None, None
        shapes = _affine_input_shapes(self.model)
        n = int(self.train_set.labels.shape[0])
        previous = None
        if epoch > 0:
            previous = VectorStore(epoch_folder(self.run_dir, epoch), shapes, n, host.float32, create=False)
        current = VectorStore(epoch_folder(self.run_dir, epoch + 1), shapes, n, host.float32, create=not reopen,
                              writable=reopen)
        return previous, current

    def _train_epoch(self):
        """The steps of epoch `self.epoch` from `self.step` on (a resumed epoch restores its random
        stream where the checkpoint left it); each step applied whole, then counted."""
        c = self.config
        epoch = self.epoch
        schedule = c.schedule()
        rng = _rng(c.seed, epoch)
        order = rng.permutation(int(self.train_set.labels.shape[0]))
        if self.step:
            rng.bit_generator.state = self.rng_state
        previous, current = self._vector_stores(epoch, reopen=self.step > 0)
        self._current = current
        while self.step < self.steps:
            self._stop_if_requested()
            started = time.perf_counter()
            index = host.sort(order[self.step * c.batch_size:(self.step + 1) * c.batch_size])
            t = epoch + self.step / self.steps
            stats, apply = self._step(index, eps_at(schedule, t), kappa_at(schedule, t), lr_at(schedule, t), rng,
                                      previous, current)
            with self.stop.commit():
                apply()
                self.step += 1
                self.rng_state = rng.bit_generator.state
                self.meter.add(stats, len(index), time.perf_counter() - started)
            self.progress({"event": "step", "epoch": epoch, "step": self.step, "steps": self.steps, **stats})
        if current is not None:
            current.flush()

    def _step(self, index, eps, kappa, lr, rng, previous, current):
        """One step computed: (its stats, the function that applies it: vectors stored, global
        vectors kept, Adam's update). Computing changes nothing but `rng`'s position, so a step
        can be abandoned before it is applied."""
        c = self.config
        xp = self.xp
        x = to_backend(augment(self.train_set.images[index], rng, c.crop_padding, c.flip), xp, self.dtype)
        y = to_backend(self.train_set.labels[index], xp)
        onehot = M.one_hot(y, self.model.n_classes, self.dtype)
        params = self.model.parameters()
        names = list(params)
        n = len(index)
        stored = None
        if previous is not None:
            stored = {k: to_backend(v, xp, self.dtype) for k, v in previous.read(index).items()}
        clean_only = kappa == 1.0 and c.sparsity == 0  # warm-up: clean training, stored vectors carried over
        options = BoundOptions(c.bound, "fast", c.n_iters, record=True)
        if not clean_only:
            global_starts, local_starts = start_vectors(self.model, n, c.bound, rng, stored, self.global_vectors)
            # the global power iteration once, here; each block only puts its norms on the tape
            norms = global_norms(self.model, "fast", c.n_iters, None, global_starts)
        last = self.model.layers[-1].linear_part(self.model.layers[-1].params)[0]

        def block_loss(s):
            share = (s.stop - s.start) / n
            if clean_only:
                loss = losses.clean_loss(self.model(x[s, ...]), onehot[s, ...])
                return loss, (None, {"clean_loss": _share_of(loss, share)})
            b = network_bounds(self.model, x[s, ...], eps, options, norms,
                               local_vectors={k: v[s, ...] for k, v in local_starts.items()})
            loss, clean, robust = losses.mixed_loss_terms(c.loss, b, last, onehot[s, ...], kappa)
            terms = {"clean_loss": clean, "robust_loss": robust}
            if c.sparsity > 0:
                terms["sparsity_loss"] = losses.sparsity_loss(b.activations, c.saturation_weight)
                loss = loss + terms["sparsity_loss"] * c.sparsity
            return loss, (b, {k: _share_of(v, share) for k, v in terms.items() if v is not None})
        value, grads, extras = blocked_gradients(xp, n, [params[k] for k in names], block_loss, self.threads,
                                                 self.sample_block)
        bounds = [b for b, _ in extras]
        if clean_only:
            new_vectors, lipschitz, global_vectors = stored, None, self.global_vectors
        else:
            global_vectors = bounds[0].global_vectors  # every block put the same vectors on the tape
            new_vectors = {k: xp.concat([b.local_vectors[k] for b in bounds], axis=0)
                           for k in bounds[0].local_vectors}
            lipschitz = float(to_host(xp.mean(xp.concat([value_of(b.lipschitz) for b in bounds], axis=0))))
        written = None
        if current is not None:
            if new_vectors is None or any(k not in new_vectors for k in current.shapes):
                new_vectors = self._fresh_vectors(n, rng, new_vectors or {})
            written = {k: to_host(xp.astype(new_vectors[k], xp.float32)) for k in current.shapes}
        value = float(to_host(value))
        if value != value:
            raise TrainingDiverged(f"training diverged: the loss is NaN at epoch {self.epoch}; lower --lr")

        def apply():
            self.global_vectors = global_vectors
            if written is not None:
                current.write(index, written)
            self.optimizer.lr = lr
            self.optimizer.step(dict(zip(names, grads)))
        terms = {k: _block_sum([t.get(k) for _, t in extras]) for k in LOSSES[1:]}
        return {"loss": value, **terms, "eps": eps, "kappa": kappa, "lr": lr, "lipschitz": lipschitz}, apply

    def _fresh_vectors(self, n, rng, have):
        out = dict(have)
        for key, shape in _affine_input_shapes(self.model).items():
            if key not in out:
                out[key] = self.xp.asarray(rng.standard_normal((n,) + tuple(shape)), dtype=self.dtype)
        return out

    def _evaluate(self, epoch):
        """Clean and certified accuracy after `epoch` epochs (its random starts from (seed, epoch))."""
        c = self.config
        ev = self.eval_set
        n = min(int(ev.labels.shape[0]), c.eval_limit)
        result = certify(self.model, ev.images[:n], ev.labels[:n], c.eval_eps,
                         CertifyConfig(mode="fast", n_iters=c.eval_iters, batch_size=100, pgd_steps=0),
                         rng=_rng(c.seed, 0xE7A1, epoch), threads=self.threads)
        s = result.summary()
        return _finite({"epoch": epoch, "eps": c.eval_eps, "n": n, "clean_accuracy": s["clean_accuracy"],
                        "certified_accuracy_global": s["certified_accuracy_global"],
                        "certified_accuracy_local": s["certified_accuracy_local"],
                        "median_local_over_global": s["median_local_over_global"],
                        "mean_constant_fraction": s["mean_constant_fraction"]})


def train(config, train_set, eval_set, run_dir, resume=False, progress=None, threads=None, sample_block=None,
          allow_overlap=False, data_specs=(None, None), stop=None):
    """Train (or resume) a run in `run_dir`; returns the per-epoch history. Nothing is written
    before the data, model and options have been checked. eval_set chooses best.npz, so an
    eval_set that overlaps train_set (the same dataset and split, the same file, the same
    images) is refused unless allow_overlap. data_specs: the two specs as the user gave them
    (recorded). threads: how many blocks of a batch run at once on the CPU (None:
    backend.default_threads); the results do not depend on it. sample_block: the most
    samples per block (None: backend.sample_blocks' default; results depend on it only
    through rounding). stop: a train_state.StopRequest; once pressed, the run stops before
    its next step with a checkpoint of the steps applied and raises TrainingInterrupted
    (`lipref train` presses it on Ctrl-C); resumed, the run continues as if never stopped."""
    return Trainer(config, train_set, eval_set, run_dir, resume, progress, threads, sample_block, allow_overlap,
                   data_specs, stop).run()
