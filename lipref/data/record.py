"""What a training run records about its data (the specs as given, where the examples came
from, how many, their digests) and whether its evaluation set overlaps its training set.

The evaluation set chooses best.npz, so it is part of training; it must be held out. An
overlap is the same named dataset and split, the same file (by resolved path or by the
sha256 of its bytes), or evaluation examples whose images are training images, pixel for
pixel. Overlaps are refused unless the caller allows them; a partial overlap of examples
(a few duplicated images) is only counted."""
import hashlib
from pathlib import Path

from ..backend import host
from .files import DataError, hex_digest

ALLOW_HINT = ("the evaluation set chooses best.npz, so it must be held out: give --eval-data other data, or pass "
              "--allow-overlap to train anyway")


def examples_digest(dataset):
    """sha256 of the examples as read: the images' dtype, shape and bytes, then the labels'
    (as int64). Equal digests: the same examples, in the same order and precision."""
    digest = hashlib.sha256()
    for array in (dataset.images, host.asarray(dataset.labels, dtype=host.int64)):
        array = host.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{tuple(array.shape)}".encode("ascii"))
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def data_record(dataset, spec=None):
    """{"spec" (as given; None when not known), "resolved" ("name:split", or the file's path),
    "split" ("train", "test" or "file"), "source" (the folder, archive or file read),
    "examples", "sha256" (`examples_digest`), and for a .npz "file_sha256" (of its bytes)}:
    JSON-ready."""
    is_file = dataset.split == "file"
    source = str(Path(dataset.source).resolve()) if dataset.source else ""
    record = {"spec": spec, "resolved": source if is_file else f"{dataset.name}:{dataset.split}",
              "split": dataset.split, "source": source, "examples": int(dataset.labels.shape[0]),
              "sha256": examples_digest(dataset)}
    if is_file and source and Path(source).is_file():
        record["file_sha256"] = hex_digest(source, "sha256")
    return record


def _image_digests(images, dtype):
    """A 16-byte digest of each image, its pixels in `dtype` (converted one image at a time)."""
    return [hashlib.blake2b(host.asarray(image, dtype=dtype).tobytes(), digest_size=16).digest()
            for image in images]


def shared_examples(train_set, eval_set):
    """How many evaluation examples have an image equal, pixel for pixel, to a training image
    (compared in float64 when the two are stored in different precisions)."""
    if tuple(train_set.images.shape[1:]) != tuple(eval_set.images.shape[1:]):
        return 0
    same = train_set.images.dtype == eval_set.images.dtype
    dtype = train_set.images.dtype if same else host.float64
    seen = set(_image_digests(train_set.images, dtype))
    return sum(d in seen for d in _image_digests(eval_set.images, dtype))


def overlap_reason(train, evaluation, shared):
    """Why the records `train` and `evaluation` name overlapping data (None when they do not);
    `shared`: the count from `shared_examples`."""
    files = "file_sha256" in train and "file_sha256" in evaluation
    if files and train["source"] == evaluation["source"]:
        return "the same file"
    if files and train["file_sha256"] == evaluation["file_sha256"]:
        return "files with the same bytes"
    named = "file" not in (train["split"], evaluation["split"])
    if named and train["resolved"] == evaluation["resolved"]:
        return f"the same dataset and split, {train['resolved']}"
    if train["sha256"] == evaluation["sha256"]:
        return "the same examples"
    if shared == evaluation["examples"]:
        return f"every one of the {shared} evaluation images is a training image"
    return None


def training_data(train_set, eval_set, specs=(None, None)):
    """The record of a run's data: {"train": data_record, "eval": data_record, "shared_examples",
    "overlap" (the reason, or None)}; `specs`: the two specs as the user gave them."""
    train, evaluation = data_record(train_set, specs[0]), data_record(eval_set, specs[1])
    shared = shared_examples(train_set, eval_set)
    return {"train": train, "eval": evaluation, "shared_examples": shared,
            "overlap": overlap_reason(train, evaluation, shared)}


def input_range(train_set):
    """[lo, hi], the input range a model trained on `train_set` expects (its metadata's
    "input_range", which `data.ranges.expected_range` reads): [0, 1] where every training
    image lies there (every named dataset), else the images' own smallest and largest value."""
    images = train_set.images
    if images.size == 0:
        return [0.0, 1.0]
    lo, hi = float(host.min(images)), float(host.max(images))
    return [0.0, 1.0] if 0.0 <= lo and hi <= 1.0 else [lo, hi]


def _named(record):
    return record["spec"] or record["resolved"]


def refuse_overlap(record, allow_overlap):
    """A DataError naming both specs when the record says the data overlap and the caller did
    not allow it."""
    if record["overlap"] and not allow_overlap:
        raise DataError(f"training data {_named(record['train'])} and evaluation data {_named(record['eval'])} "
                        f"overlap ({record['overlap']}); {ALLOW_HINT}")


def check_same_data(where, stored, current):
    """Refuse to resume a run (`where`: its checkpoint) on other examples than it was trained
    and evaluated on: a DataError naming, for each set that differs, both specs, sizes and
    digests. A checkpoint with no record (an older lipref's) cannot be checked: refused."""
    if not isinstance(stored, dict) or not isinstance(stored.get("train"), dict):
        raise DataError(f"{where}: no record of the data the run was trained on (an older lipref wrote it), so "
                        "a resume cannot be checked; start the run again in another --out")
    differ = []
    for key, what in (("train", "training"), ("eval", "evaluation")):
        a, b = stored.get(key) or {}, current[key]
        if (a.get("examples"), a.get("sha256")) != (b["examples"], b["sha256"]):
            differ.append(f"{what} data {_named(b)} ({b['examples']} examples, sha256 {b['sha256'][:12]}) "
                          f"against the run's {a.get('spec') or a.get('resolved')} ({a.get('examples')} examples, "
                          f"sha256 {str(a.get('sha256'))[:12]})")
    if differ:
        raise DataError(f"{where}: the run was trained on other data: {'; '.join(differ)}; resume with the same "
                        "--data, --eval-data, --data-dir, --limit and --eval-limit")
