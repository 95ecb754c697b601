"""Real datasets from their standard file formats, without torchvision.

Formats read here:
  * IDX (MNIST, Fashion-MNIST), gzip-compressed or not (told apart by the gzip magic bytes);
  * CIFAR-10's python pickle batches, from `cifar-10-batches-py/` or straight out of the
    `cifar-10-python.tar.gz` tarball (no extraction needed);
  * the TinyImageNet folder layout (JPEG decoding needs Pillow, imported only when used).

`DATASETS` describes each dataset: shape, classes, canonical download addresses and md5s.
`load_dataset("name[:split]")` gives a `Dataset` of host arrays: images in [0, 1], shape
(N, C, H, W), float32 (or float64 with `dtype="float64"`: k/255 correctly rounded), labels
int64. `load_array_file` reads a user's .npz and keeps its images' float precision (float64
stays float64; integers become float64, exactly). Callers move them to a backend with `xp.asarray`.

Any file that is not what it claims to be raises `DataError` naming the file and the
problem, never a traceback from deep inside NumPy, gzip or pickle. Downloads go to a
temporary file in the target folder, are checked against the md5, and only then renamed
into place (os.replace), so an interrupted or corrupted download leaves nothing behind.
"""
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .backend import host
from .errors import UserError

MAX_LABEL = 2 ** 31 - 1  # larger labels are refused: a model with that many classes cannot be built
EXACT_INTEGERS = 2 ** 53  # integer images up to this magnitude are exact in float64
# What numpy and zipfile raise for a damaged .npz: zipfile raises NotImplementedError /
# RuntimeError for damaged header fields (version, compression method, encryption flag).
NPZ_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error)


class DataError(UserError, ValueError):
    """A dataset file or request that cannot be used; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataFile:
    """One distributed file: its name and md5.

    `payload_md5` is the md5 of the *decompressed* content of a .gz file. Mirrors such as
    Debian's `dataset-fashion-mnist` recompress the files (different .gz bytes, same data),
    so `verify` accepts a file whose payload matches even when the .gz md5 does not."""
    name: str
    md5: str
    payload_md5: str = ""


@dataclass(frozen=True)
class DatasetInfo:
    """What lipref knows about a dataset before reading any file."""
    name: str
    input_shape: tuple          # (C, H, W)
    n_classes: int
    class_names: tuple          # empty when the names come from the data (TinyImageNet's words.txt)
    file_format: str            # "idx", "cifar" or "tinyimagenet"
    base_url: str               # canonical address of the folder holding `files`; "" if none
    files: tuple                # DataFile entries
    mirrors: tuple = ()         # other folders with byte-identical files, tried after base_url
    system_dirs: tuple = ()     # where OS packages install the files
    licence: str = ""

    def urls(self):
        """The canonical download address of each file."""
        return [self.base_url + f.name for f in self.files] if self.base_url else []


IDX_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_SPLIT_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
TINY_ARCHIVE = "tiny-imagenet-200.zip"
TINY_FOLDER = "tiny-imagenet-200"

# The embedded slice lives in the source tree (repo root `datasets/`), next to the package.
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "datasets" / "fashion-mnist-slice"

DATASETS = {
    "mnist": DatasetInfo(
        name="mnist", input_shape=(1, 28, 28), n_classes=10,
        class_names=tuple(str(d) for d in range(10)), file_format="idx",
        base_url="http://yann.lecun.com/exdb/mnist/",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        files=(
            DataFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                     "6bbc9ace898e44ae57da46a324031adb"),
            DataFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                     "a25bea736e30d166cdddb491f175f624"),
            DataFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                     "2646ac647ad5339dbf082846283269ea"),
            DataFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                     "27ae3e4e09519cfbb04c329615203637"),
        ),
        licence="Yann LeCun and Corinna Cortes; CC BY-SA 3.0"),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist", input_shape=(1, 28, 28), n_classes=10,
        class_names=FASHION_CLASSES, file_format="idx",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
        files=(
            DataFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                     "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            DataFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                     "9018921c3c673c538a1fc5bad174d6f9"),
            DataFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                     "8181f5470baa50b63fa0f6fddb340f0a"),
            DataFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                     "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian package dataset-fashion-mnist
        licence="Zalando Research; MIT"),
    "cifar10": DatasetInfo(
        name="cifar10", input_shape=(3, 32, 32), n_classes=10,
        class_names=CIFAR10_CLASSES, file_format="cifar",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(DataFile(CIFAR_ARCHIVE, "c58f30108f718f92721af3b95e74349a"),),
        licence="Alex Krizhevsky, Vinod Nair, Geoffrey Hinton"),
    "tinyimagenet": DatasetInfo(
        name="tinyimagenet", input_shape=(3, 64, 64), n_classes=200,
        class_names=(), file_format="tinyimagenet",
        base_url="http://cs231n.stanford.edu/",
        files=(DataFile(TINY_ARCHIVE, "90528d7ca1a48142e341f4ef8d21d0de"),),
        licence="Stanford CS231n; images from ImageNet (non-commercial research use)"),
    "embedded": DatasetInfo(
        name="embedded", input_shape=(1, 28, 28), n_classes=10,
        class_names=FASHION_CLASSES, file_format="idx", base_url="",
        files=(
            DataFile("train-images-idx3-ubyte.gz", "26ea46ca45278908057d0265d9798889"),
            DataFile("train-labels-idx1-ubyte.gz", "357218d3d17c9e6e1def2befcc20ae86"),
            DataFile("t10k-images-idx3-ubyte.gz", "de8c3e9bbf39c9b1488ea32722149bda"),
            DataFile("t10k-labels-idx1-ubyte.gz", "054aa312f89c1a1bd60b2658a90cc583"),
        ),
        licence="first 2000 train / 500 test images of Fashion-MNIST, Zalando Research; MIT"),
}

SPLITS = ("train", "test")


@dataclass
class Dataset:
    """Images (N, C, H, W) and int64 labels (N,), both host arrays. Named datasets: images in
    [0, 1], float32 or float64 as asked; a user's .npz: the file's values in its float precision
    (float16 widened to float32, integers to float64). `class_names` is empty when the data
    carry no class names (a user's .npz)."""
    name: str
    split: str
    images: object
    labels: object
    input_shape: tuple
    n_classes: int
    class_names: tuple
    source: str = field(default="")   # the folder or archive the arrays were read from


def dataset_info(name):
    """The registry entry for `name`, or a DataError listing the known names."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def parse_spec(spec):
    """'name' or 'name:split' -> (name, split); the split defaults to 'test'."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec must be 'name' or 'name:split', got {spec!r}")
    name, _, split = spec.strip().partition(":")
    name, split = name.strip().lower(), (split.strip().lower() or "test")
    dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"dataset spec {spec!r}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return name, split


