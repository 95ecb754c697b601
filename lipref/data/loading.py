"""Loading: a named dataset (`load_dataset`, images k/255 in float32 or float64) or a user's
.npz (`load_array_file`, every value checked, the images' float precision kept), both as a
`Dataset` of host arrays; `load_data` picks one by the spec."""
from pathlib import Path

from ..backend import host
from .cifar import load_cifar
from .files import DataError, budget_text, memory_budget, read_npz_checked, size_text
from .idx import load_idx
from .registry import DATASETS, Dataset, check_label_range, parse_spec, search_dirs
from .tinyimagenet import load_tiny

MAX_LABEL = 2 ** 31 - 1  # larger labels are refused: a model with that many classes cannot be built
EXACT_INTEGERS = 2 ** 53  # integer images up to this magnitude are exact in float64

_LOADERS = {"idx": load_idx, "cifar": load_cifar, "tinyimagenet": load_tiny}


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
    check_label_range(labels, info.n_classes, source)
    images = images.astype(dtype) / dtype.type(255)
    if images.shape[1:] != info.input_shape:
        raise DataError(f"{source}: images have shape {images.shape[1:]}, expected {info.input_shape}")
    return Dataset(name=name, split=split, images=images, labels=labels, input_shape=info.input_shape,
                   n_classes=info.n_classes, class_names=tuple(class_names), source=source)


def load_array_file(path, limit=None):
    """A `Dataset` from a user's .npz holding `images` (N, C, H, W) or (N, D) numbers and `labels` (N,)
    integers, every value checked as `dataset_from_arrays` checks it."""
    path = Path(path)
    _check_limit(limit)
    arrays = read_npz_checked(path, DataError, "data file")
    if "images" not in arrays or "labels" not in arrays:
        raise DataError(f"{path}: a data .npz needs arrays 'images' and 'labels', found {sorted(arrays)}")
    return dataset_from_arrays(arrays["images"], arrays["labels"], str(path), limit, name=path.name, split="file")


def dataset_from_arrays(images, labels, where, limit=None, name="arrays", split="given"):
    """A `Dataset` of host arrays `images` (N, C, H, W) or (N, D) numbers and `labels` (N,)
    integers (a .npz's, or arrays given in Python), every value checked: finite images in any
    range, kept in their float precision (float16 becomes float32, integers float64, refused
    beyond 2^53 where float64 is not exact); labels integers in [0, 2^31). `n_classes` is the
    largest label + 1; `where` names the arrays in errors (DataError) and is the `source`."""
    _check_limit(limit)
    images, labels = host.asarray(images), host.asarray(labels)
    if images.ndim not in (2, 4) or 0 in images.shape[1:]:  # (N, D): for models that read vectors
        raise DataError(f"{where}: images must have shape (N, C, H, W) or (N, D) with C, H, W, D >= 1, "
                        f"got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{where}: labels must have shape ({images.shape[0]},), got {labels.shape}")
    if images.dtype.kind not in "fiu" or labels.dtype.kind not in "iu":
        raise DataError(f"{where}: images must be numbers and labels integers, got {images.dtype}, {labels.dtype}")
    if not labels.size:
        raise DataError(f"{where}: no examples (the labels are empty)")
    if labels.min() < 0 or labels.max() > MAX_LABEL:  # before anything that depends on the number of classes
        raise DataError(f"{where}: labels must be >= 0 and < 2^31, found {int(labels.min())}..{int(labels.max())}")
    _check_widening(where, images, labels.nbytes)
    images = _float_images(where, images)
    bad = ~host.isfinite(images)
    if bad.any():
        first = tuple(int(i) for i in host.argwhere(bad)[0])
        raise DataError(f"{where}: images contain NaN or inf (first at index {first}: {images[first]})")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Dataset(name=name, split=split, images=images, labels=labels.astype(host.int64),
                   input_shape=tuple(int(d) for d in images.shape[1:]), n_classes=int(labels.max()) + 1,
                   class_names=(), source=where)


def _widened_itemsize(dtype):
    """Bytes per value once `_float_images` has converted images of `dtype` (not float32/64)."""
    return 4 if dtype == host.float16 else 8


def _check_widening(path, images, held):
    """Refuse images whose float copy (`_float_images`: uint8 becomes float64, 8 times the
    bytes), beside the arrays already read (`held` bytes more), would exceed the memory budget."""
    if images.dtype in (host.float32, host.float64):
        return  # kept as they are: no copy
    itemsize = _widened_itemsize(images.dtype)
    needed = images.nbytes + held + images.size * itemsize
    budget = memory_budget()
    if needed > budget:
        raise DataError(f"{path}: images of dtype {images.dtype} ({size_text(images.nbytes)}) become "
                        f"{size_text(images.size * itemsize)} as float{8 * itemsize}, {size_text(needed)} in all, "
                        f"beyond {budget_text(budget)}")


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
