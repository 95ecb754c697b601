"""Raw files: gzip payloads (several members, zero padding, truncation), checksum lists, .npz;
what files declare (shapes, inflated sizes) checked against what they hold and the memory budget."""
import gzip
import io
import tarfile
import zipfile

import numpy
import pytest

from lipref.data import DataError, load_array_file, load_dataset, read_checksums, read_npz
from lipref.data.files import BUDGET_VARIABLE, file_payload, memory_budget, read_bytes


def test_gzip_members_and_padding_are_one_payload(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(b"abc") + gzip.compress(b"def") + b"\x00" * 8)
    assert file_payload(path) == (b"abcdef", True)
    path.write_bytes(gzip.compress(b"abcdef" * 100)[:-12])
    data, complete = file_payload(path)
    assert not complete and (b"abcdef" * 100).startswith(data)
    path.write_bytes(gzip.compress(b"abc") + b"junk")
    with pytest.raises(DataError, match="unexpected bytes after the end of the gzip data"):
        file_payload(path)
    plain = tmp_path / "plain"
    plain.write_bytes(b"\x00\x01")
    assert file_payload(plain) == (b"\x00\x01", True)


def test_read_bytes_names_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_bytes(tmp_path / "nothing")
    with pytest.raises(DataError, match="is a folder"):
        read_bytes(tmp_path)


def test_checksum_lists(tmp_path):
    path = tmp_path / "checksums"
    path.write_text("0123456789abcdef0123456789ABCDEF *a.gz\n\nfedcba9876543210fedcba9876543210  b c\n")
    assert read_checksums(path) == {"a.gz": "0123456789abcdef0123456789abcdef",
                                    "b c": "fedcba9876543210fedcba9876543210"}
    path.write_text("abc  a.gz\n")
    with pytest.raises(DataError, match="line 1: expected '<md5>  <file>'"):
        read_checksums(path)


def test_read_npz_archives_and_single_arrays(tmp_path):
    numpy.savez(tmp_path / "a.npz", x=numpy.arange(3))
    numpy.save(tmp_path / "b.npy", numpy.arange(3))
    assert list(read_npz(tmp_path / "a.npz")) == ["x"]
    assert read_npz(tmp_path / "b.npy") is None


# ---------------------------------------------------------------- declared sizes, checked first

def npy_bytes(array):
    buf = io.BytesIO()
    numpy.save(buf, array)
    return buf.getvalue()


def forged_npy(shape, dtype, data=b""):
    """An .npy header that declares `shape` and `dtype`, followed by `data` (not what it declares)."""
    header = numpy.lib.format.header_data_from_array_1_0(numpy.zeros(1, dtype=dtype))
    header["shape"] = shape
    buf = io.BytesIO()
    numpy.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def write_zip(path, members, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=method, compresslevel=1 if method else None) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("shape,dtype,declared", [((2 ** 40, 1, 1, 4), numpy.uint8, "4398046511104 bytes (4.0 TiB)"),
                                                  ((2 ** 29, 1, 1, 4), numpy.float32, "8589934592 bytes (8.0 GiB)")])
def test_npz_header_declaring_more_than_its_member_holds(tmp_path, shape, dtype, declared):
    """numpy.load would allocate what the header declares (a MemoryError) before reading."""
    path = write_zip(tmp_path / "huge.npz", {"images.npy": forged_npy(shape, dtype, bytes(64)),
                                             "labels.npy": npy_bytes(numpy.zeros(2, dtype=numpy.int64))})
    with pytest.raises(DataError) as info:
        load_array_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: member images.npy declares an array of shape {shape} and dtype "
                              f"{numpy.dtype(dtype)}, {declared}, but holds 64 bytes"), message
    with pytest.raises(DataError, match="member images.npy declares"):
        read_npz(path)


def test_zip_bomb_refused_before_inflating(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_VARIABLE, "1M")
    zeros = npy_bytes(numpy.zeros((2 ** 22, 1, 1, 4), dtype=numpy.uint8))  # 16 MiB, ~16 KiB deflated
    path = write_zip(tmp_path / "bomb.npz", {"images.npy": zeros, "labels.npy": npy_bytes(numpy.zeros(2))},
                     zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError) as info:
        load_array_file(path)
    message = str(info.value)
    with zipfile.ZipFile(path) as archive:
        packed = archive.getinfo("images.npy").compress_size
    assert message.startswith(f"{path}: member images.npy takes {len(zeros)} bytes (16.0 MiB) uncompressed, "
                              f"{packed} bytes ("), message
    assert "beyond the memory budget of 1048576 bytes (1.0 MiB); raise it with LIPREF_MEMORY_BUDGET" in message
    halves = {f"{name}.npy": npy_bytes(numpy.zeros(600_000, dtype=numpy.uint8)) for name in ("images", "labels")}
    with pytest.raises(DataError, match=r"the archive's members inflate to 1200\d+ bytes .* in all, beyond"):
        read_npz(write_zip(tmp_path / "two.npz", halves))
    monkeypatch.setenv(BUDGET_VARIABLE, "17M")  # the same file, within a raised budget: read as it is
    assert read_npz(path)["images"].shape == (2 ** 22, 1, 1, 4)


def test_memory_budget_from_the_environment(monkeypatch):
    for text, expected in (("64G", 64 << 30), ("512MiB", 512 << 20), ("1000", 1000), ("1.5k", 1536)):
        monkeypatch.setenv(BUDGET_VARIABLE, text)
        assert memory_budget() == expected
    for text in ("lots", "-5G", "0", "1X"):
        monkeypatch.setenv(BUDGET_VARIABLE, text)
        with pytest.raises(DataError, match=f"{BUDGET_VARIABLE}="):
            memory_budget()
    monkeypatch.delenv(BUDGET_VARIABLE)
    assert memory_budget() >= 1 << 20


def test_gzip_bomb_stops_at_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_VARIABLE, "1M")
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00" * (4 << 20), compresslevel=1))
    with pytest.raises(DataError, match=f"{path}: the gzip data inflate to more than the memory budget of 1048576"):
        file_payload(path)
    path.write_bytes(gzip.compress(b"\x00" * (600 << 10)) * 2)  # two members, over the budget together
    with pytest.raises(DataError, match="inflate to more than"):
        file_payload(path)
    path.write_bytes(gzip.compress(b"\x00" * (1 << 20)))  # exactly the budget
    assert file_payload(path) == (b"\x00" * (1 << 20), True)


def test_cifar_tar_member_beyond_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_VARIABLE, "1M")
    data = b"\x00" * (2 << 20)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz", compresslevel=1) as archive:
        member = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    with pytest.raises(DataError, match=r"member cifar-10-batches-py/test_batch takes 2097152 bytes \(2.0 MiB\) "
                                        r"uncompressed, beyond the memory budget"):
        load_dataset("cifar10:test", data_dir=tmp_path)
