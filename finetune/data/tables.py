"""Label tables: image files listed in a CSV, TSV, Parquet or JSON Lines file, with their labels.

A table gives one row per image: its path relative to the data folder, its label and, optionally, its
split (train, val or test). It is read from `--labels FILE`, or, with no `--labels`, from Hugging Face's
`imagefolder` metadata file inside the data folder:

    DIR/metadata.csv (or .jsonl)                           paths relative to DIR
    DIR/train/metadata.csv + DIR/val/metadata.csv [+ test]   each gives its split, paths relative to its folder

The table scans into the same `DatasetIndex` as class folders holding the same files and labels: classes
are the sorted label names, and each split lists its images by class, then in the order a walk of the
folders visits them (a folder's own files before its sub-folders', names sorted). A run from a table is
therefore the run from the equivalent folders, and the order of the table's rows changes nothing.
"""
from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Collection, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from finetune.data.images import IMAGE_EXTENSIONS, is_image_file
from finetune.data.scan import (
    SPLITS,
    VAL_DIR_NAMES,
    DatasetIndex,
    DataWarning,
    Item,
    _check_val_split,
    _keep_readable,
    _warn_bad_files,
    _warn_thin_train,
    check_data_folder,
    scan_image_folder,
    stratified_split,
)
from finetune.errors import DataError
from finetune.pathtext import escaped, printable
from finetune.untrusted import parse_json

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Column names looked for, case-insensitively, first match first: the spellings of Hugging Face's imagefolder
# (file_name, label), torchvision/Kaggle tables (image_id, filename, category) and multi-label sets (tags).
PATH_NAMES = ("file_name", "filename", "image", "image_id", "path", "file")
LABEL_NAMES = ("label", "labels", "class", "category", "tags")
SPLIT_NAMES = ("split", "subset")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")  # Hugging Face's imagefolder convention
LABEL_SEPARATORS = ("|", ";")  # a cell "cat|dog" or "cat;dog" holds two labels
SHOWN = 5  # names listed in one error line before "and N more"


@dataclass(frozen=True)
class TableSpec:
    """Where a label table is and which of its columns to read; None: found by convention.

    Attributes:
        file: The table (--labels); None: a metadata.csv/metadata.jsonl in the data folder, if any.
        path_column: Column of the image paths; None: the first column named as in PATH_NAMES.
        label_column: Column of the labels; None: the first named as in LABEL_NAMES.
        split_column: Column of the splits; None: the first named as in SPLIT_NAMES, if any.
    """

    file: Path | None = None
    path_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None

    @classmethod
    def of(cls, settings: Any) -> TableSpec:
        """The spec recorded in a RunConfig (its labels, path_column, label_column and split_column)."""
        labels = getattr(settings, "labels", None)
        return cls(Path(labels) if labels is not None else None, getattr(settings, "path_column", None),
                   getattr(settings, "label_column", None), getattr(settings, "split_column", None))

    @classmethod
    def of_run(cls, settings: Any, data: str | Path) -> TableSpec:
        """The spec a run recorded when `data` is the folder that run read (the table belongs to that folder),
        else an empty spec (class folders, or a metadata file in `data`)."""
        saved = getattr(settings, "data", None)
        if saved is None or Path(saved).resolve() != Path(data).resolve():
            return cls()
        return cls.of(settings)

    def columns_given(self) -> list[str]:
        """The column options set, as flags: ["--path-column img"]."""
        return [f"--{f.name.replace('_', '-')} {getattr(self, f.name)}" for f in fields(self)
                if f.name != "file" and getattr(self, f.name) is not None]


@dataclass(frozen=True)
class TableRow:
    """One row of a label table: its number (records counted from 1, the header excluded), the path cell,
    its labels (parsed by `parse_labels`) and its split (train, val, test or None when the table has none)."""

    number: int
    path: str
    labels: tuple[str, ...]
    split: str | None


def as_spec(labels: str | os.PathLike[str] | TableSpec | None) -> TableSpec:
    """A `labels=` argument of the Python API as a TableSpec: a table's path, a spec, or None (by convention)."""
    if isinstance(labels, TableSpec):
        return labels
    return TableSpec(Path(labels) if labels is not None else None)


