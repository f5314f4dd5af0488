"""All-or-nothing writes: a file or a whole folder appears complete under its name, or not at all.

Everything is written under a temporary name in the same parent folder (same file system, so the
final step is a rename, not a copy), then renamed into place. A crash or kill -9 at any moment
leaves either the previous version or the new one, never a mix; at worst a hidden
`.NAME.tmp-*` folder or file is left beside it.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from <fcntl.h> and <linux/fs.h>
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")
# Temporary names of version 0.1's writers (tempfile.mkstemp beside a checkpoint; fixed names beside
# config.yaml and metrics.csv): a run it started and a kill interrupted may still hold them.
_OLDER_LEFTOVER = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp|\.(?P<fixed>config\.yaml|metrics\.csv)\.tmp")


def is_leftover(name: str) -> bool:
    """True for the name of a temporary file or folder made here (.NAME.tmp-PID-HEX, .NAME.old-PID-HEX)."""
    return _LEFTOVER.fullmatch(name) is not None


def temporary_path(final: Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside `final` (same folder, so the final step is a rename): .NAME.KIND-PID-HEX."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def staging_dir(final: Path) -> Path:
    """An empty hidden folder beside `final` (its parent is created) to build the new version in.

    Staging folders left beside `final` by a process that no longer runs (killed mid-write) are removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final.parent, of=final.name)
    staged = temporary_path(final)
    staged.mkdir()  # unlike tempfile.mkdtemp's 0700, the user's umask decides who may read the bundle
    return staged


@contextmanager
def replacing_dir(final: Path, needed: int = 0) -> Iterator[Path]:
    """Yields an empty staging folder; on success it replaces `final`, on any error it is deleted.

    `needed`: about how many bytes the folder will hold, for the message of a full disk.

    Example:
        >>> with replacing_dir(Path("runs/x/model")) as out:  # doctest: +SKIP
        ...     (out / "config.json").write_text("{}")
    """
    staged = staging_dir(final)
    try:
        yield staged
        replace_dir(staged, final)
    except BaseException as e:
        written = sum(f.stat().st_size for f in staged.rglob("*") if f.is_file()) if staged.is_dir() else 0
        shutil.rmtree(staged, ignore_errors=True)
        if no_space(e):
            raise full_disk(final, written, needed) from e
        raise


def remove_abandoned(folder: Path, of: str | None = None) -> list[str]:
    """Removes the temporary files and folders in `folder` whose writing process no longer runs
    (killed mid-write); those of live processes stay. `of`: only those made for that name.

    For folders several processes write in at once (the caches). Returns the names removed.
    """
    removed = []
    for entry in _entries(folder):
        match = _LEFTOVER.fullmatch(entry.name)
        if match is None or (of is not None and match["name"] != of) or _alive(int(match["pid"])):
            continue
        _remove(entry)
        removed.append(entry.name)
    return removed


def remove_leftovers(folder: Path, names: Collection[str]) -> list[str]:
    """Removes what writers killed mid-write left in `folder` for the files `names` (those a run writes
    there): this version's temporary files and folders whose process no longer runs, and version 0.1's
    temporary names. Anything else in the folder, a live writer's files included, stays.

    Returns the names removed.
    """
    removed = []
    for entry in _entries(folder):
        new, older = _LEFTOVER.fullmatch(entry.name), _OLDER_LEFTOVER.fullmatch(entry.name)
        if new is not None:
            abandoned = new["name"] in names and not _alive(int(new["pid"]))
        else:
            abandoned = older is not None and (older["name"] or older["fixed"]) in names
        if abandoned:
            _remove(entry)
            removed.append(entry.name)
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def replace_dir(staged: Path, final: Path) -> None:
    """Puts the folder `staged` at `final`, replacing whatever folder was there, and removes the old one.

    Linux swaps the two folders in one step (renameat2 RENAME_EXCHANGE). Elsewhere the old folder is
    renamed aside first, so for the moment between two renames neither version is at `final`.
    """
    if not final.exists():
        os.rename(staged, final)
        return
    if not _exchange(staged, final):
        aside = temporary_path(final, "old")
        os.rename(final, aside)
        os.rename(staged, final)
        staged = aside
    shutil.rmtree(staged)  # now holds the previous version


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths on Linux; False where the call or the file system lacks it."""
    try:
        renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # no C library handle to ask (Windows)
        return False
    if renameat2 is None:
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextmanager
def open_replacing(path: Path, mode: str = "w", needed: int = 0, **kwargs: object) -> Iterator[IO]:
    """Yields a file open for writing under a temporary name beside `path`; on success the data is
    flushed to disk and renamed over `path`, on any error the temporary file is removed.

    `needed`: about how many bytes the file will take, for the message of a full disk.

    Example:
        >>> with open_replacing(Path("runs/x/metrics.csv"), newline="") as f:  # doctest: +SKIP
        ...     f.write("epoch\n0\n")
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:  # "x": a new file, never someone else's
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if no_space(e):
            raise full_disk(path, written, needed) from e
        raise


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(error: BaseException) -> OSError | None:
    """The "no space left" (or over quota) error in `error`'s chain of causes, as an OSError, if any.

    Libraries that write through Python file objects (torch.save) raise their own error with the
    OSError as its context; those that write natively (safetensors) only say it in their message.
    """
    seen, texts = set(), [os.strerror(code) for code in _NO_SPACE]
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return error
        if any(text in str(error) for text in texts):
            return OSError(errno.ENOSPC, str(error))
        error = error.__cause__ or error.__context__
    return None


def full_disk(path: Path, written: int = 0, needed: int = 0) -> OSError:
    """An ENOSPC error whose message names the folder, the space the file needs (about `needed` bytes, or
    more than the `written` it took before the disk was full) and the space free now."""
    folder, mb = Path(path).parent, 2**20
    try:
        free = f"{shutil.disk_usage(folder).free / mb:.1f} MB free"
    except OSError:
        free = "free space unknown"
    need = (f"it needs about {needed / mb:.1f} MB, " if needed else
            f"it needs more than {written / mb:.1f} MB, " if written else "")
    return OSError(errno.ENOSPC, f"no space left in {folder} writing {Path(path).name} ({need}{free}): free some "
                                 "space there or write elsewhere", str(path))


def write_text(path: Path, text: str, encoding: str | None = None, errors: str | None = None,
               newline: str | None = None) -> Path:
    """Writes `text` to a temporary file beside `path`, flushes it to disk, and renames it over `path`.

    `encoding`, `errors` and `newline` are open()'s (default: the locale's encoding, strict, "\\n" as os.linesep).
    """
    with open_replacing(path, encoding=encoding, errors=errors, newline=newline) as f:
        f.write(text)
    return path
