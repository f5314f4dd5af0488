"""All-or-nothing writes: a file or a whole folder appears complete under its name, or not at all.

Everything is written under a temporary name in the same parent folder (same file system, so the
final step is a rename, not a copy), then renamed into place. A crash or kill -9 at any moment
leaves either the previous version or the new one, never a mix; at worst a hidden
`.NAME.tmp-*` folder or file is left beside it.
"""
from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from <fcntl.h> and <linux/fs.h>
_LEFTOVER = re.compile(r"\..+\.(tmp|old)-\d+-[0-9a-f]{8}")


def is_leftover(name: str) -> bool:
    """True for the name of a temporary file or folder made here (.NAME.tmp-PID-HEX, .NAME.old-PID-HEX)."""
    return _LEFTOVER.fullmatch(name) is not None


def _beside(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def staging_dir(final: Path) -> Path:
    """An empty hidden folder beside `final` (its parent is created) to build the new version in.

    Staging folders left beside `final` by a process that no longer runs (killed mid-write) are removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final)
    staged = _beside(final, "tmp")
    staged.mkdir()  # unlike tempfile.mkdtemp's 0700, the user's umask decides who may read the bundle
    return staged


@contextmanager
def replacing_dir(final: Path) -> Iterator[Path]:
    """Yields an empty staging folder; on success it replaces `final`, on any error it is deleted.

    Example:
        >>> with replacing_dir(Path("runs/x/model")) as out:  # doctest: +SKIP
        ...     (out / "config.json").write_text("{}")
    """
    staged = staging_dir(final)
    try:
        yield staged
        replace_dir(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _remove_abandoned(final: Path) -> None:
    for kind in ("tmp", "old"):
        for leftover in final.parent.glob(f".{final.name}.{kind}-*-*"):
            pid = leftover.name[len(f".{final.name}.{kind}-"):].split("-")[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


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
        aside = _beside(final, "old")
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


def write_text(path: Path, text: str, encoding: str | None = None, errors: str | None = None,
               newline: str | None = None) -> Path:
    """Writes `text` to a temporary file beside `path`, flushes it to disk, and renames it over `path`.

    `encoding`, `errors` and `newline` are open()'s (default: the locale's encoding, strict, "\\n" as os.linesep).
    """
    tmp = _beside(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as a plain open() gives
    try:
        with os.fdopen(fd, "w", encoding=encoding, errors=errors, newline=newline) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
