"""Label tables: each format, column detection, Hugging Face metadata, splits, and every bad input.

The oracle of a table's index is the scan of class folders holding the same files and labels
(`scan_image_folder`); the tables are written by the standard library's csv and json and by pyarrow.
"""
from __future__ import annotations

import csv
import json
import random
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.data.scan import DataWarning, scan_image_folder
from finetune.data.synthetic import make_image_folder
from finetune.data.tables import (
    LABEL_NAMES,
    PATH_NAMES,
    SPLIT_NAMES,
    TableSpec,
    parse_labels,
    scan_data,
    scan_label_table,
    table_files,
)
from finetune.errors import DataError

from .conftest import save_rgb, truncated_jpeg

CLASSES = ("circle", "square", "triangle")


def write_table(path: Path, columns: list[str], rows: list[list]) -> Path:
    """Writes `rows` under `columns` in the format of `path`'s extension, with an independent writer."""
    ext = path.suffix
    if ext in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if ext == ".tsv" else ",")
            writer.writerow(columns)
            writer.writerows(rows)
    elif ext == ".parquet":
        pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}), path)
    else:
        path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows), encoding="utf-8")
    return path


def folder_rows(root: Path, index, with_split: bool = True) -> list[list[str]]:
    """(path relative to root, label[, split]) of every image of a folder index, shuffled: row order must not
    matter."""
    rows = [[str(p.relative_to(root)), index.classes[label], *([split] if with_split else [])]
            for split in index.splits for p, label in getattr(index, split)]
    random.Random(0).shuffle(rows)
    return rows


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", classes=CLASSES, train_per_class=4, val_per_class=2,
                             test_per_class=1, size=8)


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """Uneven classes, one with a sub-folder and a file beside it: the walk order has something to keep."""
    root = tmp_path / "flat"
    for cls, n in (("bird", 2), ("cat", 5), ("dog", 7)):
        for i in range(n):
            save_rgb(root / cls / f"{i}.png")
    save_rgb(root / "cat" / "a" / "z.png")
    save_rgb(root / "cat" / "b.png")
    return root


# ----- the same index as class folders -----------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".csv", ".tsv", ".parquet", ".jsonl", ".ndjson"])
def test_each_format_reads_to_the_folder_index(split_folder, tmp_path, ext):
    folder = scan_image_folder(split_folder)
    table = write_table(tmp_path / f"labels{ext}", ["file_name", "label", "split"], folder_rows(split_folder, folder))
    index = scan_data(split_folder, table)
    assert index == folder and index.test is not None
    assert index.table == table and index.layout == "split"


def test_table_without_splits_holds_out_val_as_the_flat_folder_does(flat_folder, tmp_path):
    folder = scan_image_folder(flat_folder, val_split=0.3, seed=7)
    table = write_table(tmp_path / "t.csv", ["path", "class"], folder_rows(flat_folder, folder, with_split=False))
    index = scan_data(flat_folder, table, val_split=0.3, seed=7)
    assert index == folder and index.layout == "flat"
    assert [p for p, _ in index.train] == [p for p, _ in folder.train]  # the same order, not only the same set


@pytest.mark.parametrize("name", [*PATH_NAMES, "FILE_NAME", "Image"])
def test_path_column_spellings(flat_folder, tmp_path, name):
    folder = scan_image_folder(flat_folder)
    table = write_table(tmp_path / "t.csv", [name, "label"], folder_rows(flat_folder, folder, with_split=False))
    assert scan_data(flat_folder, table) == folder


@pytest.mark.parametrize("name", [*LABEL_NAMES, "Label", "CATEGORY"])
def test_label_column_spellings(flat_folder, tmp_path, name):
    folder = scan_image_folder(flat_folder)
    table = write_table(tmp_path / "t.csv", ["file", name], folder_rows(flat_folder, folder, with_split=False))
    assert scan_data(flat_folder, table) == folder


