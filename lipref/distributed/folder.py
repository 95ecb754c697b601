"""The shards of a run, and the folder their results are written to as they arrive.

A run's samples are cut into shards of consecutive samples, each a whole number of batches,
so a shard computes exactly the batches a single-process run computes. Each finished
shard is written atomically (`models.atomic_write_bytes`) as `shard-NNNNN.npz` beside a
`manifest.json` naming everything its numbers depend on; `--resume` reads the shards
already there and refuses a folder made with other options, model or data.
"""
import hashlib
import io
import json
import os

from ..backend import host
from ..data.files import hex_digest
from ..errors import InputError, RunFolderError
from ..models import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "lipref-shards/1"


def shard_ranges(n, batch_size, shard_size=None):
    """[(start, stop)] of the shards of n samples: shard_size samples each (None: one batch),
    which must be a whole number of batches, the last one shorter."""
    size = batch_size if shard_size is None else shard_size
    if size < 1 or size % batch_size:
        raise InputError(f"--shard-size must be a positive multiple of --batch-size ({batch_size}), got {size}")
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def file_digest(path):
    """sha256 of a file's bytes (the model a folder's shards were computed from)."""
    try:
        return hex_digest(path, "sha256")
    except OSError as exc:
        raise RunFolderError(f"cannot read {path}: {exc.strerror or exc}") from None


def array_digest(array):
    """sha256 of an array's dtype, shape and values (the data a folder's shards hold)."""
    a = host.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


class ShardFolder:
    """The folder of one run's shard results (see the module docstring)."""

    def __init__(self, path, manifest):
        self.path, self.manifest = os.fspath(path), manifest

    def shard_path(self, k):
        return os.path.join(self.path, f"shard-{k:05d}.npz")

    def open(self, resume):
        """Make the folder (or, with resume, check that its manifest is this run's); return the
        indices of the shards already written there."""
        existing = read_manifest(self.path)
        if existing is None:
            os.makedirs(self.path, exist_ok=True)
            atomic_write_bytes(os.path.join(self.path, MANIFEST), json.dumps(self.manifest, indent=1).encode())
            return set()
        if not resume:
            raise RunFolderError(f"{self.path} already holds shards of a run: add --resume to continue it, "
                                 "or choose another --shards-dir")
        differ = _differences(existing, self.manifest)
        if differ:
            raise RunFolderError(f"{self.path} holds shards of a run with other {', '.join(differ)}; resume it with "
                                 "the options it was started with, or choose another --shards-dir")
        return {k for k in range(self.manifest["shards"]) if os.path.exists(self.shard_path(k))}

    def write(self, k, arrays):
        buffer = io.BytesIO()
        host.savez(buffer, **arrays)
        atomic_write_bytes(self.shard_path(k), buffer.getvalue())

    def read(self, k):
        path = self.shard_path(k)
        try:
            with host.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
        except (OSError, ValueError) as exc:  # written atomically, so only a foreign file gets here
            raise RunFolderError(f"cannot read shard {path}: {exc}; delete it to compute it again") from None
        start, stop = self.manifest["shard_ranges"][k]
        if not arrays or any(a.shape[:1] != (stop - start,) for a in arrays.values()):
            raise RunFolderError(f"shard {path} does not hold samples {start}-{stop - 1}; delete it to compute it again")
        return arrays


def _differences(old, new):
    """The names of what differs between two manifests (an option by its name)."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += [f"--{k.replace('_', '-')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            names.append(key.replace("_sha256", "").replace("_", " "))
    return names


def read_manifest(path):
    """The manifest of the shard folder `path` (None where there is none)."""
    where = os.path.join(os.fspath(path), MANIFEST)
    if not os.path.exists(where):
        return None
    try:
        with open(where, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"cannot read {where}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RunFolderError(f"{where} is not a lipref shard manifest ({FORMAT})")
    return manifest


def resumed_seed(path, resume):
    """The seed recorded in the folder a run resumes (None when not resuming or none is there):
    a sound run's seed comes from OS entropy unless given, and a resumed run must reuse it."""
    if not resume or path is None:
        return None
    manifest = read_manifest(path)
    return None if manifest is None else manifest.get("options", {}).get("seed")
