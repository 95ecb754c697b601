"""CIFAR-10 pickle batches from a folder or the tarball, and damaged batches."""
import pickle
import tarfile

import numpy
import pytest
from data_writers import cifar_batch, write_cifar_tree

from lipref.data import DataError, load_dataset


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