def check_table_file(file: Path) -> str:
    """The table's format ("csv", "tsv", "parquet" or "jsonl"); DataError when it is missing or unknown."""
    fmt = TABLE_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise DataError(f"label table {escaped(file)}: unknown extension {file.suffix or '(none)'!r}; valid: "
                        f"{', '.join(TABLE_FORMATS)}")
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "does not exist"
        raise DataError(f"label table {escaped(file)} {what}; give --labels a {', '.join(TABLE_FORMATS)} file of "
                        f"image paths and labels")
    return fmt


# ----- reading ---------------------------------------------------------------------------------------------
Records = list[tuple[int, dict[str, Any]]]  # (row number, column -> cell)


def read_records(file: Path) -> tuple[list[str], Records]:
    """The column names and the rows (number counted from 1, header and blank lines excluded; column -> cell)
    of a table, by its extension.

    Raises:
        DataError: Missing file, unknown extension, unreadable or malformed content, or no rows.
    """
    fmt = check_table_file(file)
    columns, records = {"csv": _read_csv, "tsv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}[fmt](
        file, "\t" if fmt == "tsv" else ",")
    if not records:
        raise DataError(f"label table {escaped(file)} has no rows (columns: {', '.join(columns) or 'none'})")
    return columns, records


def _text(file: Path) -> str:
    try:
        return file.read_bytes().decode("utf-8-sig")  # -sig: the byte-order mark spreadsheets write
    except OSError as e:
        raise DataError(f"cannot read label table {escaped(file)} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"label table {escaped(file)} is not UTF-8 text (byte at offset {e.start})") from None


def _read_csv(file: Path, delimiter: str) -> tuple[list[str], Records]:
    rows = csv.reader(io.StringIO(_text(file), newline=""), delimiter=delimiter)
    records: Records = []
    try:
        header = [name.strip() for name in next(rows, [])]
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            number = len(records) + 1
            if len(row) > len(header):
                raise DataError(f"row {number} of {escaped(file)} has {len(row)} cells but the header names "
                                f"{len(header)} columns ({', '.join(header)}); quote cells that hold {delimiter!r}")
            records.append((number, {**dict.fromkeys(header, ""), **dict(zip(header, row))}))
    except csv.Error as e:
        raise DataError(f"label table {escaped(file)} is not valid {'TSV' if delimiter == chr(9) else 'CSV'} "
                        f"({e})") from None
    return header, records


def _read_jsonl(file: Path, _: str) -> tuple[list[str], Records]:
    columns: dict[str, None] = {}
    records: Records = []
    for number, line in enumerate((ln for ln in _text(file).splitlines() if ln.strip()), 1):
        record = parse_json(line, f"row {number} of label table {escaped(file)}", DataError)
        if not isinstance(record, dict):
            raise DataError(f"row {number} of label table {escaped(file)} is a JSON {type(record).__name__}, not "
                            f"an object such as {{\"file_name\": \"a.jpg\", \"label\": \"cat\"}}")
        columns.update(dict.fromkeys(record))
        records.append((number, record))
    return list(columns), records


def _read_parquet(file: Path, _: str) -> tuple[list[str], Records]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"label table {escaped(file)} is not a readable Parquet file ({e})") from None
    return table.column_names, list(enumerate(table.to_pylist(), 1))


def parse_labels(cell: Any) -> tuple[str, ...]:
    """The labels of one cell: a list (JSON Lines, Parquet) or text holding labels separated by | or ;.

    Example:
        >>> parse_labels("cat| dog"), parse_labels(["cat"]), parse_labels(3), parse_labels("")
        (('cat', 'dog'), ('cat',), ('3',), ())
    """
    if cell is None or (isinstance(cell, float) and cell != cell):  # None, or NaN: an empty cell
        return ()
    parts = [str(v) for v in cell] if isinstance(cell, (list, tuple)) else [str(cell)]
    for sep in LABEL_SEPARATORS:
        parts = [piece for part in parts for piece in part.split(sep)]
    return tuple(p.strip() for p in parts if p.strip())


