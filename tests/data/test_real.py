"""Real image tasks written from the photos that registry packages ship."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from finetune.data.real import TASKS, _ArraysOnly, available, make_real_task
from finetune.data.scan import scan_image_folder
from finetune.errors import DataError


def _files(root, split):
    return sorted(p.relative_to(root / split) for p in (root / split).rglob("*.png"))


@pytest.mark.parametrize("name", list(TASKS))
def test_task_folder_has_the_asked_train_size_and_fixed_val_and_test(tmp_path, name):
    assert available(name), f"{TASKS[name].package} is not installed: make install brings it"
    task = TASKS[name]
    a = make_real_task(name, tmp_path / "a", 3, seed=0)
    b = make_real_task(name, tmp_path / "b", 5, seed=1)
    index = scan_image_folder(a)
    assert set(index.counts("train").values()) == {3}
    assert set(index.counts("val").values()) == {task.val} and set(index.counts("test").values()) == {task.test}
    for split in ("val", "test"):  # the same images whatever the train size and seed
        assert _files(a, split) == _files(b, split)
        for rel in _files(a, split)[:5]:
            assert np.array_equal(np.asarray(Image.open(a / split / rel)), np.asarray(Image.open(b / split / rel)))
    train_a = {np.asarray(Image.open(p)).tobytes() for p in (a / "train").rglob("*.png")}
    held_out = {np.asarray(Image.open(p)).tobytes() for s in ("val", "test") for p in (a / s).rglob("*.png")}
    assert not train_a & held_out  # no train image is also a val or test image


def test_bad_requests_name_the_valid_choices(tmp_path):
    with pytest.raises(DataError, match="valid: textures, silhouettes, faces"):
        make_real_task("digits", tmp_path, 5)
    with pytest.raises(DataError, match=r"1\.\.50"):
        make_real_task("faces", tmp_path, 51)


def test_silhouette_reader_refuses_anything_but_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled",))

    assert np.array_equal(_ArraysOnly(io.BytesIO(pickle.dumps(np.arange(3)))).load(), np.arange(3))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        _ArraysOnly(io.BytesIO(pickle.dumps(Evil()))).load()


def test_held_out_keeps_the_first_val_and_test_images_of_the_full_task(tmp_path):
    full = make_real_task("faces", tmp_path / "full", 3)
    small = make_real_task("faces", tmp_path / "small", 3, held_out=4)
    index = scan_image_folder(small)
    assert set(index.counts("val").values()) == {4} and set(index.counts("test").values()) == {4}
    assert set(index.counts("train").values()) == {3}  # train is not capped
    for split in ("val", "test"):
        for rel in _files(small, split):  # the same images as the full task's first four of each class
            assert np.array_equal(np.asarray(Image.open(small / split / rel)),
                                  np.asarray(Image.open(full / split / rel)))
        assert set(_files(small, split)) < set(_files(full, split))
    with pytest.raises(DataError, match="held_out must be at least 1"):
        make_real_task("faces", tmp_path / "none", 3, held_out=0)
