"""CIFAR-10's python pickle batches, from `cifar-10-batches-py/` or straight out of the
`cifar-10-python.tar.gz` tarball (no extraction needed)."""
import pickle
import tarfile
import zlib

from ..backend import host
from .files import DataError, check_budget, memory_budget, read_bytes
from .registry import CIFAR_ARCHIVE, CIFAR_FOLDER, CIFAR_SPLIT_BATCHES, check_label_range, not_found


def read_cifar_batch(raw, where, n_classes=10):
    """(images (N, 3, 32, 32) uint8, labels (N,)) from the bytes of one CIFAR python batch.

    Unpickling runs code named in the file: only read batches you trust (see `verify`)."""
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as exc:  # any failure to unpickle means this is not a CIFAR batch
        raise DataError(f"{where}: not a CIFAR-10 python batch (unpickling failed: "
                        f"{type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: CIFAR batch should be a dict, got {type(batch).__name__}")
    for key in (b"data", b"labels"):
        if key not in batch:
            raise DataError(f"{where}: CIFAR batch has no {key!r} entry (keys: {sorted(map(repr, batch))})")
    data = batch[b"data"]
    if not isinstance(data, host.ndarray) or data.dtype != host.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{where}: CIFAR b'data' should be a uint8 array of shape (N, 3072), "
                        f"got {dtype} {shape}")
    labels = _as_labels(batch[b"labels"], where)
    if len(labels) != len(data):
        raise DataError(f"{where}: {len(data)} images but {len(labels)} labels")
    check_label_range(labels, n_classes, where)
    # each row: 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    return data.reshape(-1, 3, 32, 32), labels


def _as_labels(values, where):
    if not isinstance(values, (list, tuple, host.ndarray)):
        raise DataError(f"{where}: labels should be a list of integers, got {type(values).__name__}")
    labels = host.asarray(values)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{where}: labels should be a flat list of integers, got {labels.dtype} {labels.shape}")
    return labels.astype(host.int64)


def _cifar_source(folder):
    """('dir', path) for an extracted batches folder, ('tar', path) for the tarball, or None."""
    for candidate in (folder / CIFAR_FOLDER, folder):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return "dir", candidate
    if (folder / CIFAR_ARCHIVE).is_file():
        return "tar", folder / CIFAR_ARCHIVE
    return None


def _cifar_batches(kind, path, names):
    """Yield (where, raw bytes) for each batch name, from a folder or from the tarball."""
    if kind == "dir":
        for name in names:
            yield str(path / name), read_bytes(path / name)
        return
    budget = memory_budget()
    try:
        with tarfile.open(path, "r:gz") as archive:
            for name in names:
                member = f"{CIFAR_FOLDER}/{name}"
                try:
                    info = archive.getmember(member)
                except KeyError:
                    info = None
                handle = None if info is None else archive.extractfile(info)
                if handle is None:
                    raise DataError(f"{path}: archive has no file {member}")
                check_budget(f"{path}: member {member}", info.size, budget)  # before inflating it
                yield f"{path}:{member}", handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the tar.gz archive ({type(exc).__name__}: {exc})") from None


def load_cifar(info, split, dirs, limit):
    for folder in dirs:
        source = _cifar_source(folder)
        if source is None:
            continue
        images, labels, count = [], [], 0
        for where, raw in _cifar_batches(*source, CIFAR_SPLIT_BATCHES[split]):
            batch_images, batch_labels = read_cifar_batch(raw, where, info.n_classes)
            images.append(batch_images)
            labels.append(batch_labels)
            count += len(batch_labels)
            if limit is not None and count >= limit:
                break
        images = host.concatenate(images)[:limit]
        labels = host.concatenate(labels)[:limit]
        return images, labels, info.class_names, str(source[1])
    raise not_found(info, dirs, f"{CIFAR_FOLDER}/ or {CIFAR_ARCHIVE}")
