"""IDX files (MNIST, Fashion-MNIST), gzip-compressed or not (told apart by the gzip magic
bytes), with every header field and the file's length checked."""
from ..backend import host
from .files import DataError, file_payload
from .registry import IDX_SPLIT_FILES, not_found

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
_IDX_KIND = {IDX_IMAGES_MAGIC: "IDX images", IDX_LABELS_MAGIC: "IDX labels"}


def read_idx(path, magic):
    """The uint8 array of an IDX file whose magic number must be `magic`.

    Checks the magic, that the header is complete, and that the file holds exactly the
    number of bytes its dimensions promise (a short file is 'truncated', a long one is
    rejected too, since it is not the file its header describes)."""
    data, complete = file_payload(path)
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


def load_idx(info, split, dirs, limit):
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
    raise not_found(info, dirs, f"{images_name} and {labels_name}")
