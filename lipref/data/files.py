"""Raw files: whole-file bytes, gzip payloads, md5 checksums, UTF-8 text lines, .npz
archives; and `DataError`, what every reader raises for a file that is not what it claims
to be (naming the file and the problem, never a traceback from inside gzip or NumPy).

Sizes are checked before anything is allocated: what a file declares (an .npz member's
shape and dtype, its inflated size in the zip directory; a gzip stream's output) must fit
what the file holds and `memory_budget()`, so that a forged header or a zip bomb is one
line naming the file, never a MemoryError."""
import hashlib
import os
import re
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
NPY_MAGIC = b"\x93NUMPY"
BUDGET_VARIABLE = "LIPREF_MEMORY_BUDGET"
_DEFAULT_BUDGET = 8 << 30  # where the physical memory cannot be read
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_budget():
    """The most bytes one data or model file may put in memory: $LIPREF_MEMORY_BUDGET (bytes,
    or a number with K, M, G or T, powers of 1024: "512M", "64G"), else half the machine's
    physical memory (8 GiB where the system does not say)."""
    text = os.environ.get(BUDGET_VARIABLE, "").strip()
    if not text:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (AttributeError, ValueError, OSError):  # not a POSIX system
            return _DEFAULT_BUDGET
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text, re.IGNORECASE)
    if not found or float(found[1]) * _UNITS[found[2].upper()] < 1:
        raise DataError(f"{BUDGET_VARIABLE}={text!r}: expected a number of bytes, optionally with K, M, G or T "
                        "(e.g. 64G)")
    return int(float(found[1]) * _UNITS[found[2].upper()])


def size_text(n):
    """n bytes for a reader: '4294967296 bytes (4.0 GiB)'."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n} bytes ({n / scale:.1f} {unit})"
    return f"{n} bytes"


def check_budget(where, size, budget, packed=None):
    """DataError naming `where` when `size` bytes (uncompressed; `packed`: the bytes in the
    file) exceed `budget`."""
    if size > budget:
        in_file = "" if packed is None else f", {size_text(packed)} in the file"
        raise DataError(f"{where} takes {size_text(size)} uncompressed{in_file}, beyond {budget_text(budget)}")


def budget_text(budget):
    return f"the memory budget of {size_text(budget)}; raise it with {BUDGET_VARIABLE} (e.g. {BUDGET_VARIABLE}=64G)"


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


def _inflate(path, decoder, raw, out, budget):
    """Append what `decoder` makes of `raw` to `out`, never more than `budget` bytes in all
    (max_length caps each step, so a gzip bomb stops at the budget, not at the memory's end)."""
    while True:
        out += decoder.decompress(raw, budget + 1 - len(out))  # max_length >= 1 (0 would mean unlimited)
        if len(out) > budget:
            raise DataError(f"{path}: the gzip data inflate to more than {budget_text(budget)}")
        raw = decoder.unconsumed_tail
        if not raw or decoder.eof:
            break
    out += decoder.flush()
    if len(out) > budget:
        raise DataError(f"{path}: the gzip data inflate to more than {budget_text(budget)}")


def _gunzip(path, raw):
    """Decompress every gzip member of `raw`; returns (data, complete).

    zlib's incremental decoder is used instead of the gzip module so a truncated .gz still
    yields the bytes it holds, and the caller can say how much of the IDX file is missing."""
    out, budget = bytearray(), memory_budget()
    while True:
        decoder = zlib.decompressobj(wbits=31)  # 31: expect the gzip header and check its CRC
        try:
            _inflate(path, decoder, raw, out, budget)
        except zlib.error as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
        if not decoder.eof:
            return bytes(out), False
        raw = decoder.unused_data
        if not raw.strip(b"\x00"):  # gzip allows zero padding after the last member
            return bytes(out), True
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


def _npy_header(member):
    """(shape, dtype) from the header of an open .npy stream (NumPy's own header reader)."""
    version = host.lib.format.read_magic(member)
    readers = {(1, 0): host.lib.format.read_array_header_1_0, (2, 0): host.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version[0]}.{version[1]} (lipref reads 1.0 and 2.0)")
    shape, _, dtype = readers[version](member)
    return shape, dtype


def _product(dims):
    total = 1
    for d in dims:
        total *= int(d)
    return total


def check_npz_sizes(path, archive, budget):
    """Refuse (DataError) an .npz whose members cannot be what they declare, before NumPy
    allocates them: a member's header must promise no more bytes than the member holds (its
    uncompressed size in the zip directory, which also caps what zipfile will inflate), and
    the members' uncompressed sizes, each and in all, must fit `budget`."""
    total = 0
    for info in archive.infolist():
        where = f"{path}: member {info.filename}"
        check_budget(where, info.file_size, budget, info.compress_size)
        total += info.file_size
        if not info.filename.endswith(".npy"):
            continue
        with archive.open(info) as member:
            try:
                shape, dtype = _npy_header(member)
            except (ValueError, EOFError, SyntaxError) as exc:  # what NumPy's header parser raises
                raise DataError(f"{where}: not a readable .npy header ({exc})") from None
            declared, held = _product(shape) * dtype.itemsize, info.file_size - member.tell()
        if declared > held:
            raise DataError(f"{where} declares an array of shape {tuple(shape)} and dtype {dtype}, "
                            f"{size_text(declared)}, but holds {size_text(max(held, 0))}: a corrupt or forged file")
    if total > budget:
        raise DataError(f"{path}: the archive's members inflate to {size_text(total)} in all, beyond "
                        f"{budget_text(budget)}")


def read_npz(path):
    """{name: host array} of an .npz file (no pickles), or None for a plain .npy file, every
    member's size checked first (`check_npz_sizes`, against `memory_budget()`). Raises one of
    NPZ_ERRORS for a file that is neither, DataError for one whose sizes do not add up."""
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) == NPY_MAGIC:
            return None  # not loaded: only its kind matters
    with zipfile.ZipFile(path) as archive:
        check_npz_sizes(path, archive, memory_budget())
    with host.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def read_npz_checked(path, error, what):
    """{name: host array} of the .npz file at `path`, or `error` (a UserError class) naming
    the path and `what` the file should be: missing, unreadable, or a single .npy array."""
    if not Path(path).is_file():
        raise error(f"{path}: no such {what}")
    try:
        arrays = read_npz(path)
    except DataError as exc:  # sizes that do not add up (a DataError is also a ValueError: caught first)
        raise error(str(exc)) from None
    except NPZ_ERRORS as exc:
        raise error(f"{path}: not a {what} (not a readable .npz file: {exc})") from None
    if arrays is None:
        raise error(f"{path}: not a {what} (a single .npy array, not an .npz archive)")
    return arrays
