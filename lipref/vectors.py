"""Per-sample power-iteration vectors kept across epochs, on disk (memory-mapped .npy files).

The paper keeps one start vector per training example and layer and warm-starts masked
power iteration from it at the next visit, so a few iterations per step suffice. For a
4c3f model on MNIST that is ~190 kB per example (11 GB for 60,000), hence memory maps.

Epoch e reads the vectors written during epoch e - 1 and writes fresh files for epoch e
(double buffering), so a run killed mid-epoch still has the complete set it started the
epoch with, and `--resume` replays the epoch exactly.
"""
import shutil
from pathlib import Path

from .backend import host
from .errors import InputError, RunFolderError


class VectorStore:
    """Vectors of one epoch: for each layer key, an array (n_samples,) + layer input shape."""

    def __init__(self, folder, shapes, n_samples, dtype, create, writable=False):
        # writable: an existing store reopened for writing (an epoch resumed mid-way)
        self.folder = Path(folder)
        self.shapes = dict(shapes)
        self.arrays = {}
        if create:
            self.folder.mkdir(parents=True, exist_ok=True)
        for key, shape in self.shapes.items():
            path = self.folder / f"layer-{key}.npy"
            if create:
                self.arrays[key] = host.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                                               shape=(n_samples,) + tuple(shape))
            else:
                if not path.exists():
                    raise RunFolderError(f"{path}: power-iteration vectors missing from the run folder")
                self.arrays[key] = host.load(path, mmap_mode="r+" if writable else "r")
                if tuple(self.arrays[key].shape) != (n_samples,) + tuple(shape):
                    raise InputError(f"{path}: vectors of shape {self.arrays[key].shape}, "
                                     f"expected {(n_samples,) + tuple(shape)}")

    def read(self, index):
        """{key: host array (len(index),) + shape} for sample indices `index`."""
        return {key: host.asarray(a[index]) for key, a in self.arrays.items()}

    def write(self, index, values):
        for key, a in self.arrays.items():
            a[index] = values[key]

    def flush(self):
        for a in self.arrays.values():
            if hasattr(a, "flush"):
                a.flush()

    def nbytes(self):
        return sum(int(a.nbytes) for a in self.arrays.values())


def epoch_folder(run_dir, epoch):
    return Path(run_dir) / "vectors" / f"epoch-{epoch}"


def remove_other_epochs(run_dir, keep):
    """Delete vector folders of epochs other than `keep` (after a checkpoint made them stale)."""
    root = Path(run_dir) / "vectors"
    if not root.exists():
        return
    for folder in root.iterdir():
        if folder.name != f"epoch-{keep}":
            shutil.rmtree(folder, ignore_errors=True)
