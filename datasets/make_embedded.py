"""Build datasets/fashion-mnist-slice/ from a full Fashion-MNIST copy (tooling, not the engine).

    apt-get install -y dataset-fashion-mnist      # installs /usr/share/datasets/fashion-mnist/
    python datasets/make_embedded.py [SOURCE_DIR]

Takes the first 2000 training and first 500 test images (file order, as Zalando ships them),
writes them as IDX gzip files under the canonical names, and writes `checksums` (md5sum
format). The gzip header carries no timestamp or file name, so a rebuild from the same
source gives byte-identical files and the md5s in lipref.data.DATASETS['embedded'] hold.
"""
import gzip
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lipref.data import OK, read_idx_images, read_idx_labels, verify  # noqa: E402

SOURCE = Path("/usr/share/datasets/fashion-mnist")
TARGET = REPO / "datasets" / "fashion-mnist-slice"
COUNTS = {"train": 2000, "t10k": 500}


def idx_bytes(array, magic):
    """An IDX file: big-endian magic, big-endian dimensions, then the uint8 values."""
    array = numpy.ascontiguousarray(array, dtype=numpy.uint8)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_atomic(path, data):
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temp, 0o644)  # mkstemp makes 0600 files
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def main(source):
    bad = [(name, status) for name, status in verify("fashion-mnist", source) if status != OK]
    if bad:
        sys.exit(f"{source}: not a verified Fashion-MNIST copy: {bad}")
    TARGET.mkdir(parents=True, exist_ok=True)
    sums = []
    for prefix, count in COUNTS.items():
        images = read_idx_images(source / f"{prefix}-images-idx3-ubyte.gz")[:count]
        labels = read_idx_labels(source / f"{prefix}-labels-idx1-ubyte.gz")[:count]
        for kind, array, magic in (("images-idx3", images, 0x803), ("labels-idx1", labels, 0x801)):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = gzip.compress(idx_bytes(array, magic), compresslevel=9, mtime=0)
            write_atomic(TARGET / name, data)
            sums.append(f"{hashlib.md5(data).hexdigest()}  {name}\n")
            print(f"{name}: {len(array)} items, {len(data)} bytes")
    write_atomic(TARGET / "checksums", "".join(sums).encode())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