@pytest.mark.parametrize("name", [*SPLIT_NAMES, "Subset"])
def test_split_column_spellings(split_folder, tmp_path, name):
    folder = scan_image_folder(split_folder)
    table = write_table(tmp_path / "t.jsonl", ["image", "labels", name], folder_rows(split_folder, folder))
    assert scan_data(split_folder, table) == folder


def test_split_values_valid_and_validation_mean_val(split_folder, tmp_path):
    folder = scan_image_folder(split_folder)
    rows = [[p, c, {"val": random.choice(["valid", "Validation", "VAL"])}.get(s, s.upper())]
            for p, c, s in folder_rows(split_folder, folder)]
    assert scan_data(split_folder, write_table(tmp_path / "t.csv", ["path", "label", "split"], rows)) == folder


def test_explicit_columns_win_over_detected_ones(split_folder, tmp_path):
    folder = scan_image_folder(split_folder)
    rows = [[p, c, s, "decoy.png", "wrong", "train"] for p, c, s in folder_rows(split_folder, folder)]
    table = write_table(tmp_path / "t.parquet", ["img", "y", "part", "file_name", "label", "split"], rows)
    spec = TableSpec(table, path_column="img", label_column="y", split_column="part")
    assert scan_data(split_folder, spec) == folder


def test_an_explicit_column_that_is_missing_names_the_columns(flat_folder, tmp_path):
    table = write_table(tmp_path / "t.csv", ["file", "label"], [["cat/0.png", "cat"]])
    with pytest.raises(DataError, match=r"no column 'img' \(--path-column\); columns: file, label"):
        scan_data(flat_folder, TableSpec(table, path_column="img"))


def test_column_options_without_a_table_are_refused(flat_folder):
    with pytest.raises(DataError, match=r"--label-column y given, but .* has no label table"):
        scan_data(flat_folder, TableSpec(label_column="y"))


def test_paths_without_extension_resolve_to_their_one_file(flat_folder, tmp_path):
    folder = scan_image_folder(flat_folder)
    rows = [[p.removesuffix(".png"), c] for p, c in folder_rows(flat_folder, folder, with_split=False)]
    assert scan_data(flat_folder, write_table(tmp_path / "t.csv", ["image_id", "label"], rows)) == folder


def test_a_stem_of_two_files_is_a_bad_file_naming_them(flat_folder, tmp_path):
    save_rgb(flat_folder / "cat" / "0.jpg")
    table = write_table(tmp_path / "t.csv", ["image_id", "label"],
                        [["cat/0", "cat"], ["cat/1", "cat"], ["dog/0", "dog"]])
    with pytest.warns(DataWarning, match="skipped 1 bad file"):
        index = scan_data(flat_folder, table)
    assert index.bad_files == [(flat_folder / "cat" / "0", "names 2 files (0.jpg, 0.png); give the extension")]


# ----- Hugging Face imagefolder metadata --------------------------------------------------------------------
def test_metadata_csv_in_the_folder_is_read_without_labels(flat_folder):
    folder = scan_image_folder(flat_folder, seed=3)
    write_table(flat_folder / "metadata.csv", ["file_name", "label"], folder_rows(flat_folder, folder, False))
    index = scan_data(flat_folder, seed=3)
    assert index == folder and index.table == flat_folder / "metadata.csv"


def test_metadata_jsonl_per_split_folder_gives_each_split(tmp_path):
    root = make_image_folder(tmp_path / "hf", classes=CLASSES, train_per_class=3, val_per_class=2,
                             test_per_class=1, size=8)
    (root / "val").rename(root / "validation")
    folder = scan_image_folder(root)
    for split in ("train", "validation", "test"):
        rows = [[str(p.relative_to(root / split)), folder.classes[label]]
                for p, label in getattr(folder, "val" if split == "validation" else split)]
        write_table(root / split / "metadata.jsonl", ["file_name", "label"], rows)
    index = scan_data(root)
    assert index == folder and index.layout == "split"


