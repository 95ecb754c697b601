"""verify and download; downloads are served from 127.0.0.1 by http.server in a thread, so
nothing leaves the machine."""
import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import numpy
import pytest

from lipref import data
from lipref.data import DATASETS, DataError, load_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (http.server's own parameter name)
        pass


@pytest.fixture
def serve(tmp_path):
    """serve(folder) -> base URL of an HTTP server on 127.0.0.1 serving `folder`."""
    servers = []

    def start(folder):
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_good_files_then_verify(tmp_path, serve):
    url = serve(data.EMBEDDED_DIR)
    target = tmp_path / "down"
    calls = []
    paths = data.download("embedded", target, base_url=url, progress=lambda *a: calls.append(a))
    assert [p.name for p in paths] == [f.name for f in DATASETS["embedded"].files]
    for path in paths:
        assert path.read_bytes() == (data.EMBEDDED_DIR / path.name).read_bytes()
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in paths)  # no temp files
    assert data.verify("embedded", target) == [(p.name, "ok") for p in paths]
    last = {}
    for name, done, total in calls:
        last[name] = (done, total)
    assert last["train-images-idx3-ubyte.gz"] == (862787, 862787)
    numpy.testing.assert_array_equal(load_dataset("embedded:test", data_dir=target).labels,
                                     load_dataset("embedded:test").labels)
    # verified files already there are kept: no server needed the second time
    assert data.download("embedded", target, base_url="http://127.0.0.1:9/") == paths


def test_download_bad_checksum_leaves_nothing(tmp_path, serve):
    served = tmp_path / "served"
    served.mkdir()
    for f in DATASETS["mnist"].files:
        (served / f.name).write_bytes(b"not the MNIST file " + f.name.encode())
    target = tmp_path / "down"
    with pytest.raises(DataError) as info:
        data.download("mnist", target, base_url=serve(served))
    first = DATASETS["mnist"].files[0]
    actual = hashlib.md5((served / first.name).read_bytes()).hexdigest()
    message = str(info.value)
    assert message.startswith(f"{first.name}: bad checksum")
    assert f"expected md5 {first.md5}, got {actual}" in message
    assert list(target.iterdir()) == []


def test_download_http_error_leaves_nothing(tmp_path, serve):
    empty = tmp_path / "empty"
    empty.mkdir()
    target = tmp_path / "down"
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: download failed .*404"):
        data.download("cifar10", target, base_url=serve(empty))
    assert list(target.iterdir()) == []
    with pytest.raises(DataError, match="no download address"):
        data.download("embedded", target)


def test_verify_statuses(tmp_path):
    shutil.copy(data.EMBEDDED_DIR / "train-images-idx3-ubyte.gz", tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"wrong")
    assert data.verify("embedded", tmp_path) == [
        ("train-images-idx3-ubyte.gz", "ok"), ("train-labels-idx1-ubyte.gz", "bad checksum"),
        ("t10k-images-idx3-ubyte.gz", "missing"), ("t10k-labels-idx1-ubyte.gz", "missing")]
    with pytest.raises(DataError, match="unknown dataset"):
        data.verify("imagenet", tmp_path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"{SHARED_MNIST} not present")
def test_verify_accepts_recompressed_gzip_with_same_content(tmp_path):
    """Debian's dataset packages recompress the .gz files: same data, different .gz md5."""
    payload = gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(payload, compresslevel=1, mtime=1))
    assert dict(data.verify("mnist", tmp_path))["t10k-labels-idx1-ubyte.gz"] == "ok"
    changed = bytearray(payload)
    changed[-1] = (changed[-1] + 1) % 10
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(changed)))
    assert dict(data.verify("mnist", tmp_path))["t10k-labels-idx1-ubyte.gz"] == "bad checksum"
    shutil.copy(SHARED_MNIST / "t10k-images-idx3-ubyte.gz", tmp_path)
    assert dict(data.verify("mnist", tmp_path))["t10k-images-idx3-ubyte.gz"] == "ok"