def find_column(columns: list[str], given: str | None, names: tuple[str, ...], what: str, flag: str,
                file: Path, required: bool = True) -> str | None:
    """The column `given`, else the first of `names` among `columns` (any case); None where not required.

    Raises:
        DataError: `given` is not a column, or none of `names` is (`required`); naming the columns found.
    """
    found = ", ".join(columns) or "none"
    if given is not None:
        if given not in columns:
            raise DataError(f"label table {escaped(file)} has no column {given!r} ({flag}); columns: {found}")
        return given
    lower = {c.lower(): c for c in reversed(columns)}  # the first column of each spelling wins
    match = next((lower[n] for n in names if n in lower), None)
    if match is None and required:
        raise DataError(f"label table {escaped(file)} has no {what} column: found {found}; looked for "
                        f"{', '.join(names)} (any case); name it with {flag}")
    return match


def read_label_rows(file: Path, spec: TableSpec = TableSpec(), split: str | None = None,
                    need_label: bool = True) -> list[TableRow]:
    """The rows of a label table, each with its path, labels and split.

    Args:
        file: The table.
        spec: The column names to read (None: detected).
        split: The split every row belongs to (a Hugging Face split folder's metadata); None: the split
            column's, or None when the table has none.
        need_label: False: the label column may be absent and a label cell empty (files to predict).

    Raises:
        DataError: No path or label column, an empty path or label cell, or an unknown split value.
    """
    columns, records = read_records(file)
    path_col = find_column(columns, spec.path_column, PATH_NAMES, "path", "--path-column", file)
    label_col = find_column(columns, spec.label_column, LABEL_NAMES, "label", "--label-column", file, need_label)
    split_col = None if split is not None else find_column(columns, spec.split_column, SPLIT_NAMES, "split",
                                                           "--split-column", file, required=False)
    rows = []
    for number, record in records:
        path = str(record.get(path_col) if record.get(path_col) is not None else "").strip()
        if not path:
            raise DataError(f"row {number} of {escaped(file)}: empty path in column {path_col!r}; every row names "
                            f"an image file")
        labels = parse_labels(record.get(label_col)) if label_col is not None else ()
        if need_label and not labels:
            raise DataError(f"row {number} of {escaped(file)}: empty label in column {label_col!r}; every row needs "
                            f"a label")
        row_split = split if split_col is None else _split_value(record.get(split_col), number, split_col, file)
        rows.append(TableRow(number, path, labels, row_split))
    return rows


def _split_value(cell: Any, number: int, column: str, file: Path) -> str:
    value = "" if cell is None else str(cell).strip()
    if value.lower() not in SPLIT_VALUES:
        raise DataError(f"row {number} of {escaped(file)}: unknown split {value!r} in column {column!r}; valid: "
                        f"{', '.join(SPLIT_VALUES)}")
    return SPLIT_VALUES[value.lower()]


def single_label(row: TableRow) -> str:
    """The row's one label.

    Raises:
        DataError: The cell holds several labels.
    """
    if len(row.labels) > 1:
        raise DataError(f"several labels in row {row.number}: multi-label tables are not supported; give one label "
                        f"per row (labels {'|'.join(row.labels)!r})")
    return row.labels[0]


# ----- locating the files -----------------------------------------------------------------------------------
def relative_path(text: str, base: Path, number: int, file: Path) -> Path:
    """The row's path, relative to `base` and normalised ("a/./b" -> "a/b"; an absolute path inside `base`
    made relative).

    Raises:
        DataError: The path leaves `base` ("../x.jpg", an absolute path elsewhere).
    """
    if os.path.isabs(text):
        rel = os.path.relpath(os.path.normpath(text), os.path.abspath(base))
    else:
        rel = os.path.normpath(text)
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir or os.path.isabs(rel):
        raise DataError(f"row {number} of {escaped(file)}: path {printable(text)!r} leaves the data folder "
                        f"{escaped(base)}; paths are relative to it and stay inside it")
    return Path(rel)