def test_metadata_in_some_split_folders_only_is_refused(split_folder):
    write_table(split_folder / "train" / "metadata.csv", ["file_name", "label"], [["circle/train_0000.png", "circle"]])
    with pytest.raises(DataError, match=r"val, .*test have no metadata.csv or metadata.jsonl while "
                                        r".*train/metadata.csv does"):
        scan_data(split_folder)


def test_two_metadata_files_in_one_folder_are_refused(flat_folder):
    write_table(flat_folder / "metadata.csv", ["file_name", "label"], [["cat/0.png", "cat"]])
    write_table(flat_folder / "metadata.jsonl", ["file_name", "label"], [["cat/0.png", "cat"]])
    with pytest.raises(DataError, match="holds both metadata.csv and metadata.jsonl; keep one"):
        scan_data(flat_folder)


# ----- splits -------------------------------------------------------------------------------------------------
def test_a_split_column_without_val_rows_holds_out_val_with_a_warning(flat_folder, tmp_path):
    folder = scan_image_folder(flat_folder, seed=1)
    rows = [[p, c, "train"] for p, c in folder_rows(flat_folder, folder, with_split=False)]
    with pytest.warns(DataWarning, match="no readable val rows: holding out 20% of train"):
        index = scan_data(flat_folder, write_table(tmp_path / "t.csv", ["path", "label", "split"], rows), seed=1)
    assert (index.train, index.val) == (folder.train, folder.val)


POOL = 6  # images per class written once; each drawn table lists a prefix of them


@pytest.fixture(scope="module")
def pool() -> Path:
    root = Path(tempfile.mkdtemp(prefix="table-pool-"))
    for c in range(4):
        for i in range(POOL):
            save_rgb(root / f"c{c}" / f"{i}.png", size=(4, 4))
    return root


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, POOL), min_size=2, max_size=4), fraction=st.floats(0.05, 0.95),
       seed=st.integers(0, 2**32 - 1))
