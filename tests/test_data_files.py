"""Raw files: gzip payloads (several members, zero padding, truncation), checksum lists, .npz."""
import gzip

import numpy
import pytest

from lipref.data import DataError, read_checksums, read_npz
from lipref.data.files import file_payload, read_bytes


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
