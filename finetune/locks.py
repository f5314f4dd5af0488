"""Claiming a folder for one process: two commands can never write into the same run, bundle or eval folder.

A claim is an exclusive `flock` on a lock file, held for as long as the command writes. The kernel
releases it when the process ends, however it ends (kill -9 included), so a lock left by a crash is
never mistaken for a live one: only a held lock refuses. Checking that a folder is empty and then
creating it is not a claim (two processes both see it empty); taking the lock first and checking
after is.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from finetune.errors import FinetuneError

LOCK_NAME = ".finetune.lock"  # inside a run or eval folder; ignored when a folder's emptiness is judged


class FolderInUseError(FinetuneError):
    """Another process holds the claim on a folder."""


def _holder(path: Path) -> str:
    """The process id written in a lock file, as a phrase ('process 1234'), or '' when unreadable."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().split()[0])
        return f"process {pid}"
    return ""


@contextlib.contextmanager
def claim(lock_path: Path, what: str) -> Iterator[None]:
    """Holds an exclusive lock on `lock_path` (created, with its parent folders) for the block's duration.

    The lock file is removed on leaving. A process that opened it just before is not fooled: after
    locking, the path must still name the locked file, or the lock is taken again on the new one.

    Args:
        lock_path: The lock file.
        what: How the error names the claimed thing, e.g. "--output runs/x".

    Raises:
        FolderInUseError: Another live process holds the lock.
    """
    import fcntl  # POSIX only; imported here so that the package still imports where it is missing

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _holder(lock_path)
            instead = "" if what.startswith("--resume") else " or choose another folder"
            raise FolderInUseError(f"{what} is in use by another finetune command"
                                   f"{f' ({holder})' if holder else ''}; wait for it to end{instead}") from None
        if _still_named(fd, lock_path):
            break
        os.close(fd)  # removed by its last holder between our open and our lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # still held here, so no one else can be holding this name now
        os.close(fd)


def _still_named(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def claimed_folder(folder: Path, what: str, created: bool = False) -> Iterator[None]:
    """Holds `folder` (made if absent) for one command: its lock file inside, for the block's duration.

    A folder made for the command (`created`, or absent until now) is removed again when the block
    fails before anything was written into it.

    Raises:
        FinetuneError: `folder` is a file.
        FolderInUseError: Another live process holds it.
    """
    if folder.exists() and not folder.is_dir():
        raise FinetuneError(f"{what} is a file; give a folder")
    created = created or not folder.exists()
    try:
        with claim(folder / LOCK_NAME, what):
            yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        raise


def contents(folder: Path) -> list[str]:
    """The names in a claimed folder, sorted, its lock file left out."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)