def test_a_table_without_splits_is_split_stratified_and_disjoint(pool, counts, fraction, seed):
    rows = [[f"c{c}/{i}.png", f"c{c}"] for c, n in enumerate(counts) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # a thin class: warned, not wrong
            index = scan_data(pool, write_table(Path(tmp) / "t.csv", ["path", "label"], rows), fraction, seed)
    train, val = Counter(label for _, label in index.train), Counter(label for _, label in index.val)
    assert not {p for p, _ in index.train} & {p for p, _ in index.val}
    assert len(index.train) + len(index.val) == len(rows)
    for label, n in enumerate(counts):
        if n == 1:
            assert (train[label], val[label]) == (1, 0)  # a single image stays in train
        else:
            assert train[label] >= 1 and val[label] >= 1 and abs(val[label] - n * fraction) < 1


# ----- bad input: one line each -----------------------------------------------------------------------------
def test_a_missing_table(flat_folder, tmp_path):
    with pytest.raises(DataError, match=r"label table .*nope.csv does not exist; give --labels a .csv, .tsv"):
        scan_data(flat_folder, tmp_path / "nope.csv")


def test_an_unknown_extension(flat_folder, tmp_path):
    (tmp_path / "t.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match=r"unknown extension '.xlsx'; valid: .csv, .tsv, .parquet, .jsonl, .ndjson"):
        scan_data(flat_folder, tmp_path / "t.xlsx")


def test_no_path_column_names_the_columns_and_the_spellings(flat_folder, tmp_path):
    table = write_table(tmp_path / "t.csv", ["id", "label"], [["cat/0.png", "cat"]])
    with pytest.raises(DataError, match=r"no path column: found id, label; looked for file_name, filename, image, "
                                        r"image_id, path, file \(any case\); name it with --path-column"):
        scan_data(flat_folder, table)


def test_no_label_column_names_the_columns_and_the_spellings(flat_folder, tmp_path):
    table = write_table(tmp_path / "t.jsonl", ["file_name", "species"], [["cat/0.png", "cat"]])
    with pytest.raises(DataError, match=r"no label column: found file_name, species; looked for label, labels, "
                                        r"class, category, tags \(any case\); name it with --label-column"):
        scan_data(flat_folder, table)


def test_missing_and_unreadable_files_are_listed_and_the_scan_goes_on(flat_folder, tmp_path):
    truncated_jpeg(flat_folder / "dog" / "broken.jpg")
    (flat_folder / "dog" / "notes.txt").write_text("x")
    folder = scan_image_folder(flat_folder)
    rows = [*folder_rows(flat_folder, folder, with_split=False), ["dog/gone.png", "dog"], ["dog/notes.txt", "dog"],
            ["dog/broken.jpg", "dog"]]
    with pytest.warns(DataWarning, match="skipped 3 bad file"):
        index = scan_data(flat_folder, write_table(tmp_path / "t.csv", ["path", "label"], rows))
    assert (index.train, index.val) == (folder.train, folder.val)
    reasons = dict(index.bad_files)
    assert set(reasons) == {flat_folder / "dog" / n for n in ("broken.jpg", "gone.png", "notes.txt")}
    assert reasons[flat_folder / "dog" / "gone.png"] == "no such file"
    assert reasons[flat_folder / "dog" / "broken.jpg"] == dict(folder.bad_files)[flat_folder / "dog" / "broken.jpg"]
    written = index.write_bad_files(tmp_path).read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in written) == sorted(str(p) for p in reasons)


@pytest.mark.parametrize("path", ["../outside.png", "cat/../../outside.png", "/etc/passwd"])
def test_a_path_leaving_the_folder_is_refused_with_its_row(flat_folder, tmp_path, path):
    table = write_table(tmp_path / "t.csv", ["path", "label"], [["cat/0.png", "cat"], [path, "dog"]])
    with pytest.raises(DataError, match=r"row 2 of .*: path '.*' leaves the data folder"):
        scan_data(flat_folder, table)


def test_an_absolute_path_inside_the_folder_is_accepted(flat_folder, tmp_path):
    folder = scan_image_folder(flat_folder)
    rows = [[str((flat_folder / p).absolute()), c] for p, c in folder_rows(flat_folder, folder, with_split=False)]
    assert scan_data(flat_folder, write_table(tmp_path / "t.csv", ["path", "label"], rows)) == folder


def test_one_file_with_two_labels_is_refused_naming_both(flat_folder, tmp_path):
    rows = [["cat/0.png", "cat"], ["dog/0.png", "dog"], ["./cat/0.png", "dog"]]
    with pytest.raises(DataError, match=r"cat/0.png is listed twice with different labels: cat \(row 1 of .*\) and "
                                        r"dog \(row 3 of"):
        scan_data(flat_folder, write_table(tmp_path / "t.csv", ["path", "label"], rows))


def test_one_file_listed_twice_with_one_label_counts_once(flat_folder, tmp_path):
    rows = [["cat/0.png", "cat"], ["cat/1.png", "cat"], ["dog/0.png", "dog"], ["dog/1.png", "dog"], ["cat/0", "cat"]]
    index = scan_data(flat_folder, write_table(tmp_path / "t.csv", ["path", "label"], rows))
    assert len(index.train) + len(index.val) == 4


def test_an_empty_label_is_refused_with_its_row(flat_folder, tmp_path):
    table = write_table(tmp_path / "t.csv", ["path", "label"], [["cat/0.png", "cat"], ["dog/0.png", " "]])
    with pytest.raises(DataError, match=r"row 2 of .*: empty label in column 'label'; every row needs a label"):
        scan_data(flat_folder, table)


def test_an_unknown_split_is_refused_naming_the_valid_ones(flat_folder, tmp_path):
    table = write_table(tmp_path / "t.csv", ["path", "label", "split"], [["cat/0.png", "cat", "dev"]])
    with pytest.raises(DataError, match=r"row 1 of .*: unknown split 'dev' in column 'split'; valid: train, val, "
                                        r"valid, validation, test"):
        scan_data(flat_folder, table)


def test_a_label_only_in_val_is_refused_naming_it(flat_folder, tmp_path):
    rows = [["cat/0.png", "cat", "train"], ["dog/0.png", "dog", "train"], ["bird/0.png", "bird", "val"]]
    with pytest.raises(DataError, match=r"label\(s\) bird appear only in val/test rows"):
        scan_data(flat_folder, write_table(tmp_path / "t.csv", ["path", "label", "split"], rows))


@pytest.mark.parametrize("ext,cell", [(".csv", "cat|dog"), (".csv", "cat; dog"), (".jsonl", ["cat", "dog"])])
def test_several_labels_in_a_row_are_refused(flat_folder, tmp_path, ext, cell):
    table = write_table(tmp_path / f"t{ext}", ["path", "labels"], [["cat/0.png", "cat"], ["cat/1.png", cell]])
    with pytest.raises(DataError, match="several labels in row 2: multi-label tables are not supported; give one "
                                        "label per row"):
        scan_data(flat_folder, table)


def test_parse_labels_reads_every_cell_kind_into_a_list():
    assert parse_labels("cat | dog;bird") == ("cat", "dog", "bird")
    assert parse_labels(["cat", "dog"]) == ("cat", "dog")
    assert parse_labels(7) == ("7",)
    assert parse_labels(None) == parse_labels(float("nan")) == parse_labels(" ") == ()


def test_one_label_is_refused_as_too_few_classes(flat_folder, tmp_path):
    table = write_table(tmp_path / "t.csv", ["path", "label"], [["cat/0.png", "cat"], ["cat/1.png", "cat"]])
    with pytest.raises(DataError, match=r"1 label \(cat\) in its training rows, a classifier needs at least two"):
        scan_data(flat_folder, table)


def test_a_class_whose_files_are_all_unreadable_is_refused(flat_folder, tmp_path):
    rows = [["cat/0.png", "cat"], ["dog/0.png", "dog"], ["bird/gone.png", "bird"]]
    with pytest.warns(DataWarning), pytest.raises(DataError, match=r"no readable image of class\(es\) bird .*"
                                                                   r"gone.png \(no such file\)"):
        scan_data(flat_folder, write_table(tmp_path / "t.csv", ["path", "label"], rows))


def test_scan_label_table_needs_a_table(flat_folder):
    with pytest.raises(DataError, match="has no label table: give --labels FILE"):
        scan_label_table(flat_folder)


def test_table_files_lists_files_with_optional_labels(flat_folder, tmp_path):
    table = write_table(tmp_path / "t.csv", ["image_id", "label"], [["cat/0", "cat"], ["dog/1.png", ""]])
    assert table_files(flat_folder, table) == [(flat_folder / "cat" / "0.png", "cat"), (flat_folder / "dog" / "1.png",
                                                                                        None)]
    unlabelled = write_table(tmp_path / "u.jsonl", ["path"], [["cat/1.png"]])
    assert table_files(flat_folder, unlabelled) == [(flat_folder / "cat" / "1.png", None)]


def test_an_id_without_extension_that_names_no_file_is_missing_not_a_non_image(flat_folder, tmp_path):
    folder = scan_image_folder(flat_folder)
    rows = [*folder_rows(flat_folder, folder, with_split=False), ["dog/gone", "dog"]]
    with pytest.warns(DataWarning, match="skipped 1 bad file"):
        index = scan_data(flat_folder, write_table(tmp_path / "t.csv", ["path", "label"], rows))
    assert dict(index.bad_files) == {flat_folder / "dog" / "gone": "no such file (nor any gone.*)"}
