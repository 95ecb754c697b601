"""The datasets registry: specs, names, md5s, the folders searched."""
from pathlib import Path

import pytest

from lipref import data
from lipref.data import DATASETS, DataError, load_dataset

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


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


def test_a_spec_without_a_split_takes_the_split_of_its_use():
    """The split defaulted to 'test' everywhere, so `lipref train --data mnist` trained on the
    test split."""
    assert data.parse_spec("mnist", "train") == ("mnist", "train")
    assert data.parse_spec("mnist:test", "train") == ("mnist", "test")
    assert data.parse_spec("mnist") == ("mnist", "test")  # evaluation and certification
    from lipref.data.registry import with_split
    assert with_split("Fashion-MNIST", "train") == "fashion-mnist:train"
    assert with_split("embedded", "test") == "embedded:test"
    assert with_split("cifar10:test", "train") == "cifar10:test"
    assert with_split("runs/held-out.npz", "train") == "runs/held-out.npz"
    with pytest.raises(DataError, match="unknown split 'val'"):
        with_split("mnist:val", "train")
    with pytest.raises(ValueError, match="default_split"):
        data.parse_spec("mnist", "validation")


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
