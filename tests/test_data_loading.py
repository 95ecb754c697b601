"""Loading user .npz files (every value checked, precision kept), named datasets' dtypes,
and the real data at hand (the embedded slice, Debian's Fashion-MNIST, a shared MNIST)."""
from pathlib import Path

import numpy
import pytest
from data_writers import write_idx_split

from lipref import data
from lipref.data import DATASETS, DataError, load_dataset
from lipref.data.ranges import expected_range, looks_like_pixels

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


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
    with pytest.raises(DataError, match="junk.npz: not a data file .not a readable .npz"):
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


def test_integer_images_whose_float64_copy_exceeds_the_budget(tmp_path, monkeypatch):
    """uint8 images become float64, 8 times the bytes: refused before the copy is made."""
    path = write_npz(tmp_path / "u8.npz", numpy.zeros((1000, 1, 1, 1), dtype=numpy.uint8), numpy.zeros(1000, int))
    monkeypatch.setenv("LIPREF_MEMORY_BUDGET", "12000")  # the file's 9256 bytes fit; 17000 with the copy do not
    with pytest.raises(DataError, match=r"u8.npz: images of dtype uint8 \(1000 bytes\) become 8000 bytes .* as "
                                        r"float64, 17000 bytes .* in all, beyond the memory budget of 12000 bytes"):
        data.load_array_file(path)
    monkeypatch.setenv("LIPREF_MEMORY_BUDGET", "17000")
    assert data.load_array_file(path).images.dtype == numpy.float64


# ------------------------------------------------------------------ the range a model expects

def test_expected_range_from_the_model_metadata():
    assert expected_range({"input_range": [0, 255]}) == (0.0, 255.0, "the range recorded in the model file")
    assert expected_range({"data": "fashion-mnist"})[:2] == (0.0, 1.0)
    assert expected_range({"training": {"data": "mnist:train"}})[:2] == (0.0, 1.0)
    assert "trained on embedded" in expected_range({"data": "embedded"})[2]
    for unknown in ({}, None, {"data": "mine.npz"}, {"input_range": [1, 0]}, {"input_range": [1, 1]},
                    {"input_range": [0, float("nan")]}, {"input_range": "0,1"}, {"input_range": [True, 2]},
                    {"training": "x"}):
        assert expected_range(unknown) is None, unknown


def test_pixels_are_whole_numbers_above_one():
    assert looks_like_pixels(numpy.array([0.0, 17.0, 255.0]))
    assert not looks_like_pixels(numpy.array([0.0, 1.0]))  # binary images in [0, 1]
    assert not looks_like_pixels(numpy.array([0.5, 200.0]))
    assert not looks_like_pixels(numpy.zeros(0))
    assert not looks_like_pixels(numpy.array([0.0, 1e300]))  # not pixels: no warning to divide by 255
    assert not looks_like_pixels(numpy.array([-3.0, 4.0]))
