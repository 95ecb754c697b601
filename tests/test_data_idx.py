"""IDX files written here in the real format: round trips, and every damage named."""
import gzip
import tempfile
from pathlib import Path

import numpy
import pytest
from data_writers import idx_bytes, write_idx, write_idx_split
from hypothesis import given
from hypothesis import strategies as st

from lipref import data
from lipref.data import DataError, load_dataset


@given(n=st.integers(0, 5), rows=st.integers(1, 7), cols=st.integers(1, 7), compress=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_idx_round_trip(n, rows, cols, compress, seed):
    rng = numpy.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=numpy.uint8)
    labels = rng.integers(0, 10, size=n, dtype=numpy.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        name = "x.gz" if compress else "x"
        got = data.read_idx_images(write_idx(Path(tmp) / name, images, 0x803, compress))
        numpy.testing.assert_array_equal(got, images)
        assert got.shape == (n, rows, cols)
        got_labels = data.read_idx_labels(write_idx(Path(tmp) / ("l" + name), labels, 0x801, compress))
        numpy.testing.assert_array_equal(got_labels, labels)


def test_plain_idx_found_under_decompressed_names(tmp_path):
    images = numpy.arange(2 * 28 * 28, dtype=numpy.uint64).reshape(2, 28, 28) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, 0x803, False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", numpy.array([3, 9]), 0x801, False)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.images.dtype == numpy.float32 and ds.labels.dtype == numpy.int64
    assert ds.images.shape == (2, 1, 28, 28)
    numpy.testing.assert_array_equal(ds.images[:, 0] * 255, images.astype(numpy.float32))
    numpy.testing.assert_array_equal(ds.labels, [3, 9])
    assert (ds.name, ds.split, ds.n_classes, ds.input_shape) == ("mnist", "test", 10, (1, 28, 28))


@pytest.mark.parametrize("compress", [False, True])
def test_idx_bad_magic(tmp_path, compress):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", numpy.zeros((2, 3, 3)), 0x803, compress)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: bad IDX magic number 0x00000803, "
                                        r"expected 0x00000801"):
        data.read_idx_labels(path)
    raw = idx_bytes(numpy.zeros((2, 3, 3)), 0x0D03)  # IDX of float32 values: not ours
    (tmp_path / "f").write_bytes(raw)
    with pytest.raises(DataError, match="bad IDX magic number 0x00000d03"):
        data.read_idx_images(tmp_path / "f")


def test_idx_truncated_message_names_file_and_sizes(tmp_path):
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (10000, 28, 28))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + bytes(1234 - len(header))))
    with pytest.raises(DataError) as info:
        data.read_idx_images(path)
    assert str(info.value) == f"{path}: truncated IDX file: expected 7840016 bytes, got 1234"


@given(cut=st.integers(0, 4 + 12 + 5 * 4 * 4 - 1), compress=st.booleans())
def test_idx_truncated_anywhere(cut, compress):
    images = numpy.arange(5 * 4 * 4, dtype=numpy.uint8).reshape(5, 4, 4)
    raw = idx_bytes(images, 0x803)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut.idx"
        if compress:
            stored = gzip.compress(raw)
            path.write_bytes(stored[: max(2, cut * len(stored) // len(raw))])
        else:
            path.write_bytes(raw[:cut])
        with pytest.raises(DataError, match=r"cut\.idx: .*truncated"):
            data.read_idx_images(path)


def test_idx_too_long_and_corrupt_gzip(tmp_path):
    raw = idx_bytes(numpy.ones((2, 2, 2)), 0x803)
    (tmp_path / "long").write_bytes(raw + b"\x00")
    with pytest.raises(DataError, match="long: IDX file too long"):
        data.read_idx_images(tmp_path / "long")
    stored = bytearray(gzip.compress(raw))
    stored[-8] ^= 0xFF  # break the CRC32 in the gzip trailer
    (tmp_path / "crc.gz").write_bytes(bytes(stored))
    with pytest.raises(DataError, match="crc.gz: corrupt gzip data"):
        data.read_idx_images(tmp_path / "crc.gz")
    with pytest.raises(DataError, match="nothere: file not found"):
        data.read_idx_images(tmp_path / "nothere")


def test_idx_wrong_dims_and_mismatches(tmp_path):
    write_idx_split(tmp_path / "a", numpy.zeros((3, 27, 28)), numpy.zeros(3))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: IDX images are 27x28, expected 28x28"):
        load_dataset("mnist", data_dir=tmp_path / "a")
    write_idx_split(tmp_path / "b", numpy.zeros((3, 28, 28)), numpy.zeros(4))
    with pytest.raises(DataError, match="3 images but t10k-labels-idx1-ubyte.gz has 4 labels"):
        load_dataset("mnist", data_dir=tmp_path / "b")
    write_idx_split(tmp_path / "c", numpy.zeros((2, 28, 28)), numpy.array([1, 10]))
    with pytest.raises(DataError, match=r"labels should lie in \[0, 10\), found 1..10"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "c")
    write_idx(tmp_path / "zero", numpy.zeros((2, 0, 5)), 0x803, False)
    with pytest.raises(DataError, match="empty dimension"):
        data.read_idx_images(tmp_path / "zero")


def test_limit_and_missing_files(tmp_path):
    write_idx_split(tmp_path, numpy.zeros((6, 28, 28)), numpy.arange(6), prefix="train")
    ds = load_dataset("mnist:train", data_dir=tmp_path, limit=4)
    numpy.testing.assert_array_equal(ds.labels, [0, 1, 2, 3])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz not found in "
                                        + str(tmp_path)):
        load_dataset("mnist:test", data_dir=tmp_path)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(DataError, match="limit must be a positive integer"):
            load_dataset("mnist:train", data_dir=tmp_path, limit=bad)
