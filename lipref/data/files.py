"""Raw files: whole-file bytes, gzip payloads, md5 checksums, UTF-8 text lines, .npz
archives; and `DataError`, what every reader raises for a file that is not what it claims
to be (naming the file and the problem, never a traceback from inside gzip or NumPy)."""
import hashlib
import zipfile
import zlib
from pathlib import Path

from ..backend import host
from ..errors import UserError

# What numpy and zipfile raise for a damaged .npz: zipfile raises NotImplementedError /
# RuntimeError for damaged header fields (version, compression method, encryption flag).
NPZ_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error)


class DataError(UserError, ValueError):
    """A dataset file or request that cannot be used; the message names the file and the problem."""


GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path):
    """The whole file, or a DataError saying why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _gunzip(path, raw):
    """Decompress every gzip member of `raw`; returns (data, complete).

    zlib's incremental decoder is used instead of the gzip module so a truncated .gz still
    yields the bytes it holds, and the caller can say how much of the IDX file is missing."""
    parts = []
    while True:
        decoder = zlib.decompressobj(wbits=31)  # 31: expect the gzip header and check its CRC
        try:
            parts.append(decoder.decompress(raw))
            parts.append(decoder.flush())
        except zlib.error as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
        if not decoder.eof:
            return b"".join(parts), False
        raw = decoder.unused_data
        if not raw.strip(b"\x00"):  # gzip allows zero padding after the last member
            return b"".join(parts), True
        if raw[:2] != GZIP_MAGIC:
            raise DataError(f"{path}: unexpected bytes after the end of the gzip data")


def file_payload(path):
    """(content, complete): the file's bytes, decompressed when it starts with the gzip magic."""
    raw = read_bytes(path)
    if raw[:2] == GZIP_MAGIC:
        return _gunzip(path, raw)
    return raw, True


def hex_digest(path, algorithm):
    """Hex digest (hashlib's `algorithm`) of a file's bytes, read in chunks (archives can be
    hundreds of MB)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_of(path):
    """Hex md5 of a file's bytes (the datasets' published checksums)."""
    return hex_digest(path, "md5")


def file_matches(path, entry):
    """True if the file is `entry` byte for byte, or (for .gz) holds the same decompressed data."""
    if md5_of(path) == entry.md5:
        return True
    if not entry.payload_md5:
        return False
    try:
        data, complete = file_payload(path)
    except DataError:
        return False
    return complete and hashlib.md5(data, usedforsecurity=False).hexdigest() == entry.payload_md5


def read_text_lines(path):
    raw = read_bytes(path)
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_checksums(path):
    """{file name: md5} from an `md5sum`-style file ('<md5>  <name>' per line)."""
    table = {}
    for number, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 32:
            raise DataError(f"{path}: line {number}: expected '<md5>  <file>', got {line!r}")
        table[parts[1].lstrip("*").strip()] = parts[0].lower()
    return table


def read_npz(path):
    """{name: host array} of an .npz file (no pickles), or None for a plain .npy file.
    Raises one of NPZ_ERRORS for a file that is neither."""
    loaded = host.load(path, allow_pickle=False)
    if not isinstance(loaded, host.lib.npyio.NpzFile):
        return None
    with loaded as npz:
        return {name: npz[name] for name in npz.files}


def read_npz_checked(path, error, what):
    """{name: host array} of the .npz file at `path`, or `error` (a UserError class) naming
    the path and `what` the file should be: missing, unreadable, or a single .npy array."""
    if not Path(path).is_file():
        raise error(f"{path}: no such {what}")
    try:
        arrays = read_npz(path)
    except NPZ_ERRORS as exc:
        raise error(f"{path}: not a {what} (not a readable .npz file: {exc})") from None
    if arrays is None:
        raise error(f"{path}: not a {what} (a single .npy array, not an .npz archive)")
    return arrays
