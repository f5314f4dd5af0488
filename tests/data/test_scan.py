"""Scanning: layouts, the stratified seeded split, hidden and bad files, clear errors."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from finetune.data import scan as scan_module
from finetune.data.scan import DataWarning, scan_image_folder
from finetune.data.synthetic import make_image_folder
from finetune.errors import DataError

from .conftest import save_rgb, truncated_jpeg

CLASSES = ("circle", "square", "triangle")


def _flat(root, per_class=10, classes=CLASSES):
    return make_image_folder(root, classes=classes, train_per_class=per_class, val_per_class=0, size=8, split=False)


def _paths(items):
    return {p for p, _ in items}


def test_split_layout(tmp_path):
    make_image_folder(tmp_path, classes=CLASSES, train_per_class=3, val_per_class=2, test_per_class=1, size=8)
    index = scan_image_folder(tmp_path)
    assert index.layout == "split" and index.classes == sorted(CLASSES)
    assert index.counts("train") == {c: 3 for c in CLASSES}
    assert index.counts("val") == {c: 2 for c in CLASSES}
    assert index.counts("test") == {c: 1 for c in CLASSES}
    assert all(p.parent.parent.name == "val" and p.parent.name == index.classes[y] for p, y in index.val)
    assert index.bad_files == []


def test_split_layout_without_test(tmp_path):
    make_image_folder(tmp_path, classes=CLASSES, train_per_class=2, val_per_class=1, size=8)
    index = scan_image_folder(tmp_path)
    assert index.test is None and index.splits == ["train", "val"]
    with pytest.raises(ValueError, match="no 'test' split"):
        index.counts("test")


def test_flat_layout_stratified(tmp_path):
    # Eight classes of odd sizes: with val_split 0.25 each puts round(n / 4) images in val (no .5 ties).
    # A shuffle of all 80 images would also give 20 val images, but almost never these per-class counts.
    sizes = {f"c{n:02d}": n for n in (3, 5, 7, 9, 11, 13, 15, 17)}
    for name, n in sizes.items():
        for i in range(n):
            save_rgb(tmp_path / name / f"{i}.png", size=(8, 8))
    expected_val = {name: round(n / 4) for name, n in sizes.items()}
    assert list(expected_val.values()) == [1, 1, 2, 2, 3, 3, 4, 4]
    for seed in range(3):
        index = scan_image_folder(tmp_path, val_split=0.25, seed=seed, progress=False)
        assert index.layout == "flat"
        assert index.counts("val") == expected_val
        assert index.counts("train") == {name: n - expected_val[name] for name, n in sizes.items()}
        assert not _paths(index.train) & _paths(index.val)
        assert len(_paths(index.train) | _paths(index.val)) == sum(sizes.values())
        assert all(p.parent.name == index.classes[y] for p, y in index.train + index.val)


def test_split_is_seeded(tmp_path):
    _flat(tmp_path, per_class=20)
    a, b = scan_image_folder(tmp_path, seed=0), scan_image_folder(tmp_path, seed=0)
    c = scan_image_folder(tmp_path, seed=1)
    assert a.val == b.val and a.train == b.train
    assert _paths(a.val) != _paths(c.val)
    assert c.counts("val") == a.counts("val")


def test_small_classes_keep_one_image_on_each_side(tmp_path):
    for name, n in {"one": 1, "two": 2, "three": 3}.items():
        for i in range(n):
            save_rgb(tmp_path / name / f"{i}.png", size=(8, 8))
    index = scan_image_folder(tmp_path, val_split=0.9)
    assert index.counts("train") == {"one": 1, "three": 1, "two": 1}
    assert index.counts("val") == {"one": 0, "three": 2, "two": 1}


def test_hidden_files_and_dirs_are_ignored(tmp_path):
    _flat(tmp_path, per_class=3, classes=("circle", "square"))
    save_rgb(tmp_path / ".hidden_class" / "x.png")
    save_rgb(tmp_path / "__MACOSX" / "a" / "._x.png")
    save_rgb(tmp_path / "circle" / ".thumb.png")
    save_rgb(tmp_path / "circle" / ".cache" / "y.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0junk")
    (tmp_path / "square" / ".DS_Store").write_bytes(b"\0\0junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing hidden may even produce a bad-file warning
        index = scan_image_folder(tmp_path)
    assert index.classes == ["circle", "square"]
    assert len(index.train) + len(index.val) == 6 and index.bad_files == []


def test_bad_files_are_skipped_listed_and_warned_once(tmp_path):
    make_image_folder(tmp_path, classes=CLASSES, train_per_class=3, val_per_class=2, size=8)
    cls = tmp_path / "train" / "circle"
    (cls / "zero.jpg").write_bytes(b"")
    (cls / "x.png").write_text("hello")
    truncated_jpeg(cls / "cut.jpg")
    (cls / "notes.txt").write_text("notes")
    with pytest.warns(DataWarning) as record:
        index = scan_image_folder(tmp_path)
    bad_warnings = [w for w in record if "bad file" in str(w.message)]
    assert len(bad_warnings) == 1 and "4 bad file" in str(bad_warnings[0].message)
    reasons = {p.name: r for p, r in index.bad_files}
    assert set(reasons) == {"zero.jpg", "x.png", "cut.jpg", "notes.txt"}
    assert "empty" in reasons["zero.jpg"] and "truncated" in reasons["cut.jpg"]
    assert "extension .txt" in reasons["notes.txt"] and "not a decodable image" in reasons["x.png"]
    assert index.counts("train") == {c: 3 for c in CLASSES}
    lines = index.write_bad_files(tmp_path).read_text().splitlines()
    assert len(lines) == 4 and all(len(line.split("\t")) == 2 for line in lines)


def test_progress_bar_path(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_module, "PROGRESS_MIN_IMAGES", 1)
    _flat(tmp_path, per_class=3, classes=("circle", "square"))
    assert len(scan_image_folder(tmp_path, progress=True).train) == 4


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        scan_image_folder(tmp_path / "f")


@pytest.mark.parametrize("split", [True, False])
def test_one_class(tmp_path, split):
    make_image_folder(tmp_path, classes=("ring",), train_per_class=2, val_per_class=1, size=8, split=split)
    with pytest.raises(DataError, match=r"1 class folder \(ring\).*at least two"):
        scan_image_folder(tmp_path)


def test_train_class_with_only_bad_files(tmp_path):
    _flat(tmp_path, per_class=3, classes=("circle", "square"))
    (tmp_path / "zebra").mkdir()
    (tmp_path / "zebra" / "broken.jpg").write_bytes(b"")
    with pytest.warns(DataWarning), pytest.raises(DataError, match=r"no readable image in class folder.*/zebra"):
        scan_image_folder(tmp_path)


@pytest.mark.parametrize(("in_zebra", "elsewhere"), [(10, 3), (11, 4), (11, 0)])
def test_no_readable_image_error_lists_each_empty_class_and_the_other_skipped_files(tmp_path, in_zebra, elsewhere):
    """The error names an empty folder as "[no files]", lists up to 10 skipped files of a class folder
    and counts the rest, then lists up to 3 unreadable files of the other folders and counts the rest."""
    _flat(tmp_path, per_class=2, classes=("circle", "square"))
    (tmp_path / "yak").mkdir()
    for i in range(in_zebra):
        (tmp_path / "zebra").mkdir(exist_ok=True)
        (tmp_path / "zebra" / f"z{i:02d}.jpg").write_bytes(b"")
    for i in range(elsewhere):
        (tmp_path / "circle" / f"x{i}.jpg").write_bytes(b"")
    with pytest.warns(DataWarning), pytest.raises(DataError) as info:
        scan_image_folder(tmp_path)
    empty = "(empty file (0 bytes))"
    zebra = "; ".join(f"z{i:02d}.jpg {empty}" for i in range(min(in_zebra, 10)))
    zebra += "; and 1 more" if in_zebra == 11 else ""
    others = {
        0: "",
        3: f"; 3 other files were skipped as unreadable: {tmp_path}/circle/x0.jpg {empty}, "
           f"{tmp_path}/circle/x1.jpg {empty}, {tmp_path}/circle/x2.jpg {empty}",
        4: f"; 4 other files were skipped as unreadable: {tmp_path}/circle/x0.jpg {empty}, "
           f"{tmp_path}/circle/x1.jpg {empty}, {tmp_path}/circle/x2.jpg {empty} and 1 more",
    }[elsewhere]
    assert str(info.value) == (
        f"no readable image in class folder(s) {tmp_path}/yak [no files], {tmp_path}/zebra [skipped {in_zebra}: "
        f"{zebra}]; every class needs at least one image with extension .jpg, .jpeg, .png, .bmp, .webp, .tif, "
        f".tiff{others}"
    )


def test_val_class_not_in_train(tmp_path):
    make_image_folder(tmp_path, classes=("circle", "square"), train_per_class=2, val_per_class=1, size=8)
    save_rgb(tmp_path / "val" / "zebra" / "z.png")
    with pytest.raises(DataError, match="zebra"):
        scan_image_folder(tmp_path)


def test_train_class_missing_in_val_warns(tmp_path):
    make_image_folder(tmp_path, classes=("circle", "square"), train_per_class=2, val_per_class=1, size=8)
    for p in (tmp_path / "val" / "square").iterdir():
        p.unlink()
    (tmp_path / "val" / "square").rmdir()
    with pytest.warns(DataWarning, match="no folder for class.*square"):
        index = scan_image_folder(tmp_path)
    assert index.counts("val") == {"circle": 1, "square": 0}


@pytest.mark.parametrize("val_split", [0.0, 1.0, -0.1, 1.5])
def test_val_split_out_of_range(tmp_path, val_split):
    _flat(tmp_path, per_class=2, classes=("circle", "square"))
    with pytest.raises(DataError, match=repr(val_split)):
        scan_image_folder(tmp_path, val_split=val_split)


def test_split_layout_with_empty_val_holds_out_from_train(tmp_path):
    make_image_folder(tmp_path, classes=("circle", "square"), train_per_class=5, val_per_class=0, size=8)
    with pytest.warns(DataWarning, match="no val images"):
        index = scan_image_folder(tmp_path, val_split=0.4)
    assert index.layout == "split"
    assert index.counts("train") == {"circle": 3, "square": 3} and index.counts("val") == {"circle": 2, "square": 2}


def test_a_second_scan_reuses_the_verdicts_and_decodes_only_changed_files(tmp_path, monkeypatch):
    import os

    from finetune.data import scan as scan_module
    from finetune.data.synthetic import make_image_folder

    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "d", "shapes", train_per_class=4, val_per_class=2, size=16,
                             classes=("circle", "square"), seed=0)
    decoded: list[str] = []
    real = scan_module.verify_image
    monkeypatch.setattr(scan_module, "verify_image", lambda p: (decoded.append(Path(p).name), real(p))[1])
    first = scan_image_folder(data)
    assert len(decoded) == 12
    decoded.clear()
    again = scan_image_folder(data)
    assert decoded == [] and again.train == first.train and again.val == first.val
    victim = first.train[0][0]
    victim.write_bytes(b"not a png any more")  # new size and mtime: decoded again, now bad
    os.utime(first.train[1][0], ns=(0, 10**18))  # same bytes, other mtime: decoded again, still fine
    with pytest.warns(DataWarning, match="skipped 1 bad file"):
        third = scan_image_folder(data)
    assert sorted(decoded) == sorted([victim.name, first.train[1][0].name])
    assert [p for p, _ in third.bad_files] == [victim] and victim not in [p for p, _ in third.train]
    decoded.clear()
    with pytest.warns(DataWarning, match="skipped 1 bad file"):
        scan_image_folder(data)  # the bad verdict is cached too
    assert decoded == []


def test_an_unwritable_cache_only_costs_the_decode(tmp_path, monkeypatch):
    from finetune.data.synthetic import make_image_folder

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(blocker / "cache"))  # a folder under a file: cannot exist
    data = make_image_folder(tmp_path / "d", "shapes", train_per_class=3, val_per_class=1, size=16,
                             classes=("circle", "square"), seed=0)
    assert len(scan_image_folder(data).train) == 6


def test_each_folder_has_its_own_cache_file_holding_only_its_files(tmp_path, monkeypatch):
    """A command reads the verdicts of the folder it scans, not of every folder ever scanned."""
    import json

    from finetune.data.synthetic import make_image_folder

    cache = tmp_path / "cache"
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(cache))
    a = make_image_folder(tmp_path / "a", "shapes", train_per_class=3, val_per_class=1, size=16,
                          classes=("circle", "square"))
    b = make_image_folder(tmp_path / "b", "shapes", train_per_class=2, val_per_class=1, size=16,
                          classes=("circle", "square"))
    scan_image_folder(a), scan_image_folder(b)
    files = sorted((cache / "scan").glob("*.json"))
    assert len(files) == 2
    held = sorted(len(json.loads(f.read_text())) for f in files)
    assert held == [6, 8]  # b: 4 train + 2 val; a: 6 train + 2 val
    removed = next((a / "train" / "circle").iterdir())
    removed.unlink()
    scan_image_folder(a)
    entries = [json.loads(f.read_text()) for f in files]
    assert sorted(len(e) for e in entries) == [6, 7] and all(str(removed) not in e for e in entries)


def test_image_files_with_no_class_folder_are_pointed_at_a_label_table(tmp_path):
    from PIL import Image

    from finetune.errors import DataError

    for name in ("a.jpg", "b.png", "c.JPG"):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG" if name.endswith("png") else "JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"has 0 class folders, .*; its 3 image files with no class folder need a "
                                        r"table of their labels: --labels FILE; expected DIR/train"):
        scan_image_folder(tmp_path)
