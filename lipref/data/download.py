"""Verify a dataset's files against their md5s, and download them from their canonical
addresses. Downloads go to a temporary file in the target folder, are checked against the
md5, and only then renamed into place (os.replace), so an interrupted or corrupted download
leaves nothing behind."""
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .files import DataError, file_matches
from .registry import EMBEDDED_DIR, TINY_ARCHIVE, TINY_FOLDER, cache_dir, dataset_info, search_dirs
from .tinyimagenet import tiny_root

OK, MISSING, BAD_CHECKSUM = "ok", "missing", "bad checksum"


def _default_dir(name):
    """Where `verify`/`download` work when no folder is given: the first default folder that
    holds any of the dataset's files, else the user cache folder."""
    info = dataset_info(name)
    for folder in search_dirs(name):
        if any((folder / f.name).is_file() for f in info.files):
            return folder
    return EMBEDDED_DIR if name == "embedded" else cache_dir(name)


def verify(name, data_dir=None):
    """[(file name, 'ok' | 'missing' | 'bad checksum')] for each of the dataset's files."""
    info = dataset_info(name)
    folder = Path(data_dir).expanduser() if data_dir is not None else _default_dir(name)
    report = []
    for entry in info.files:
        path = folder / entry.name
        if not path.is_file():
            report.append((entry.name, MISSING))
        else:
            report.append((entry.name, OK if file_matches(path, entry) else BAD_CHECKSUM))
    return report


def download(name, data_dir=None, base_url=None, progress=None):
    """Fetch the dataset's files into `data_dir` (default ~/.cache/lipref/<name>); returns their paths.

    Files already present and verified are kept. Each download streams into a temporary
    file in `data_dir`, is checked against the registry md5, and only then renamed into
    place; on any failure the temporary file is deleted and DataError names the file.
    `base_url` replaces the canonical address (tests serve files from 127.0.0.1).
    `progress(file name, bytes so far, total bytes or None)` is called as data arrives.
    TinyImageNet's zip is also extracted (the loader reads the folder layout)."""
    info = dataset_info(name)
    bases = [base_url] if base_url else ([info.base_url] + list(info.mirrors) if info.base_url else [])
    if not bases:
        raise DataError(f"{name}: no download address (the embedded slice ships with the source tree)")
    folder = Path(data_dir).expanduser() if data_dir is not None else cache_dir(name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the download folder ({exc.strerror or exc})") from None
    paths = []
    for entry in info.files:
        path = folder / entry.name
        if not (path.is_file() and file_matches(path, entry)):
            _fetch_first(bases, entry, path, progress)
        paths.append(path)
    if info.file_format == "tinyimagenet" and tiny_root(folder) is None:
        _extract_zip(folder / TINY_ARCHIVE, folder)
    return paths


def _fetch_first(bases, entry, path, progress):
    """Try each base address in turn; a network failure moves on, a bad checksum does not
    (a mirror serving different bytes is an error to report, not to route around)."""
    failures = []
    for base in bases:
        url = base if base.endswith("/") else base + "/"
        url += entry.name
        try:
            _fetch(url, entry, path, progress)
            return
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except (urllib.error.URLError, OSError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
    raise DataError(f"{entry.name}: download failed ({'; '.join(failures)})")


def _fetch(url, entry, path, progress):
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{entry.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(entry.name, done, total)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != entry.md5:
            raise DataError(f"{entry.name}: bad checksum after download from {url}: expected md5 "
                            f"{entry.md5}, got {actual}; the downloaded file was deleted")
        os.chmod(temp, 0o644)  # mkstemp makes 0600 files; a dataset is for every user to read
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _extract_zip(archive, folder):
    """Extract into a temporary folder beside the target, then rename it into place, so a
    failed extraction leaves no half-filled dataset folder."""
    temp = Path(tempfile.mkdtemp(dir=folder, prefix=".extract."))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(temp)  # ZipFile.extractall drops '..' and absolute parts of names
        extracted = tiny_root(temp)
        if extracted is None:
            raise DataError(f"{archive}: archive has no {TINY_FOLDER}/wnids.txt")
        os.replace(extracted, folder / TINY_FOLDER)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
