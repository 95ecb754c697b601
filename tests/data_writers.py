"""Writers of the real dataset formats (IDX, CIFAR pickle batches), the tests' own, not
lipref's, so a reader bug cannot cancel out a matching writer bug."""
import gzip
import pickle

import numpy


def idx_bytes(array, magic):
    array = numpy.ascontiguousarray(array, dtype=numpy.uint8)
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def write_idx(path, array, magic, compress):
    raw = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_idx_split(folder, images, labels, prefix="t10k"):
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x803, True)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801, True)


def cifar_batch(rng, n, first_label=0):
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=numpy.uint8)
    labels = [(first_label + i) % 10 for i in range(n)]
    return {b"batch_label": b"testing batch", b"labels": labels, b"data": pixels,
            b"filenames": [b"x.png"] * n}


def write_cifar_tree(folder, rng, per_batch=3):
    batches = {}
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = cifar_batch(rng, per_batch, first_label=i)
        (base / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    return batches