class StemFinder:
    """Finds the file `name.EXT` that a path without its extension (Kaggle's image_id) names, listing each
    folder once however many rows point into it."""

    def __init__(self) -> None:
        self.listings: dict[Path, dict[str, list[str]]] = {}

    def resolve(self, path: Path) -> tuple[Path, str | None]:
        """(`path`, None) when it exists or is not a bare stem; (the one `path.EXT`, None); or (`path`, why
        not) where several files match."""
        if is_image_file(path) or os.path.lexists(path):
            return path, None
        matches = self._listing(path.parent).get(path.name, [])
        if len(matches) == 1:
            return path.parent / matches[0], None
        if len(matches) > 1:
            return path, f"names {len(matches)} files ({', '.join(sorted(matches))}); give the extension"
        if not path.suffix:  # a bare stem that names nothing: no file, whatever extension it would have had
            return path, f"no such file (nor any {path.name}.*)"
        return path, None  # missing: the check of the file says so

    def _listing(self, folder: Path) -> dict[str, list[str]]:
        if folder not in self.listings:
            by_stem: dict[str, list[str]] = {}
            try:
                names = [e.name for e in os.scandir(folder) if not e.is_dir()]
            except OSError:
                names = []
            for name in names:
                by_stem.setdefault(Path(name).stem, []).append(name)
            self.listings[folder] = by_stem
        return self.listings[folder]


@dataclass(frozen=True)
class Entry:
    """A row located on disk: the file, its label, its split, and why it cannot be used (or None)."""

    path: Path
    label: str
    split: str | None
    number: int
    file: Path
    problem: str | None = None


def located(rows: Iterable[TableRow], base: Path, file: Path, finder: StemFinder) -> list[Entry]:
    """The rows' files under `base`, one label each (DataError for a path leaving `base`, or several labels)."""
    entries = []
    for row in rows:
        path, problem = finder.resolve(base / relative_path(row.path, base, row.number, file))
        entries.append(Entry(path, single_label(row), row.split, row.number, file, problem))
    return entries


def unique(entries: list[Entry]) -> list[Entry]:
    """The entries with a file listed twice kept once.

    Raises:
        DataError: A file listed twice with different labels, or in different splits.
    """
    seen: dict[Path, Entry] = {}
    for entry in entries:
        first = seen.setdefault(entry.path, entry)
        for what, a, b in (("labels", first.label, entry.label), ("splits", first.split, entry.split)):
            if a != b:
                raise DataError(f"{escaped(entry.path)} is listed twice with different {what}: {a} (row "
                                f"{first.number} of {escaped(first.file)}) and {b} (row {entry.number} of "
                                f"{escaped(entry.file)}); give each file one {what[:-1]}")
    return list(seen.values())


def walk_key(path: Path, root: Path) -> tuple[tuple[int, str], ...]:
    """Sorts paths in the order a sorted walk of `root` visits them: a folder's files (0) before its
    sub-folders (1), names in order (as `finetune.data.scan.walk_files`)."""
    parts = _relative_parts(path, root)
    return tuple((1, p) for p in parts[:-1]) + ((0, parts[-1]),)


def _relative_parts(path: Path, root: Path) -> tuple[str, ...]:
    try:
        return path.relative_to(root).parts
    except ValueError:
        return path.parts


# ----- the table as a DatasetIndex ---------------------------------------------------------------------------
def table_sources(root: Path, spec: TableSpec) -> list[tuple[Path, Path, str | None]] | None:
    """(table, folder its paths are relative to, split it gives or None) of each table to read, or None for
    class folders (no --labels and no metadata file).

    Raises:
        DataError: Column options without a table, two metadata files in one folder, or split folders of
            which only some have a metadata file.
    """
    if spec.file is not None:
        return [(Path(spec.file).expanduser(), root, None)]
    top = _metadata_file(root)
    if top is not None:
        return [(top, root, None)]
    dirs = {"train": root / "train", "val": next((root / n for n in VAL_DIR_NAMES if (root / n).is_dir()), None),
            "test": root / "test"}
    present = {s: d for s, d in dirs.items() if d is not None and d.is_dir()}
    found = {s: _metadata_file(d) for s, d in present.items()}
    if any(found.values()):
        lacking = [escaped(present[s]) for s, f in found.items() if f is None]
        if lacking:
            raise DataError(f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no "
                            f"{' or '.join(METADATA_NAMES)} while "
                            f"{', '.join(escaped(f) for f in found.values() if f)} does; give each split folder its "
                            f"metadata file, or give --labels FILE")
        return [(f, present[s], s) for s, f in found.items() if f is not None]
    if spec.columns_given():
        raise DataError(f"{' '.join(spec.columns_given())} given, but {escaped(root)} has no label table: give "
                        f"--labels FILE, or put a {' or '.join(METADATA_NAMES)} in it")
    return None


