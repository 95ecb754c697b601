"""The TinyImageNet layout: annotations, listing order, JPEG decoding."""
import sys

import numpy
import pytest

from lipref import data
from lipref.data import DataError, load_dataset


def write_tiny_text(root, wnids, annotations):
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    (root / "words.txt").write_text("".join(f"{w}\tname of {w}, alias\n" for w in wnids[::-1]))
    (root / "val" / "images").mkdir(parents=True, exist_ok=True)
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t1\t62\t63\n" for name, wnid in annotations))


def test_tiny_annotation_parsing(tmp_path):
    wnids = ["n01443537", "n01629819", "n01641577"]
    write_tiny_text(tmp_path, wnids, [("val_0.JPEG", "n01641577"), ("val_1.JPEG", "n01443537"),
                                      ("val_2.JPEG", "n01641577")])
    assert data.read_wnids(tmp_path / "wnids.txt") == wnids
    entries = data.read_val_annotations(tmp_path / "val" / "val_annotations.txt", wnids)
    assert entries == [("val_0.JPEG", 2), ("val_1.JPEG", 0), ("val_2.JPEG", 2)]
    assert data.read_class_words(tmp_path / "words.txt", wnids)[1] == "name of n01629819, alias"
    assert data.read_class_words(tmp_path / "absent.txt", wnids) == tuple(wnids)
    paths, labels, _ = data.tiny_split_files(tmp_path, "test")
    assert [p.name for p in paths] == ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG"] and labels == [2, 0, 2]
    assert paths[0] == tmp_path / "val" / "images" / "val_0.JPEG"

    annotations = tmp_path / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn01443537\t0\t0\t1\t1\nval_1.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt: line 2: class id 'n99999999' is not in wnids.txt"):
        data.read_val_annotations(annotations, wnids)
    annotations.write_text("val_0.JPEG n01443537\n")
    with pytest.raises(DataError, match="line 1: expected 'file<TAB>wnid"):
        data.read_val_annotations(annotations, wnids)
    annotations.write_text("../../etc/passwd\tn01443537\n")
    with pytest.raises(DataError, match="not a plain file name"):
        data.read_val_annotations(annotations, wnids)
    (tmp_path / "wnids.txt").write_text("n1\nn2\nn1\n")
    with pytest.raises(DataError, match="wnids.txt: class id 'n1' listed twice"):
        data.read_wnids(tmp_path / "wnids.txt")


def test_tiny_train_listing_is_round_robin(tmp_path):
    wnids = ["a", "b"]
    write_tiny_text(tmp_path, wnids, [("v.JPEG", "a")])
    for wnid, count in (("a", 3), ("b", 1)):
        folder = tmp_path / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{wnid}_{i}.JPEG").write_bytes(b"")
        (folder / "notes.txt").write_text("not an image")
    paths, labels, _ = data.tiny_split_files(tmp_path, "train")
    assert [p.name for p in paths] == ["a_0.JPEG", "b_0.JPEG", "a_1.JPEG", "a_2.JPEG"]
    assert labels == [0, 1, 0, 0]


def test_tiny_missing_pillow_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` raise ImportError
    with pytest.raises(DataError, match="pip install pillow"):
        data.decode_images([tmp_path / "x.JPEG"], (64, 64))


def test_tiny_jpeg_decoding(tmp_path):
    image_module = pytest.importorskip("PIL.Image", reason="Pillow not installed: JPEG decoding not tested")
    wnids = [f"n{i:08d}" for i in range(200)]
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_text(root, wnids, [(f"val_{i}.JPEG", wnids[7 * i]) for i in range(3)])
    for i, colour in enumerate(colours):
        image_module.new("RGB", (64, 64), colour).save(root / "val" / "images" / f"val_{i}.JPEG", quality=95)
    ds = load_dataset("tinyimagenet:test", data_dir=tmp_path, limit=2)
    assert ds.images.shape == (2, 3, 64, 64) and ds.images.dtype == numpy.float32
    numpy.testing.assert_array_equal(ds.labels, [0, 7])
    means = ds.images.mean(axis=(2, 3)) * 255
    numpy.testing.assert_allclose(means, numpy.array(colours[:2], dtype=float), atol=4)
    assert ds.class_names[7] == f"name of {wnids[7]}, alias" and len(ds.class_names) == 200

    image_module.new("L", (64, 32), 128).save(root / "val" / "images" / "val_0.JPEG")
    with pytest.raises(DataError, match=r"val_0.JPEG: image is 32x64, expected 64x64"):
        load_dataset("tinyimagenet:test", data_dir=tmp_path, limit=1)
    (root / "val" / "images" / "val_0.JPEG").write_bytes(b"garbage")
    with pytest.raises(DataError, match="val_0.JPEG: cannot decode image"):
        load_dataset("tinyimagenet:test", data_dir=tmp_path, limit=1)
    (root / "wnids.txt").write_text("n1\nn2\n")
    with pytest.raises(DataError, match="wnids.txt: lists 2 classes, expected 200"):
        load_dataset("tinyimagenet:test", data_dir=tmp_path)
