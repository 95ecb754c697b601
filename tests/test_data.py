"""Dataset loaders on files written here in the real formats, plus the real data that is at hand.

IDX, CIFAR pickle batches and the TinyImageNet layout are written by these tests with their
own writers (not lipref's), so a reader bug cannot cancel out a matching writer bug.
Downloads are served from 127.0.0.1 by http.server in a thread; nothing leaves the machine.
"""
import functools
import gzip
import hashlib
import http.server
import pickle
import shutil
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy
import pytest
from hypothesis import given, strategies as st

from lipref import data
from lipref.data import DATASETS, DataError, load_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --- writers of the real formats ------------------------------------------------------------

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


# --- IDX ------------------------------------------------------------------------------------

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


# --- specs and registry ---------------------------------------------------------------------

def test_spec_parsing_and_unknown_names():
    assert data.parse_spec("mnist") == ("mnist", "test")
    assert data.parse_spec(" Fashion-MNIST:Train ") == ("fashion-mnist", "train")
    with pytest.raises(DataError, match="unknown dataset 'svhn'; known datasets: mnist, fashion-mnist, "
                                        "cifar10, tinyimagenet, embedded"):
        load_dataset("svhn")
    with pytest.raises(DataError, match="unknown split 'val'"):
        data.parse_spec("cifar10:val")
    for bad in ("", None, 3):
        with pytest.raises(DataError, match="dataset spec"):
            data.parse_spec(bad)


