"""Real datasets from their standard file formats, without torchvision.

Formats read here:
  * IDX (MNIST, Fashion-MNIST), gzip-compressed or not (`idx.py`);
  * CIFAR-10's python pickle batches, from a folder or straight out of the tarball (`cifar.py`);
  * the TinyImageNet folder layout (JPEG decoding needs Pillow, imported only when used;
    `tinyimagenet.py`).

`DATASETS` (`registry.py`) describes each dataset: shape, classes, canonical download
addresses and md5s. `load_dataset("name[:split]")` (`loading.py`) gives a `Dataset` of host
arrays: images in [0, 1], shape (N, C, H, W), float32 (or float64 with `dtype="float64"`:
k/255 correctly rounded), labels int64. `load_array_file` reads a user's .npz and keeps its
images' float precision (float64 stays float64; integers become float64, exactly);
`dataset_from_arrays` checks arrays given in Python the same way. Callers move them to a
backend with `batches.batches`.

Any file that is not what it claims to be raises `DataError` (`files.py`) naming the file
and the problem. `verify` and `download` (`download.py`) check every file against its md5;
a download is renamed into place only once it verifies.
"""
from .batches import batches
from .cifar import read_cifar_batch
from .download import BAD_CHECKSUM, MISSING, OK, download, verify
from .files import NPZ_ERRORS, DataError, md5_of, read_checksums, read_npz
from .idx import read_idx, read_idx_images, read_idx_labels
from .loading import EXACT_INTEGERS, MAX_LABEL, dataset_from_arrays, load_array_file, load_data, load_dataset
from .registry import (
                       DATASETS,
                       EMBEDDED_DIR,
                       SPLITS,
                       DataFile,
                       Dataset,
                       DatasetInfo,
                       cache_dir,
                       dataset_info,
                       parse_spec,
                       search_dirs,
)
from .tinyimagenet import decode_images, read_class_words, read_val_annotations, read_wnids, tiny_split_files

__all__ = ["DataError", "DataFile", "DatasetInfo", "Dataset", "DATASETS", "SPLITS", "EMBEDDED_DIR",
           "dataset_info", "parse_spec", "cache_dir", "search_dirs", "md5_of", "read_idx",
           "read_idx_images", "read_idx_labels", "read_cifar_batch", "read_wnids", "read_class_words",
           "read_val_annotations", "tiny_split_files", "decode_images", "load_dataset", "verify",
           "download", "read_checksums", "OK", "MISSING", "BAD_CHECKSUM", "NPZ_ERRORS", "read_npz",
           "load_array_file", "dataset_from_arrays", "load_data", "batches", "MAX_LABEL", "EXACT_INTEGERS"]