def _metadata_file(folder: Path) -> Path | None:
    found = [folder / n for n in METADATA_NAMES if (folder / n).is_file()]
    if len(found) > 1:
        raise DataError(f"{escaped(folder)} holds both {' and '.join(METADATA_NAMES)}; keep one metadata file")
    return found[0] if found else None


def _classes(entries: list[Entry], sources: list[tuple[Path, Path, str | None]]) -> list[str]:
    """Sorted labels of the training rows (all rows where the table gives no split), as class folders' names.

    Raises:
        DataError: No training rows, fewer than two classes, or a label that only val/test rows have.
    """
    tables = ", ".join(escaped(f) for f, _, _ in sources)
    classes = sorted({e.label for e in entries if e.split in (None, "train")})
    if not classes:
        raise DataError(f"{tables} has no train rows; give some rows the split train")
    if len(classes) < 2:
        raise DataError(f"{tables} has 1 label ({classes[0]}) in its training rows, a classifier needs at "
                        f"least two")
    extra = sorted({e.label for e in entries} - set(classes))
    if extra:
        raise DataError(f"{tables}: label(s) {_listed(extra)} appear only in val/test rows; every class needs "
                        f"training rows (train labels: {_listed(classes)})")
    return classes


def _listed(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _candidates(entries: list[Entry], classes: list[str], bad: list[tuple[Path, str]]) -> dict[str, list[Item]]:
    """Items per split ("train" for a table without splits); non-image files and ambiguous stems go to `bad`."""
    label_of = {name: i for i, name in enumerate(classes)}
    items: dict[str, list[Item]] = {}
    for e in entries:
        if e.problem is not None:
            bad.append((e.path, e.problem))
        elif not is_image_file(e.path):
            ext = e.path.suffix or "(none)"
            bad.append((e.path, f"not an image file: extension {ext} is not one of {', '.join(IMAGE_EXTENSIONS)}"))
        else:
            items.setdefault(e.split or "train", []).append((e.path, label_of[e.label]))
    return items


def _check_train_classes(train: list[Item], classes: list[str], sources: list, bad: list[tuple[Path, str]]) -> None:
    have = {label for _, label in train}
    empty = [name for i, name in enumerate(classes) if i not in have]
    if empty:
        skipped = "; ".join(f"{escaped(p)} ({printable(r)})" for p, r in bad[:SHOWN])
        tables = ", ".join(escaped(f) for f, _, _ in sources)
        raise DataError(f"no readable image of class(es) {_listed(empty)} in {tables}; every class needs at least one "
                        f"training image with extension {', '.join(IMAGE_EXTENSIONS)}"
                        + (f" (skipped: {skipped})" if skipped else ""))


def _readable(items: dict[str, list[Item]], progress: bool, bad: list,
              only: Collection[str] | None) -> tuple[dict[str, list[Item]], list[str]]:
    """The items whose files decode, per split, and the splits checked: those of `only` (default all, and all
    where a split of `only` is to be held out of train); the other splits' items are kept unchecked. A split
    left without items counts as absent, as an empty val/ folder does."""
    checked = [s for s in items if only is None or s in only or not all(o in items for o in only)]
    readable = _keep_readable([it for s in checked for it in items[s]], progress, bad)
    ok = {p for p, _ in readable}
    splits = {s: [it for it in its if it[0] in ok] if s in checked else its for s, its in items.items()}
    return {s: its for s, its in splits.items() if its or s == "train"}, checked


def scan_label_table(root: str | Path, spec: TableSpec = TableSpec(), val_split: float = 0.2, seed: int = 0,
                     progress: bool = True, only: Collection[str] | None = None) -> DatasetIndex:
    """Scans the images a label table lists into a DatasetIndex, as `scan_image_folder` scans class folders.

    Rows whose file is missing, not an image or unreadable are skipped, recorded in `bad_files` and summarized
    in one DataWarning. Without a split column, val is held out of train by `stratified_split`.

    Args:
        root: The data folder the paths are relative to.
        spec: The table and its columns (see TableSpec); a spec with no file reads the metadata convention.
        val_split, seed, progress, only: As for `scan_image_folder`.

    Raises:
        DataError: No table, or a bad one: see `read_label_rows`, `relative_path`, `single_label`, `unique`;
            also a class without a readable training image.
    """
    root = Path(root).expanduser()
    _check_val_split(val_split)
    check_data_folder(root)
    sources = table_sources(root, spec)
    if sources is None:
        raise DataError(f"{escaped(root)} has no label table: give --labels FILE, or put a "
                        f"{' or '.join(METADATA_NAMES)} in it")
    return _index(root, sources, spec, val_split, seed, progress, only)


def _index(root: Path, sources: list[tuple[Path, Path, str | None]], spec: TableSpec, val_split: float, seed: int,
           progress: bool, only: Collection[str] | None) -> DatasetIndex:
    finder = StemFinder()
    entries = unique([e for file, base, split in sources
                      for e in located(read_label_rows(file, spec, split), base, file, finder)])
    classes = _classes(entries, sources)
    order = {name: i for i, name in enumerate(classes)}
    entries.sort(key=lambda e: (SPLITS.index(e.split or "train"), order[e.label], walk_key(e.path, root)))
    bad: list[tuple[Path, str]] = []
    try:
        splits, checked = _readable(_candidates(entries, classes, bad), progress, bad, only)
        splits.setdefault("train", [])
        if "train" in checked or not splits["train"]:
            _check_train_classes(splits["train"], classes, sources, bad)
    finally:
        _warn_bad_files(root, bad)
    layout = "split" if any(e.split is not None for e in entries) else "flat"
    if "val" not in splits:
        if layout == "split":
            warnings.warn(f"{escaped(sources[0][0])} has no readable val rows: holding out {val_split:.0%} of train",
                          DataWarning, stacklevel=3)
        splits["train"], splits["val"] = stratified_split(splits["train"], classes, val_split, seed)
        _warn_thin_train(splits["train"], splits["val"], classes, val_split)
    return DatasetIndex(root, layout, classes, splits["train"], splits["val"], splits.get("test"), bad,
                        table=sources[0][0])


def scan_data(root: str | Path, labels: str | os.PathLike[str] | TableSpec | None = None, val_split: float = 0.2,
              seed: int = 0, progress: bool = True, only: Collection[str] | None = None) -> DatasetIndex:
    """Scans a data folder however its labels are given: a table (`labels`, or a metadata file in `root`),
    else class folders (`scan_image_folder`).

    Args:
        root: The data folder.
        labels: The label table's path, a TableSpec (the table and its columns), or None.
        val_split, seed, progress, only: As for `scan_image_folder`.
    """
    spec = as_spec(labels)
    root = Path(root).expanduser()
    check_data_folder(root)
    sources = table_sources(root, spec)
    if sources is None:
        return scan_image_folder(root, val_split=val_split, seed=seed, progress=progress, only=only)
    _check_val_split(val_split)
    return _index(root, sources, spec, val_split, seed, progress, only)


def table_files(root: str | Path, labels: str | os.PathLike[str] | TableSpec) -> list[tuple[Path, str | None]]:
    """The files a table lists (for `finetune predict`), in its row order, each with its label or None where
    its label cell is empty or the table has no label column; a file listed twice is kept once.

    Raises:
        DataError: See `read_label_rows` (the label column is optional), `relative_path`, `single_label`.
    """
    root, spec = Path(root).expanduser(), as_spec(labels)
    check_data_folder(root)
    if spec.file is None:
        raise DataError("a table of files to predict needs --labels FILE")
    file, finder = Path(spec.file).expanduser(), StemFinder()
    files: dict[Path, str | None] = {}
    for row in read_label_rows(file, spec, need_label=False):
        label = single_label(row) if row.labels else None
        path, _ = finder.resolve(root / relative_path(row.path, root, row.number, file))
        files.setdefault(path, label)
    return list(files.items())