def test_registry_contents():
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10", "tinyimagenet", "embedded"}
    md5 = {info.name: {f.name: f.md5 for f in info.files} for info in DATASETS.values()}
    assert md5["mnist"] == {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
                            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432"}
    assert md5["fashion-mnist"] == {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                                    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                                    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
    assert md5["cifar10"] == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    assert DATASETS["cifar10"].urls() == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert DATASETS["mnist"].urls()[0] == "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz"
    for info in DATASETS.values():
        assert len(info.input_shape) == 3
        assert not info.class_names or len(info.class_names) == info.n_classes
        for f in info.files:
            assert len(f.md5) == 32 and int(f.md5, 16) >= 0
    assert data.search_dirs("fashion-mnist")[0] == DEBIAN_FASHION
    assert data.search_dirs("mnist") == [Path.home() / ".cache" / "lipref" / "mnist"]
    assert data.search_dirs("mnist", "somewhere") == [Path("somewhere")]


# --- CIFAR-10 -------------------------------------------------------------------------------

def test_cifar_batches_from_folder_and_tarball(tmp_path):
    rng = numpy.random.default_rng(0)
    batches = write_cifar_tree(tmp_path / "dir", rng)
    train = load_dataset("cifar10:train", data_dir=tmp_path / "dir")
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == numpy.float32
    expected = numpy.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    numpy.testing.assert_array_equal(train.images * 255, expected.reshape(15, 3, 32, 32))
    # the layout: 1024 red values (row-major 32x32), then green, then blue
    row = batches["data_batch_1"][b"data"][1]
    assert train.images[1, 2, 5, 7] * 255 == row[2 * 1024 + 5 * 32 + 7]
    numpy.testing.assert_array_equal(train.labels[:4], [0, 1, 2, 1])
    assert train.class_names[0] == "airplane" and train.n_classes == 10
    test = load_dataset("cifar10", data_dir=tmp_path / "dir", limit=2)
    numpy.testing.assert_array_equal(test.labels, [5, 6])

    (tmp_path / "tar").mkdir()
    with tarfile.open(tmp_path / "tar" / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "dir" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_tar = load_dataset("cifar10:train", data_dir=tmp_path / "tar", limit=7)
    numpy.testing.assert_array_equal(from_tar.images, train.images[:7])
    numpy.testing.assert_array_equal(from_tar.labels, train.labels[:7])


def test_cifar_bad_batches(tmp_path):
    rng = numpy.random.default_rng(1)
    write_cifar_tree(tmp_path, rng)
    test_batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad = cifar_batch(rng, 2)
    bad[b"data"] = bad[b"data"][:, :3071]
    test_batch.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: CIFAR b'data' should be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    test_batch.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch: not a CIFAR-10 python batch"):
        load_dataset("cifar10", data_dir=tmp_path)
    bad = cifar_batch(rng, 2)
    bad[b"labels"] = [0, 12]
    test_batch.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: labels should lie in \[0, 10\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    bad = cifar_batch(rng, 2)
    del bad[b"labels"]
    test_batch.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match="test_batch: CIFAR batch has no b'labels' entry"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- TinyImageNet ---------------------------------------------------------------------------

def write_tiny_text(root, wnids, annotations):
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    (root / "words.txt").write_text("".join(f"{w}\tname of {w}, alias\n" for w in wnids[::-1]))
    (root / "val" / "images").mkdir(parents=True, exist_ok=True)
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t1\t62\t63\n" for name, wnid in annotations))


def test_tiny_annotation_parsing(tmp_path):
    wnids = ["n01443537", "n01629819", "n01641577"]
    write_tiny_text(tmp_path, wnids, [("val_0.JPEG", "n01641577"), ("val_1.JPEG", "n01443537"),
                                      ("val_2.JPEG", "n01641577")])
    assert data.read_wnids(tmp_path / "wnids.txt") == wnids
    entries = data.read_val_annotations(tmp_path / "val" / "val_annotations.txt", wnids)
    assert entries == [("val_0.JPEG", 2), ("val_1.JPEG", 0), ("val_2.JPEG", 2)]
    assert data.read_class_words(tmp_path / "words.txt", wnids)[1] == "name of n01629819, alias"
    assert data.read_class_words(tmp_path / "absent.txt", wnids) == tuple(wnids)
    paths, labels, _ = data.tiny_split_files(tmp_path, "test")
    assert [p.name for p in paths] == ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG"] and labels == [2, 0, 2]
    assert paths[0] == tmp_path / "val" / "images" / "val_0.JPEG"

    annotations = tmp_path / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn01443537\t0\t0\t1\t1\nval_1.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt: line 2: class id 'n99999999' is not in wnids.txt"):
        data.read_val_annotations(annotations, wnids)
    annotations.write_text("val_0.JPEG n01443537\n")
    with pytest.raises(DataError, match="line 1: expected 'file<TAB>wnid"):
        data.read_val_annotations(annotations, wnids)
    annotations.write_text("../../etc/passwd\tn01443537\n")
    with pytest.raises(DataError, match="not a plain file name"):
        data.read_val_annotations(annotations, wnids)
    (tmp_path / "wnids.txt").write_text("n1\nn2\nn1\n")
    with pytest.raises(DataError, match="wnids.txt: class id 'n1' listed twice"):
        data.read_wnids(tmp_path / "wnids.txt")


def test_tiny_train_listing_is_round_robin(tmp_path):
    wnids = ["a", "b"]
    write_tiny_text(tmp_path, wnids, [("v.JPEG", "a")])
    for wnid, count in (("a", 3), ("b", 1)):
        folder = tmp_path / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{wnid}_{i}.JPEG").write_bytes(b"")
        (folder / "notes.txt").write_text("not an image")
    paths, labels, _ = data.tiny_split_files(tmp_path, "train")
    assert [p.name for p in paths] == ["a_0.JPEG", "b_0.JPEG", "a_1.JPEG", "a_2.JPEG"]
    assert labels == [0, 1, 0, 0]


def test_tiny_missing_pillow_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` raise ImportError
    with pytest.raises(DataError, match="pip install pillow"):
        data.decode_images([tmp_path / "x.JPEG"], (64, 64))


def test_tiny_jpeg_decoding(tmp_path):
    image_module = pytest.importorskip("PIL.Image", reason="Pillow not installed: JPEG decoding not tested")
    wnids = [f"n{i:08d}" for i in range(200)]
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_text(root, wnids, [(f"val_{i}.JPEG", wnids[7 * i]) for i in range(3)])
    for i, colour in enumerate(colours):
        image_module.new("RGB", (64, 64), colour).save(root / "val" / "images" / f"val_{i}.JPEG", quality=95)
    ds = load_dataset("tinyimagenet:test", data_dir=tmp_path, limit=2)
    assert ds.images.shape == (2, 3, 64, 64) and ds.images.dtype == numpy.float32
    numpy.testing.assert_array_equal(ds.labels, [0, 7])
    means = ds.images.mean(axis=(2, 3)) * 255
    numpy.testing.assert_allclose(means, numpy.array(colours[:2], dtype=float), atol=4)
    assert ds.class_names[7] == f"name of {wnids[7]}, alias" and len(ds.class_names) == 200

    image_module.new("L", (64, 32), 128).save(root / "val" / "images" / "val_0.JPEG")
    with pytest.raises(DataError, match=r"val_0.JPEG: image is 32x64, expected 64x64"):
        load_dataset("tinyimagenet:test", data_dir=tmp_path, limit=1)
    (root / "val" / "images" / "val_0.JPEG").write_bytes(b"garbage")
    with pytest.raises(DataError, match="val_0.JPEG: cannot decode image"):
        load_dataset("tinyimagenet:test", data_dir=tmp_path, limit=1)
    (root / "wnids.txt").write_text("n1\nn2\n")
    with pytest.raises(DataError, match="wnids.txt: lists 2 classes, expected 200"):
        load_dataset("tinyimagenet:test", data_dir=tmp_path)


# --- verify and download over a local HTTP server -------------------------------------------

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


# --- user .npz files ------------------------------------------------------------------------

def write_npz(path, images, labels):
    numpy.savez(path, images=images, labels=labels)
    return path


def test_array_file_keeps_the_precision_of_its_images(tmp_path):
    labels = numpy.array([0, 1])
    x64 = numpy.array([2.0 ** 24 + 1, 0.1]).reshape(2, 1, 1, 1)  # neither is a float32
    ds = data.load_array_file(write_npz(tmp_path / "f64.npz", x64, labels))
    assert ds.images.dtype == numpy.float64 and ds.images.tobytes() == x64.tobytes()
    x32 = x64.astype(numpy.float32)
    assert data.load_array_file(write_npz(tmp_path / "f32.npz", x32, labels)).images.dtype == numpy.float32
    x16 = numpy.array([65504.0, -2.0 ** -24], dtype=numpy.float16).reshape(2, 1, 1, 1)
    ds = data.load_array_file(write_npz(tmp_path / "f16.npz", x16, labels))
    assert ds.images.dtype == numpy.float32 and numpy.array_equal(ds.images, x16.astype(numpy.float64))
    for dtype in (numpy.uint8, numpy.int32, numpy.int64, numpy.uint64):
        ints = numpy.array([2 ** 53 if dtype in (numpy.int64, numpy.uint64) else 200, 3], dtype=dtype)
        ds = data.load_array_file(write_npz(tmp_path / "int.npz", ints.reshape(2, 1, 1, 1), labels))
        assert ds.images.dtype == numpy.float64 and [int(v) for v in ds.images.ravel()] == [int(v) for v in ints]
    for value, dtype in ((2 ** 53 + 1, numpy.int64), (-(2 ** 53) - 1, numpy.int64), (2 ** 64 - 1, numpy.uint64)):
        path = write_npz(tmp_path / "inexact.npz", numpy.array([value, 0], dtype=dtype).reshape(2, 1, 1, 1), labels)
        with pytest.raises(DataError, match=r"inexact.npz: .*2\^53"):
            data.load_array_file(path)


@pytest.mark.skipif(numpy.finfo(numpy.longdouble).nmant <= 52, reason="long double is float64 on this platform")
def test_array_file_long_double_images_only_when_exact_in_float64(tmp_path):
    labels = numpy.array([0, 1])
    exact = numpy.array([0.5, 2.0 ** -30], dtype=numpy.longdouble).reshape(2, 1, 1, 1)
    ds = data.load_array_file(write_npz(tmp_path / "exact.npz", exact, labels))
    assert ds.images.dtype == numpy.float64 and ds.images.ravel().tolist() == [0.5, 2.0 ** -30]
    tenth = numpy.array([0.5, numpy.longdouble(1) / 10], dtype=numpy.longdouble).reshape(2, 1, 1, 1)
    with pytest.raises(DataError, match=r"tenth.npz: .*not exact in float64 \(first at index \(1, 0, 0, 0\)"):
        data.load_array_file(write_npz(tmp_path / "tenth.npz", tenth, labels))


@pytest.mark.parametrize("label,dtype", [(2 ** 31, numpy.int64), (2 ** 62, numpy.int64), (2 ** 63 + 5, numpy.uint64)])
def test_array_file_refuses_huge_labels_before_allocating(tmp_path, label, dtype):
    path = write_npz(tmp_path / "big.npz", numpy.zeros((2, 1, 2, 2)), numpy.array([0, label], dtype=dtype))
    with pytest.raises(DataError, match=f"big.npz: .*{label}"):
        data.load_array_file(path)


def test_array_file_classes_do_not_allocate_per_class(tmp_path):
    path = write_npz(tmp_path / "wide.npz", numpy.zeros((2, 1, 2, 2)), numpy.array([0, 2 ** 31 - 1]))
    ds = data.load_array_file(path)
    assert ds.n_classes == 2 ** 31 and ds.class_names == () and ds.labels.dtype == numpy.int64
    with pytest.raises(DataError, match=r"negative.npz: labels must be >= 0 and < 2\^31, found -3"):
        data.load_array_file(write_npz(tmp_path / "negative.npz", numpy.zeros((2, 1, 2, 2)), numpy.array([-3, 1])))


def test_empty_datasets_are_errors(tmp_path):
    with pytest.raises(DataError, match="empty.npz: .*no examples"):
        data.load_array_file(write_npz(tmp_path / "empty.npz", numpy.zeros((0, 1, 2, 2)), numpy.zeros(0, int)))
    with pytest.raises(DataError, match="no examples"):
        data.load_data(str(tmp_path / "empty.npz"), limit=3)
    write_idx_split(tmp_path / "idx", numpy.zeros((0, 28, 28)), numpy.zeros(0))
    with pytest.raises(DataError, match="no examples"):
        load_dataset("mnist", data_dir=tmp_path / "idx")
    with pytest.raises(DataError, match="zero.npz: .*(2, 0, 3, 3)"):
        data.load_array_file(write_npz(tmp_path / "zero.npz", numpy.zeros((2, 0, 3, 3)), numpy.array([0, 1])))


def test_array_file_non_finite_and_unreadable(tmp_path):
    for dtype in (numpy.float16, numpy.float32, numpy.float64):
        images = numpy.zeros((3, 1, 2, 2), dtype=dtype)
        images[2, 0, 1, 0] = -numpy.inf
        with pytest.raises(DataError, match=r"inf.npz: images contain NaN or inf \(first at index \(2, 0, 1, 0\)"):
            data.load_array_file(write_npz(tmp_path / "inf.npz", images, numpy.arange(3)))
    numpy.save(tmp_path / "single.npy", numpy.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(DataError, match="single.npz: .*npy"):
        data.load_array_file(tmp_path / "single.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(DataError, match="junk.npz: not a readable .npz"):
        data.load_array_file(tmp_path / "junk.npz")
    write_npz(tmp_path / "complex.npz", numpy.zeros((1, 1, 2, 2), complex), numpy.array([0]))
    with pytest.raises(DataError, match="complex.npz: images must be"):
        data.load_array_file(tmp_path / "complex.npz")


def test_named_dataset_in_float64_is_k_over_255_correctly_rounded(tmp_path):
    pixels = numpy.arange(2 * 784) % 256
    write_idx_split(tmp_path, pixels.reshape(2, 28, 28), numpy.array([3, 4]))
    wide = load_dataset("mnist", data_dir=tmp_path, dtype="float64")
    assert wide.images.dtype == numpy.float64
    exact = [float(k) / 255.0 for k in pixels]  # Python's division: correctly rounded binary64
    assert wide.images.ravel().tolist() == exact
    for dtype in (None, numpy.float32, "float32"):
        kwargs = {} if dtype is None else {"dtype": dtype}
        narrow = load_dataset("mnist", data_dir=tmp_path, **kwargs)
        assert narrow.images.dtype == numpy.float32
        assert narrow.images.ravel().tolist() == [float(numpy.float32(k) / numpy.float32(255)) for k in pixels]
    assert data.load_data("mnist", tmp_path, None, dtype=numpy.float64).images.dtype == numpy.float64
    for bad in ("int8", "float16", "nonsense", 3):
        with pytest.raises(DataError, match="dtype"):
            load_dataset("mnist", data_dir=tmp_path, dtype=bad)


# --- the real data --------------------------------------------------------------------------

def test_embedded_slice():
    train, test = load_dataset("embedded:train"), load_dataset("embedded")
    assert train.images.shape == (2000, 1, 28, 28) and test.images.shape == (500, 1, 28, 28)
    for ds in (train, test):
        assert ds.images.dtype == numpy.float32 and ds.labels.dtype == numpy.int64
        assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0 and ds.images.max() == 1.0
        assert ds.labels.min() == 0 and ds.labels.max() == 9
        assert numpy.bincount(ds.labels, minlength=10).min() >= 30  # every class is there
        assert ds.class_names[9] == "Ankle boot" and ds.n_classes == 10
    numpy.testing.assert_array_equal(train.labels[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])  # Fashion-MNIST's
    registry = {f.name: f.md5 for f in DATASETS["embedded"].files}
    assert data.read_checksums(data.EMBEDDED_DIR / "checksums") == registry
    assert {name: data.md5_of(data.EMBEDDED_DIR / name) for name in registry} == registry
    assert "MIT" in (data.EMBEDDED_DIR / "LICENSE").read_text() and "Zalando" in (
        data.EMBEDDED_DIR / "README.md").read_text()


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason=f"{DEBIAN_FASHION} not present "
                    "(apt-get install dataset-fashion-mnist)")
def test_embedded_slice_is_the_start_of_fashion_mnist():
    full = load_dataset("fashion-mnist:test")  # found in the Debian folder by default
    assert full.images.shape == (10000, 1, 28, 28)
    assert full.source == str(DEBIAN_FASHION)
    embedded = load_dataset("embedded:test")
    numpy.testing.assert_array_equal(embedded.images, full.images[:500])
    numpy.testing.assert_array_equal(embedded.labels, full.labels[:500])


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"{SHARED_MNIST} not present")
def test_real_mnist_test_set(monkeypatch):
    monkeypatch.chdir(REPO)
    ds = load_dataset("mnist", data_dir="../shared/datasets/mnist")
    assert ds.images.shape == (10000, 1, 28, 28) and ds.split == "test"
    numpy.testing.assert_array_equal(ds.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    numpy.testing.assert_array_equal(numpy.bincount(ds.labels),
                                     [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert abs(float(ds.images.mean()) - 0.1325) < 0.001  # MNIST test mean pixel, 0.13251
