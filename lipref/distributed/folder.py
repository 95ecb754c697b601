"""The shards of a run, and the folder their results are written to as they arrive.

A run's samples are cut into shards of consecutive samples, each a whole number of batches,
so a shard computes exactly the batches a single-process run computes. Each finished
shard is written atomically (`models.atomic_write_bytes`) as `shard-NNNNN.npz` beside a
`manifest.json` naming everything the run's numbers depend on: the model file's and the
data's digests and every option that can change a number. Each shard file also carries its
own record (`shard_record`): its samples, the digests of the image and label rows it was
computed from, of the model file and of the manifest's options, and lipref's version.

`--resume` refuses a folder whose manifest is another run's (naming what differs), and
recomputes, never merges, a shard whose file is not what this run would write there: another
record (other samples, rows, model, options or version), a file that cannot be read
(truncated, empty, not an archive) or one that lacks an array.
"""
import hashlib
import io
import json
import os
import zipfile
import zlib

from .. import __version__
from ..backend import host
from ..data.files import hex_digest
from ..errors import InputError, RunFolderError
from ..models import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "lipref-shards/2"
RECORD = "__shard__"  # the array of a shard file holding its record (JSON bytes, as a model file's __lipref__)
FLAGS = {"n_iters": "--iters", "data_spec": "--data"}  # manifest options whose flag is not --their-name
# what reading a damaged .npz raises (zipfile: structure, CRC, "encrypted", compression methods as
# NotImplementedError; numpy: the .npy headers; a member that is not there), each seen by flipping bytes
UNREADABLE = (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile, zlib.error)


class StaleShard(Exception):
    """A shard file that this run must not merge (the message says why); it is recomputed."""


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


def options_digest(options):
    """sha256 of a manifest's options (JSON with sorted keys: the same options, the same digest)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def shard_record(manifest, images, labels, start, stop):
    """What the shard of samples start .. stop - 1 of the run of `manifest` is computed from:
    its samples, the digests of its image and label rows, the model file's and the options'
    digests, and lipref's version. A shard file with another record is not this shard."""
    return {"first": int(start), "last": int(stop) - 1, "images_sha256": array_digest(images[start:stop]),
            "labels_sha256": array_digest(labels[start:stop]), "model_sha256": manifest["model_sha256"],
            "options_sha256": options_digest(manifest["options"]), "lipref_version": __version__}


class ShardFolder:
    """The folder of one run's shard results (see the module docstring)."""

    def __init__(self, path, manifest):
        self.path, self.manifest = os.fspath(path), manifest

    def shard_path(self, k):
        return os.path.join(self.path, f"shard-{k:05d}.npz")

    def open(self, resume):
        """Make the folder (or, with resume, check that its manifest is this run's); return the
        indices of the shard files there (not yet read: see `read`)."""
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

    def write(self, k, arrays, record):
        """Shard k's arrays and its record (`shard_record`), written atomically."""
        buffer = io.BytesIO()
        host.savez(buffer, **arrays, **{RECORD: _record_array(record)})
        atomic_write_bytes(self.shard_path(k), buffer.getvalue())

    def read(self, k, record, names):
        """Shard k's arrays `names`, when its file holds exactly them, each with one row per
        sample, under `record`; else StaleShard saying why."""
        arrays = _load(self.shard_path(k))
        found = _record_of(arrays.pop(RECORD, None))
        if found != record:
            raise StaleShard(_record_mismatch(found, record))
        missing = [n for n in names if n not in arrays]
        extra = sorted(set(arrays) - set(names))
        if missing or extra:
            raise StaleShard(f"the file lacks {', '.join(missing)}" if missing else
                             f"the file holds unexpected arrays {', '.join(extra)}")
        rows = record["last"] - record["first"] + 1
        short = [n for n in names if arrays[n].shape[:1] != (rows,)]
        if short:
            raise StaleShard(f"{', '.join(short)} in the file do not hold {rows} rows")
        return arrays


def _load(path):
    """{name: array} of the .npz file at `path`, or StaleShard when it cannot be read."""
    if os.path.getsize(path) == 0:
        raise StaleShard("the file is empty")
    try:
        loaded = host.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):
            raise StaleShard("the file is not an .npz archive")
        with loaded as f:
            return {name: f[name] for name in f.files}
    except UNREADABLE as exc:
        detail = " ".join(str(exc).split())
        raise StaleShard(f"the file cannot be read ({type(exc).__name__}{': ' if detail else ''}{detail})") from None


def _record_array(record):
    return host.frombuffer(json.dumps(record, sort_keys=True).encode("utf-8"), dtype=host.uint8)


def _record_of(array):
    """The record a shard file holds (None: none, or one that is not a JSON object)."""
    if array is None:
        return None
    try:
        record = json.loads(host.asarray(array, dtype=host.uint8).tobytes().decode("utf-8"))
    except (ValueError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def _record_mismatch(found, expected):
    """Why a shard file's record `found` is not `expected`, in a few words."""
    if found is None:
        return "the file holds no readable shard record"
    if (found.get("first"), found.get("last")) != (expected["first"], expected["last"]):
        return f"the file holds samples {found.get('first')}-{found.get('last')}"
    for key, what in (("images_sha256", "other images"), ("labels_sha256", "other labels"),
                      ("model_sha256", "another model file"), ("options_sha256", "other options")):
        if found.get(key) != expected[key]:
            return f"the file was computed from {what}"
    if found.get("lipref_version") != expected["lipref_version"]:
        return f"the file was written by lipref {found.get('lipref_version')}, not {expected['lipref_version']}"
    return "the file's shard record is not this run's"


def _differences(old, new):
    """The names of what differs between two manifests (an option by its flag)."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += [FLAGS.get(k, f"--{k.replace('_', '-')}") for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
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
        raise RunFolderError(f"cannot read {where}: {exc}; choose another --shards-dir") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        what = f"in format {found}" if isinstance(found, str) else "not a lipref shard manifest"
        raise RunFolderError(f"{where} is {what}, this lipref reads {FORMAT}; choose another --shards-dir")
    return manifest


def resumed_seed(path, resume):
    """The seed recorded in the folder a run resumes (None when not resuming or none is there):
    a sound run's seed comes from OS entropy unless given, and a resumed run must reuse it."""
    if not resume or path is None:
        return None
    manifest = read_manifest(path)
    return None if manifest is None else manifest.get("options", {}).get("seed")