def cache_dir(name):
    """The per-user folder where `download` puts a dataset when no folder is given."""
    return Path.home() / ".cache" / "lipref" / name


def search_dirs(name, data_dir=None):
    """Folders searched for `name`'s files: `data_dir` alone when given, else the defaults.

    Defaults: the embedded slice's folder (for 'embedded'), folders OS packages install to
    (Fashion-MNIST: /usr/share/datasets/fashion-mnist), then ~/.cache/lipref/<name>."""
    info = dataset_info(name)
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    if name == "embedded":
        return [EMBEDDED_DIR]
    return [Path(d) for d in info.system_dirs] + [cache_dir(name)]


# ---------------------------------------------------------------------------------------------
# Raw bytes and checksums
# ---------------------------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path):
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


def _file_payload(path):
    """(content, complete): the file's bytes, decompressed when it starts with the gzip magic."""
    raw = _read_bytes(path)
    if raw[:2] == GZIP_MAGIC:
        return _gunzip(path, raw)
    return raw, True


def md5_of(path):
    """Hex md5 of a file's bytes, read in chunks (archives can be hundreds of MB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path, entry):
    """True if the file is `entry` byte for byte, or (for .gz) holds the same decompressed data."""
    if md5_of(path) == entry.md5:
        return True
    if not entry.payload_md5:
        return False
    try:
        data, complete = _file_payload(path)
    except DataError:
        return False
    return complete and hashlib.md5(data, usedforsecurity=False).hexdigest() == entry.payload_md5


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
_IDX_KIND = {IDX_IMAGES_MAGIC: "IDX images", IDX_LABELS_MAGIC: "IDX labels"}


def read_idx(path, magic):
    """The uint8 array of an IDX file whose magic number must be `magic`.

    Checks the magic, that the header is complete, and that the file holds exactly the
    number of bytes its dimensions promise (a short file is 'truncated', a long one is
    rejected too, since it is not the file its header describes)."""
    data, complete = _file_payload(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file: expected at least 4 bytes, got {len(data)}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
                        f"({_IDX_KIND.get(magic, 'IDX')})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX file: expected at least {header} bytes, got {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + _product(dims)
    if len(data) < expected:
        note = "" if complete else " (the gzip stream also ends early)"
        raise DataError(f"{path}: truncated IDX file: expected {expected} bytes, got {len(data)}{note}")
    if len(data) > expected:
        raise DataError(f"{path}: IDX file too long: its header {dims} promises {expected} bytes, "
                        f"got {len(data)}")
    if not complete:
        raise DataError(f"{path}: truncated gzip file (the stream ends before its end marker)")
    return host.frombuffer(data, dtype=host.uint8, offset=header).reshape(dims)


def _product(dims):
    total = 1
    for d in dims:
        total *= d
    return total


def read_idx_images(path, size=None):
    """(N, rows, cols) uint8 images from an IDX3 file; `size` (rows, cols) if the caller needs one."""
    images = read_idx(path, IDX_IMAGES_MAGIC)
    rows, cols = images.shape[1:]
    if rows == 0 or cols == 0:
        raise DataError(f"{path}: IDX images have an empty dimension ({rows}x{cols})")
    if size is not None and (rows, cols) != tuple(size):
        raise DataError(f"{path}: IDX images are {rows}x{cols}, expected {size[0]}x{size[1]}")
    return images


def read_idx_labels(path):
    """(N,) uint8 labels from an IDX1 file."""
    return read_idx(path, IDX_LABELS_MAGIC)


def _find_idx_file(folder, gz_name):
    """The file in `folder` under its .gz name or decompressed name, or None."""
    for candidate in (folder / gz_name, folder / gz_name[:-3]):
        if candidate.is_file():
            return candidate
    return None


def _load_idx(info, split, dirs, limit):
    images_name, labels_name = IDX_SPLIT_FILES[split]
    for folder in dirs:
        images_path = _find_idx_file(folder, images_name)
        labels_path = _find_idx_file(folder, labels_name)
        if images_path is None or labels_path is None:
            continue
        images = read_idx_images(images_path, info.input_shape[1:])
        labels = read_idx_labels(labels_path)
        if len(images) != len(labels):
            raise DataError(f"{images_path}: {len(images)} images but {labels_path.name} has "
                            f"{len(labels)} labels")
        images, labels = images[:limit], labels[:limit]
        return images[:, None], labels, info.class_names, str(folder)
    raise _not_found(info, dirs, f"{images_name} and {labels_name}")


def _not_found(info, dirs, what):
    searched = ", ".join(str(d) for d in dirs)
    if info.name == "embedded":
        hint = ("the embedded slice ships with the source tree only; run from a checkout or "
                "create it with datasets/make_embedded.py")
    elif info.base_url:
        hint = f"get it with lipref.data.download({info.name!r}, DIR) and pass data_dir=DIR"
    else:
        hint = "pass data_dir=DIR"
    return DataError(f"{info.name}: {what} not found in {searched}; {hint}")


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------

def read_cifar_batch(raw, where, n_classes=10):
    """(images (N, 3, 32, 32) uint8, labels (N,)) from the bytes of one CIFAR python batch.

    Unpickling runs code named in the file: only read batches you trust (see `verify`)."""
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as exc:  # any failure to unpickle means this is not a CIFAR batch
        raise DataError(f"{where}: not a CIFAR-10 python batch (unpickling failed: "
                        f"{type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: CIFAR batch should be a dict, got {type(batch).__name__}")
    for key in (b"data", b"labels"):
        if key not in batch:
            raise DataError(f"{where}: CIFAR batch has no {key!r} entry (keys: {sorted(map(repr, batch))})")
    data = batch[b"data"]
    if not isinstance(data, host.ndarray) or data.dtype != host.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{where}: CIFAR b'data' should be a uint8 array of shape (N, 3072), "
                        f"got {dtype} {shape}")
    labels = _as_labels(batch[b"labels"], where)
    if len(labels) != len(data):
        raise DataError(f"{where}: {len(data)} images but {len(labels)} labels")
    _check_label_range(labels, n_classes, where)
    # each row: 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    return data.reshape(-1, 3, 32, 32), labels


def _as_labels(values, where):
    if not isinstance(values, (list, tuple, host.ndarray)):
        raise DataError(f"{where}: labels should be a list of integers, got {type(values).__name__}")
    labels = host.asarray(values)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{where}: labels should be a flat list of integers, got {labels.dtype} {labels.shape}")
    return labels.astype(host.int64)


def _check_label_range(labels, n_classes, where):
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{where}: labels should lie in [0, {n_classes}), found "
                        f"{int(labels.min())}..{int(labels.max())}")


def _cifar_source(folder):
    """('dir', path) for an extracted batches folder, ('tar', path) for the tarball, or None."""
    for candidate in (folder / CIFAR_FOLDER, folder):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return "dir", candidate
    if (folder / CIFAR_ARCHIVE).is_file():
        return "tar", folder / CIFAR_ARCHIVE
    return None


def _cifar_batches(kind, path, names):
    """Yield (where, raw bytes) for each batch name, from a folder or from the tarball."""
    if kind == "dir":
        for name in names:
            yield str(path / name), _read_bytes(path / name)
        return
    try:
        with tarfile.open(path, "r:gz") as archive:
            for name in names:
                member = f"{CIFAR_FOLDER}/{name}"
                try:
                    handle = archive.extractfile(member)
                except KeyError:
                    handle = None
                if handle is None:
                    raise DataError(f"{path}: archive has no file {member}")
                yield f"{path}:{member}", handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the tar.gz archive ({type(exc).__name__}: {exc})") from None


def _load_cifar(info, split, dirs, limit):
    for folder in dirs:
        source = _cifar_source(folder)
        if source is None:
            continue
        images, labels, count = [], [], 0
        for where, raw in _cifar_batches(*source, CIFAR_SPLIT_BATCHES[split]):
            batch_images, batch_labels = read_cifar_batch(raw, where, info.n_classes)
            images.append(batch_images)
            labels.append(batch_labels)
            count += len(batch_labels)
            if limit is not None and count >= limit:
                break
        images = host.concatenate(images)[:limit]
        labels = host.concatenate(labels)[:limit]
        return images, labels, info.class_names, str(source[1])
    raise _not_found(info, dirs, f"{CIFAR_FOLDER}/ or {CIFAR_ARCHIVE}")


# ---------------------------------------------------------------------------------------------
# TinyImageNet
# ---------------------------------------------------------------------------------------------

def _read_text_lines(path):
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_wnids(path):
    """The class ids (WordNet ids such as n01443537) from wnids.txt, in label order."""
    wnids = [line.strip() for line in _read_text_lines(path) if line.strip()]
    if not wnids:
        raise DataError(f"{path}: no class ids")
    seen = set()
    for number, wnid in enumerate(wnids, 1):
        if wnid in seen:
            raise DataError(f"{path}: class id {wnid!r} listed twice (line {number})")
        seen.add(wnid)
    return wnids


def read_class_words(path, wnids):
    """Readable class names from words.txt ('wnid<TAB>names'), falling back to the wnid."""
    if not Path(path).is_file():
        return tuple(wnids)
    words = {}
    for line in _read_text_lines(path):
        wnid, _, names = line.partition("\t")
        words[wnid.strip()] = names.strip()
    return tuple(words.get(w) or w for w in wnids)


def read_val_annotations(path, wnids):
    """[(image file name, label)] from val_annotations.txt.

    Each line is 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1'; the box is not needed here, but a
    line without a known wnid means the annotation file does not belong to this class list."""
    index = {w: i for i, w in enumerate(wnids)}
    entries = []
    for number, line in enumerate(_read_text_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip():
            raise DataError(f"{path}: line {number}: expected 'file<TAB>wnid[<TAB>box...]', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataError(f"{path}: line {number}: class id {wnid!r} is not in wnids.txt")
        if "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(f"{path}: line {number}: image name {name!r} is not a plain file name")
        entries.append((name, index[wnid]))
    if not entries:
        raise DataError(f"{path}: no annotations")
    return entries


def _tiny_root(folder):
    for candidate in (folder / TINY_FOLDER, folder):
        if (candidate / "wnids.txt").is_file():
            return candidate
    return None


def tiny_split_files(root, split):
    """(image paths, labels, wnids) of a TinyImageNet split; 'test' is the labelled val set.

    Training images are listed round-robin over the classes (first image of every class,
    then the second, ...) so that a `limit` gives a balanced sample, not one class."""
    root = Path(root)
    wnids = read_wnids(root / "wnids.txt")
    if split == "test":
        entries = read_val_annotations(root / "val" / "val_annotations.txt", wnids)
        return [root / "val" / "images" / name for name, _ in entries], [label for _, label in entries], wnids
    per_class = []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise DataError(f"{folder}: missing training folder of class {wnid}")
        per_class.append(sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg")))
    paths, labels = [], []
    for rank in range(max(len(files) for files in per_class)):
        for label, files in enumerate(per_class):
            if rank < len(files):
                paths.append(files[rank])
                labels.append(label)
    return paths, labels, wnids


def _import_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("decoding TinyImageNet JPEG images needs Pillow: pip install pillow") from None
    return Image


def decode_images(paths, size):
    """(N, 3, H, W) uint8 from image files, each of which must be `size` (H, W) pixels."""
    image_module = _import_pillow()
    out = host.empty((len(paths), 3) + tuple(size), dtype=host.uint8)
    for i, path in enumerate(paths):
        try:
            with image_module.open(path) as image:
                pixels = host.asarray(image.convert("RGB"))  # grayscale images exist in TinyImageNet
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found") from None
        except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for undecodable files
            raise DataError(f"{path}: cannot decode image ({exc})") from None
        if pixels.shape[:2] != tuple(size):
            raise DataError(f"{path}: image is {pixels.shape[0]}x{pixels.shape[1]}, "
                            f"expected {size[0]}x{size[1]}")
        out[i] = pixels.transpose(2, 0, 1)
    return out


def _load_tiny(info, split, dirs, limit):
    for folder in dirs:
        root = _tiny_root(folder)
        if root is None:
            continue
        wnids = read_wnids(root / "wnids.txt")
        if len(wnids) != info.n_classes:
            raise DataError(f"{root / 'wnids.txt'}: lists {len(wnids)} classes, expected {info.n_classes}")
        paths, labels, wnids = tiny_split_files(root, split)
        paths, labels = paths[:limit], labels[:limit]
        images = decode_images(paths, info.input_shape[1:])
        names = read_class_words(root / "words.txt", wnids)
        return images, host.asarray(labels, dtype=host.int64), names, str(root)
    raise _not_found(info, dirs, f"{TINY_FOLDER}/wnids.txt (unzip {TINY_ARCHIVE} first)")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_LOADERS = {"idx": _load_idx, "cifar": _load_cifar, "tinyimagenet": _load_tiny}


def _check_limit(limit):
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")


def _image_dtype(dtype):
    try:
        found = host.dtype(dtype) if dtype is not None else None
    except (TypeError, ValueError):  # not a dtype at all
        found = None
    if found not in (host.float32, host.float64):
        raise DataError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return found


def read_npz(path):
    """{name: host array} of an .npz file (no pickles), or None for a plain .npy file.
    Raises one of NPZ_ERRORS for a file that is neither."""
    loaded = host.load(path, allow_pickle=False)
    if not isinstance(loaded, host.lib.npyio.NpzFile):
        return None
    with loaded as npz:
        return {name: npz[name] for name in npz.files}


def load_dataset(spec, data_dir=None, limit=None, dtype="float32"):
    """A `Dataset` for 'name' or 'name:split' (split 'train' or 'test', default 'test').

    Files are read from `data_dir` when given, else from `search_dirs(name)`. `limit` keeps
    the first `limit` examples (TinyImageNet: decodes only those). `dtype` ("float32" or
    "float64", or the NumPy dtypes) is the images' type: each pixel k becomes k/255 computed
    in that type, correctly rounded; in float64 these are the inputs that sound-mode
    certification certifies, with no float32 rounding in between."""
    name, split = parse_spec(spec)
    _check_limit(limit)
    dtype = _image_dtype(dtype)
    info = DATASETS[name]
    images, labels, class_names, source = _LOADERS[info.file_format](info, split, search_dirs(name, data_dir),
                                                                     limit)
    if not len(labels):
        raise DataError(f"{source}: {name}:{split} has no examples")
    labels = labels.astype(host.int64)
    _check_label_range(labels, info.n_classes, source)
    images = images.astype(dtype) / dtype.type(255)
    if images.shape[1:] != info.input_shape:
        raise DataError(f"{source}: images have shape {images.shape[1:]}, expected {info.input_shape}")
    return Dataset(name=name, split=split, images=images, labels=labels, input_shape=info.input_shape,
                   n_classes=info.n_classes, class_names=tuple(class_names), source=source)


def load_array_file(path, limit=None):
    """A `Dataset` from a user's .npz holding `images` (N, C, H, W) numbers and `labels` (N,)
    integers, with every value checked: finite images in any range, kept in their float
    precision (float16 becomes float32, integers float64, refused beyond 2^53 where float64
    is not exact); labels integers in [0, 2^31). `n_classes` is the largest label + 1."""
    path = Path(path)
    _check_limit(limit)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        arrays = read_npz(path)
    except NPZ_ERRORS as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if arrays is None:
        raise DataError(f"{path}: a single .npy array, not a data .npz with arrays 'images' and 'labels'")
    if "images" not in arrays or "labels" not in arrays:
        raise DataError(f"{path}: a data .npz needs arrays 'images' and 'labels', found {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 4 or 0 in images.shape[1:]:
        raise DataError(f"{path}: images must have shape (N, C, H, W) with C, H, W >= 1, got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{path}: labels must have shape ({images.shape[0]},), got {labels.shape}")
    if images.dtype.kind not in "fiu" or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: images must be numbers and labels integers, got {images.dtype}, {labels.dtype}")
    if not labels.size:
        raise DataError(f"{path}: the data file has no examples")
    if labels.min() < 0 or labels.max() > MAX_LABEL:  # before anything that depends on the number of classes
        raise DataError(f"{path}: labels must be >= 0 and < 2^31, found {int(labels.min())}..{int(labels.max())}")
    images = _float_images(path, images)
    bad = ~host.isfinite(images)
    if bad.any():
        where = tuple(int(i) for i in host.argwhere(bad)[0])
        raise DataError(f"{path}: images contain NaN or inf (first at index {where}: {images[where]})")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Dataset(name=path.name, split="file", images=images, labels=labels.astype(host.int64),
                   input_shape=tuple(int(d) for d in images.shape[1:]), n_classes=int(labels.max()) + 1,
                   class_names=(), source=str(path))


def _float_images(path, images):
    """float32/float64 images as they are, float16 widened to float32, integers (exactly, up to
    2^53) and wider floats (exactly, or DataError) to float64."""
    if images.dtype in (host.float32, host.float64):
        return images
    if images.dtype == host.float16:
        return images.astype(host.float32)
    if images.dtype.kind in "iu":
        if images.size and (images.max() > EXACT_INTEGERS or images.min() < -EXACT_INTEGERS):
            raise DataError(f"{path}: integer images must lie within +-2^53 to be exact in float64, found "
                            f"{int(images.min())}..{int(images.max())}")
        return images.astype(host.float64)
    wide = images.astype(host.float64)  # longdouble: exact only where it holds float64 values
    kept = host.isfinite(images) & (wide.astype(images.dtype) != images)
    if kept.any():
        where = tuple(int(i) for i in host.argwhere(kept)[0])
        raise DataError(f"{path}: images of dtype {images.dtype} are not exact in float64 (first at index {where})")
    return wide


def load_data(spec, data_dir=None, limit=None, dtype="float32"):
    """`load_dataset` for a dataset name (images of `dtype`), `load_array_file` for a path
    ending in .npz (images keep the file's precision; `dtype` does not apply)."""
    if isinstance(spec, str) and spec.endswith(".npz"):
        return load_array_file(spec, limit)
    return load_dataset(spec, data_dir, limit, dtype)


# ---------------------------------------------------------------------------------------------
# Verify and download
# ---------------------------------------------------------------------------------------------

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
            report.append((entry.name, OK if _matches(path, entry) else BAD_CHECKSUM))
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
        if not (path.is_file() and _matches(path, entry)):
            _fetch_first(bases, entry, path, progress)
        paths.append(path)
    if info.file_format == "tinyimagenet" and _tiny_root(folder) is None:
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
        extracted = _tiny_root(temp)
        if extracted is None:
            raise DataError(f"{archive}: archive has no {TINY_FOLDER}/wnids.txt")
        os.replace(extracted, folder / TINY_FOLDER)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def read_checksums(path):
    """{file name: md5} from an `md5sum`-style file ('<md5>  <name>' per line)."""
    table = {}
    for number, line in enumerate(_read_text_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 32:
            raise DataError(f"{path}: line {number}: expected '<md5>  <file>', got {line!r}")
        table[parts[1].lstrip("*").strip()] = parts[0].lower()
    return table


__all__ = ["DataError", "DataFile", "DatasetInfo", "Dataset", "DATASETS", "SPLITS", "EMBEDDED_DIR",
           "dataset_info", "parse_spec", "cache_dir", "search_dirs", "md5_of", "read_idx",
           "read_idx_images", "read_idx_labels", "read_cifar_batch", "read_wnids", "read_class_words",
           "read_val_annotations", "tiny_split_files", "decode_images", "load_dataset", "verify",
           "download", "read_checksums", "OK", "MISSING", "BAD_CHECKSUM"]
