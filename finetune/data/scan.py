"""Image-folder scanning: find classes and splits, decode every image once, report bad files.

Two layouts are understood:

    DIR/train/<class>/*  DIR/val/<class>/*  [DIR/test/<class>/*]    ("split")
    DIR/<class>/*        split into train/val by a stratified, seeded val_split   ("flat")
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

import numpy as np

from finetune import atomic
from finetune.data.images import IMAGE_EXTENSIONS, BadImageError, is_image_file, verify_image
from finetune.errors import DataError
from finetune.pathtext import FS_ENCODING, FS_ERRORS, escaped, printable

SPLITS = ("train", "val", "test")
VAL_DIR_NAMES = ("val", "valid", "validation")
IGNORED_NAMES = ("__MACOSX",)
PROGRESS_MIN_IMAGES = 2000  # below this a scan takes a second or two; a bar would only flicker
LAYOUT_HELP = (
    "expected DIR/train/<class>/*.jpg + DIR/val/<class>/*.jpg (optionally DIR/test/<class>/*), "
    "or DIR/<class>/*.jpg split into train/val by --val-split"
)

Item = tuple[Path, int]


class DataWarning(UserWarning):
    """Something in the image folder was skipped or looks wrong, but training can go on."""


@dataclass
class DatasetIndex:
    """The result of a scan: classes, per-split (path, label) lists, and skipped files.

    Attributes:
        root: The scanned folder.
        layout: "split" (the data names each image's split: train/val[/test] sub-folders, or a label table's
            split column) or "flat" (class folders at the top, or a table without splits: val is held out).
        classes: Sorted class names; a label is an index into this list.
        train: Training (path, label) pairs.
        val: Validation (path, label) pairs.
        test: Test (path, label) pairs, or None when the folder has no test split.
        bad_files: (path, reason) of every file that was skipped.
        table: The label table the labels came from (`finetune.data.tables`), or None for class folders.
            Not compared: a table and class folders holding the same files and labels index the same data.
    """

    root: Path
    layout: str
    classes: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item] | None = None
    bad_files: list[tuple[Path, str]] = field(default_factory=list)
    table: Path | None = field(default=None, compare=False)

    @property
    def splits(self) -> list[str]:
        """Names of the splits present, e.g. ["train", "val"]."""
        return [s for s in SPLITS if getattr(self, s) is not None]

    def counts(self, split: str) -> dict[str, int]:
        """Returns images per class name in `split` ("train", "val" or "test"), zeros included."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        items = getattr(self, split)
        if items is None:
            raise ValueError(f"{escaped(self.root)} has no {split!r} split; present: {', '.join(self.splits)}")
        per_label = np.bincount([label for _, label in items], minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, per_label)}

    def write_bad_files(self, path: str | Path) -> Path:
        """Writes "path<TAB>reason" lines; `path` is a file or a folder (gets bad_files.txt).

        Each path is written as the file system's bytes (see `finetune.pathtext`), so that shell tools
        reading the file find the files; the file appears whole or not at all.

        Returns:
            The file written.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "bad_files.txt"
        text = "".join(f"{p}\t{reason}\n" for p, reason in self.bad_files)
        return atomic.write_text(path, text, encoding=FS_ENCODING, errors=FS_ERRORS)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in IGNORED_NAMES


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def walk_files(folder: Path) -> Iterator[Path]:
    """Yields visible files under `folder`, recursively, in sorted order, skipping hidden folders.

    Links that lead nowhere or in a loop are yielded too, so that they are reported, not lost.
    """
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(Path(d)))  # prunes the walk in place
        for name in sorted(filenames):
            if _visible(Path(name)):
                yield Path(dirpath) / name


def _check_val_split(val_split: float) -> None:
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be strictly between 0 and 1, got {val_split!r} (e.g. 0.2)")


def check_data_folder(root: Path) -> None:
    """Raises DataError unless `root` is an existing folder; the message shows the layouts expected."""
    if not root.exists():
        raise DataError(f"data folder {escaped(root)} does not exist; {LAYOUT_HELP}")
    if not root.is_dir():
        raise DataError(f"data folder {escaped(root)} is not a directory; {LAYOUT_HELP}")


def _split_dirs(root: Path) -> dict[str, Path] | None:
    """Returns {"train": ..., "val": ..., "test": ...} folders present, or None for a flat layout."""
    if not (root / "train").is_dir():
        return None
    dirs = {"train": root / "train"}
    val = next((root / n for n in VAL_DIR_NAMES if (root / n).is_dir()), None)
    if val is not None:
        dirs["val"] = val
    if (root / "test").is_dir():
        dirs["test"] = root / "test"
    return dirs


def _find_classes(class_root: Path, layout: str) -> list[str]:
    classes = [d.name for d in _subdirs(class_root)]
    if len(classes) < 2:
        found = f"{len(classes)} class folder" + ("" if len(classes) == 1 else "s")
        names = f" ({classes[0]})" if classes else ""
        inner = [d.name for d in _subdirs(class_root / classes[0])] if len(classes) == 1 else []
        deeper = (f"; its folder {classes[0]} holds {', '.join(inner[:5])}: if those are the classes, give "
                  f"--data {escaped(class_root / classes[0])}") if len(inner) >= 2 else ""
        images = sum(1 for p in class_root.iterdir() if p.is_file() and is_image_file(p))
        loose = (f"; its {images} image file{'s' if images != 1 else ''} with no class folder need a table of "
                 f"their labels: --labels FILE") if images else ""
        raise DataError(
            f"{escaped(class_root)} has {found}{names}, a classifier needs at least two ({layout} layout)"
            f"{deeper}{loose}; {LAYOUT_HELP}"
        )
    _warn_nested_classes(class_root, classes)
    return classes


def _warn_nested_classes(class_root: Path, classes: list[str]) -> None:
    """Warns when every class folder holds the same sub-folders and no image of its own
    (DIR/2023/{cat,dog}, DIR/2024/{cat,dog}): the classes are likely the inner folders, not the outer ones."""
    inner: list[set[str]] = []
    for name in classes:
        folder = class_root / name
        subs = {d.name for d in _subdirs(folder)}
        if len(subs) < 2 or any(is_image_file(f) for f in folder.iterdir() if f.is_file()):
            return
        inner.append(subs)
    shared = set.intersection(*inner)
    if shared == set.union(*inner):
        warnings.warn(f"every class folder of {escaped(class_root)} ({', '.join(classes[:5])}) holds the same "
                      f"sub-folders ({', '.join(sorted(shared)[:5])}) and no image of its own: the classes are the "
                      f"outer folders; if they are the inner ones, give --data {escaped(class_root / classes[0])} "
                      f"(one folder per class) or arrange DIR/train/<class>/ and DIR/val/<class>/",
                      DataWarning, stacklevel=4)


def _check_class_sets(split_dir: Path, classes: list[str]) -> list[str]:
    """Raises for class folders unknown to train; returns train classes missing from `split_dir`."""
    names = [d.name for d in _subdirs(split_dir)]
    extra = sorted(set(names) - set(classes))
    if extra:
        raise DataError(
            f"{escaped(split_dir)} has class folder(s) not in train: {', '.join(extra)}; every class of "
            f"{split_dir.name} must also be a folder in train (train classes: {', '.join(classes)})"
        )
    return [c for c in classes if c not in names]


def _candidates(class_root: Path, classes: list[str], bad: list[tuple[Path, str]]) -> list[Item]:
    """Lists image files per class folder; other files go to `bad` with a reason."""
    items = []
    for label, name in enumerate(classes):
        folder = class_root / name
        for path in walk_files(folder) if folder.is_dir() else ():
            if is_image_file(path):
                items.append((path, label))
            else:
                ext = path.suffix or "(none)"
                bad.append((path, f"not an image file: extension {ext} is not one of {', '.join(IMAGE_EXTENSIONS)}"))
    return items


def _check_one(path: Path) -> str | None:
    try:
        verify_image(path)
    except BadImageError as e:
        return str(e)
    return None


def _verify_all(paths: list[Path], progress: bool) -> list[str | None]:
    """Decodes every file once in a thread pool (Pillow releases the GIL while decoding), reusing
    the verdicts of an earlier scan for files whose size and modification time are unchanged."""
    cache = VerifiedFiles.load(paths)
    stats = [_stat(p) for p in paths]
    results: list[str | None] = [cache.verdict(p, st) for p, st in zip(paths, stats)]
    todo = [i for i, r in enumerate(results) if r is _UNKNOWN]
    if todo:
        workers = min(16, 2 * (os.cpu_count() or 2))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            fresh: Iterable[str | None] = pool.map(_check_one, [paths[i] for i in todo])
            if progress and len(todo) > PROGRESS_MIN_IMAGES:
                from rich.progress import track

                fresh = track(fresh, total=len(todo), description="Checking images")
            for i, reason in zip(todo, fresh):
                results[i] = reason
                cache.record(paths[i], stats[i], reason)
    cache.save()  # a no-op unless a verdict is new or a file is gone
    return results


_UNKNOWN = object()  # no cached verdict: the file must be decoded


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None  # a dangling link: decoding reports why
    return st.st_size, st.st_mtime_ns


class VerifiedFiles:
    """Verdicts of earlier scans (None: readable, else the reason it is not), keyed on the absolute
    path and valid while the file's size and modification time are those recorded.

    Kept in the cache folder (see `finetune.cache`), so that `run`, `lr-find`, `eval`, `export` and
    the processes DDP starts do not decode a folder again: one JSON file per scanned folder (named
    by a hash of its path), holding that folder's files only, so a command reads what it scans and
    not every folder ever scanned. Any problem reading or writing it only costs the decode it would
    have saved.
    """

    def __init__(self, path: Path, entries: dict[str, list]):
        self.path, self.entries, self.changed = path, entries, False

    @classmethod
    def load(cls, paths: Sequence[Path]) -> "VerifiedFiles":
        from finetune.cache import cache_dir

        root = os.path.commonpath([str(p.absolute()) for p in paths]) if paths else ""
        path = cache_dir() / "scan" / f"{hashlib.sha1(os.fsencode(root)).hexdigest()[:16]}.json"
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        wanted = {str(p.absolute()) for p in paths}
        cache = cls(path, {k: v for k, v in entries.items() if k in wanted})
        cache.changed = len(cache.entries) < len(entries)  # files gone since: rewrite without them
        return cache

    def verdict(self, path: Path, stat: tuple[int, int] | None) -> object:
        entry = self.entries.get(str(path.absolute()))
        if stat is None or entry is None or tuple(entry[:2]) != stat:
            return _UNKNOWN
        return entry[2]

    def record(self, path: Path, stat: tuple[int, int] | None, reason: str | None) -> None:
        if stat is not None:
            self.entries[str(path.absolute())] = [stat[0], stat[1], reason]
            self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.remove_abandoned(self.path.parent, of=self.path.name)  # a scan killed while saving
            # ensure_ascii: names that are not UTF-8 are kept as "\udcff" escapes, read back as the same str.
            atomic.write_text(self.path, json.dumps(self.entries, separators=(",", ":"), ensure_ascii=True))
        except OSError:
            pass


def _keep_readable(items: list[Item], progress: bool, bad: list[tuple[Path, str]]) -> list[Item]:
    reasons = _verify_all([p for p, _ in items], progress)
    bad.extend((p, r) for (p, _), r in zip(items, reasons) if r is not None)
    return [item for item, r in zip(items, reasons) if r is None]


def _skipped_in(folder: Path, bad: list[tuple[Path, str]], shown: int = 10) -> str:
    """"FOLDER [skipped 2: a.jpg (empty file (0 bytes)); b.png (...)]", or "FOLDER [no files]"."""
    mine = [(p, r) for p, r in bad if folder in p.parents]
    if not mine:
        return f"{escaped(folder)} [no files]"
    listed = "; ".join(f"{escaped(_relative(p, folder))} ({printable(r)})" for p, r in mine[:shown])
    more = f"; and {len(mine) - shown} more" if len(mine) > shown else ""
    return f"{escaped(folder)} [skipped {len(mine)}: {listed}{more}]"


def _check_train_classes(train: list[Item], classes: list[str], class_root: Path, bad: list[tuple[Path, str]]) -> None:
    per_label = np.bincount([label for _, label in train], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(per_label == 0)]
    if empty:
        shown = EMPTY_CLASSES_SHOWN
        folders = ", ".join(_skipped_in(class_root / c, bad) for c in empty[:shown])
        more = f" and {len(empty) - shown} more ({len(empty)} of {len(classes)} classes)" if len(empty) > shown else ""
        elsewhere = _skipped_elsewhere(bad, [class_root / c for c in empty])
        raise DataError(
            f"no readable image in class folder(s) {folders}{more}; every class needs at least one "
            f"image with extension {', '.join(IMAGE_EXTENSIONS)}{elsewhere}"
        )


EMPTY_CLASSES_SHOWN = 5  # an error names a few folders and counts the rest: it stays one readable line


def _skipped_elsewhere(bad: list[tuple[Path, str]], folders: list[Path], shown: int = 3) -> str:
    """"; 4 other files were skipped: a.jpg (empty file (0 bytes)), ...": the unreadable files outside
    `folders`, which an error about those folders would otherwise leave unsaid."""
    others = [(p, r) for p, r in bad if not any(f in p.parents for f in folders)]
    if not others:
        return ""
    listed = ", ".join(f"{escaped(p)} ({printable(r)})" for p, r in others[:shown])
    more = f" and {len(others) - shown} more" if len(others) > shown else ""
    return f"; {len(others)} other files were skipped as unreadable: {listed}{more}"


def paths_by_label(items: Iterable[Item]) -> dict[int, list[Path]]:
    """Each label's paths, in the items' order: one pass over the items, O(N), not a scan per class."""
    by_label: dict[int, list[Path]] = {}
    for path, label in items:
        by_label.setdefault(label, []).append(path)
    return by_label


def stratified_split(items: list[Item], classes: list[str], val_split: float,
                     seed: int) -> tuple[list[Item], list[Item]]:
    """Splits (path, label) pairs into train and val class by class.

    Each class with n >= 2 images puts round(n * val_split) of them, but at least one and at most
    n - 1, into val; a single-image class stays in train. The shuffle of each class is seeded by
    (seed, class name), so adding a class does not reshuffle the others.

    Returns:
        (train, val) lists, each in the input order.
    """
    by_label = paths_by_label(items)
    in_val: set[Path] = set()
    for label, name in enumerate(classes):
        paths = sorted(by_label.get(label, []))
        if len(paths) < 2:
            continue
        n_val = min(max(round(len(paths) * val_split), 1), len(paths) - 1)
        rng = np.random.default_rng([seed, zlib.crc32(os.fsencode(name))])  # a name's bytes, UTF-8 or not
        in_val.update(paths[i] for i in rng.permutation(len(paths))[:n_val])
    return [it for it in items if it[0] not in in_val], [it for it in items if it[0] in in_val]


def _warn_thin_train(train: list[Item], val: list[Item], classes: list[str], val_split: float,
                     shown: int = 5) -> None:
    """Warns when --val-split leaves a class one training image although it had three or more."""
    kept = np.bincount([label for _, label in train], minlength=len(classes))
    held = np.bincount([label for _, label in val], minlength=len(classes))
    thin = [classes[i] for i in np.flatnonzero((kept == 1) & (kept + held >= 3))]
    if thin:
        names = ", ".join(thin[:shown]) + (f" and {len(thin) - shown} more" if len(thin) > shown else "")
        warnings.warn(f"--val-split {val_split:g} leaves one training image in {len(thin)} of {len(classes)} classes "
                      f"({names}): each class gives round(images x val-split) of its images to val; lower "
                      "--val-split, e.g. 0.2", DataWarning, stacklevel=3)


def _warn_bad_files(root: Path, bad: list[tuple[Path, str]], shown: int = 5) -> None:
    if not bad:
        return
    first = "; ".join(f"{escaped(_relative(p, root))} ({printable(reason)})" for p, reason in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    warnings.warn(f"skipped {len(bad)} bad file(s) in {escaped(root)}: {first}{more}", DataWarning, stacklevel=3)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _scan_split_layout(dirs: dict[str, Path], progress: bool, bad: list,
                       only: Collection[str] | None = None) -> tuple[list[str], dict[str, list[Item]]]:
    classes = _find_classes(dirs["train"], "split")
    for split in ("val", "test"):
        missing = _check_class_sets(dirs[split], classes) if split in dirs else []
        if missing:
            warnings.warn(f"{escaped(dirs[split])} has no folder for class(es) {', '.join(missing)}", DataWarning,
                          stacklevel=4)
    checked = [s for s in dirs if only is None or s in only]
    candidates = {s: _candidates(d, classes, bad if s in checked else []) for s, d in dirs.items()}
    readable = _keep_readable([it for s in checked for it in candidates[s]], progress, bad)
    ok = {p for p, _ in readable}
    splits = {s: [it for it in candidates[s] if it[0] in ok] if s in checked else candidates[s] for s in dirs}
    # An empty val/ or test/ (class folders without images) counts as absent, not as a 0-image split.
    splits = {s: items for s, items in splits.items() if items or s == "train"}
    if "train" in checked:
        _check_train_classes(splits["train"], classes, dirs["train"], bad)
    return classes, splits


def _scan_layout(root: Path, dirs: dict[str, Path] | None, progress: bool, bad: list,
                 only: Collection[str] | None = None) -> tuple[str, list[str], dict[str, list[Item]]]:
    """Returns (layout, classes, {split: readable items}) for the split or the flat layout (see
    scan_image_folder for `only`)."""
    if dirs is not None and (only is None or all(s in dirs for s in only)):
        return ("split", *_scan_split_layout(dirs, progress, bad, only))
    if dirs is not None:  # a split that must be carved out of train/: train is needed after all
        return ("split", *_scan_split_layout(dirs, progress, bad))
    classes = _find_classes(root, "flat")
    train = _keep_readable(_candidates(root, classes, bad), progress, bad)
    _check_train_classes(train, classes, root, bad)
    return "flat", classes, {"train": train}


def scan_image_folder(root: str | Path, val_split: float = 0.2, seed: int = 0, progress: bool = True,
                      only: Collection[str] | None = None) -> DatasetIndex:
    """Scans an image folder into classes and train/val[/test] lists, decoding every image once.

    Hidden files and folders (".*") and `__MACOSX` are ignored. Non-image files and images that
    cannot be decoded are skipped, recorded in `bad_files`, and summarized in one DataWarning.

    Args:
        root: The data folder, in the "split" or the "flat" layout (see the module docstring).
        val_split: Fraction of each class held out for validation when there is no val folder.
        seed: Seed of the stratified train/val split; the same seed gives the same split.
        progress: Show a progress bar while checking more than PROGRESS_MIN_IMAGES images.
        only: The splits a command reads (`eval --split val`: val). Where each has its own folder, only
            their images are checked and listed as bad; the others are listed unchecked. Default: all.

    Raises:
        DataError: Missing folder, fewer than two classes, a class without a readable training
            image, a val/test class that is not a train class, or val_split outside (0, 1).
    """
    root = Path(root).expanduser()
    _check_val_split(val_split)
    check_data_folder(root)
    bad: list[tuple[Path, str]] = []
    dirs = _split_dirs(root)
    try:  # the bad-file summary also explains a "no readable image" error, so it comes either way
        layout, classes, splits = _scan_layout(root, dirs, progress, bad, only)
    finally:
        _warn_bad_files(root, bad)
    if "val" not in splits:
        if layout == "split":
            warnings.warn(f"{escaped(root)} has no val images: holding out {val_split:.0%} of train", DataWarning,
                          stacklevel=2)
        splits["train"], splits["val"] = stratified_split(splits["train"], classes, val_split, seed)
        _warn_thin_train(splits["train"], splits["val"], classes, val_split)
    return DatasetIndex(root, layout, classes, splits["train"], splits["val"], splits.get("test"), bad)

