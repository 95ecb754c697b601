"""What lipref knows about each dataset before reading a file (shape, classes, canonical
addresses and md5s), the `Dataset` a loader returns, specs "name[:split]", and the folders
searched for a dataset's files. The embedded Fashion-MNIST slice lives in the source tree
(`datasets/fashion-mnist-slice/`, checksums beside it)."""
from dataclasses import dataclass, field
from pathlib import Path

from .files import DataError


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
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "datasets" / "fashion-mnist-slice"
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


TRAINING_SPLIT, EVALUATION_SPLIT = "train", "test"


def parse_spec(spec, default_split=EVALUATION_SPLIT):
    """'name' or 'name:split' -> (name, split). A spec without a split means `default_split`:
    the training split where the data train a model (`lipref train --data`), the test split
    where they evaluate or certify one (every other use, the default here)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec must be 'name' or 'name:split', got {spec!r}")
    if default_split not in SPLITS:
        raise ValueError(f"default_split must be one of {SPLITS}, got {default_split!r}")
    name, _, split = spec.strip().partition(":")
    name, split = name.strip().lower(), (split.strip().lower() or default_split)
    dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"dataset spec {spec!r}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return name, split


def with_split(spec, default_split):
    """`spec` with its split written out ('mnist' -> 'mnist:train' for default_split 'train');
    a path to a .npz file as it is (a file has no splits)."""
    if isinstance(spec, str) and spec.endswith(".npz"):
        return spec
    return ":".join(parse_spec(spec, default_split))


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


def check_label_range(labels, n_classes, where):
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{where}: labels should lie in [0, {n_classes}), found "
                        f"{int(labels.min())}..{int(labels.max())}")


def not_found(info, dirs, what):
    searched = ", ".join(str(d) for d in dirs)
    if info.name == "embedded":
        hint = ("the embedded slice ships with the source tree only; run from a checkout or "
                "create it with datasets/make_embedded.py")
    elif info.base_url:
        hint = (f"get it with `lipref data download {info.name}` (in Python: lipref.data.download({info.name!r})), "
                f"which puts it in {cache_dir(info.name)}, or give the folder holding it: --data-dir DIR "
                "(data_dir=DIR)")
    else:
        hint = "give the folder holding it: --data-dir DIR (data_dir=DIR)"
    return DataError(f"{info.name}: {what} not found in {searched}; {hint}")
