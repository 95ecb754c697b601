"""The TinyImageNet folder layout (wnids.txt, words.txt, train/<wnid>/images/,
val/val_annotations.txt); JPEG decoding needs Pillow, imported only when used."""
from pathlib import Path

from ..backend import host
from .files import DataError, read_text_lines
from .registry import TINY_ARCHIVE, TINY_FOLDER, not_found


def read_wnids(path):
    """The class ids (WordNet ids such as n01443537) from wnids.txt, in label order."""
    wnids = [line.strip() for line in read_text_lines(path) if line.strip()]
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
    for line in read_text_lines(path):
        wnid, _, names = line.partition("\t")
        words[wnid.strip()] = names.strip()
    return tuple(words.get(w) or w for w in wnids)


def read_val_annotations(path, wnids):
    """[(image file name, label)] from val_annotations.txt.

    Each line is 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1'; the box is not needed here, but a
    line without a known wnid means the annotation file does not belong to this class list."""
    index = {w: i for i, w in enumerate(wnids)}
    entries = []
    for number, line in enumerate(read_text_lines(path), 1):
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


def tiny_root(folder):
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


def load_tiny(info, split, dirs, limit):
    for folder in dirs:
        root = tiny_root(folder)
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
    raise not_found(info, dirs, f"{TINY_FOLDER}/wnids.txt (unzip {TINY_ARCHIVE} first)")
