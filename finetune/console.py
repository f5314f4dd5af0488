"""The consoles the commands print to, and the one way a user error ends a command."""
from __future__ import annotations

import errno
import functools
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from finetune import atomic
from finetune.errors import FinetuneError, Interrupted
from finetune.pathtext import printable
from finetune.quiet import quiet_lightning

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def setting_errors(error: ValidationError) -> list[str]:
    """One line per invalid setting: its flag, what is wrong, and the value given."""
    by_flag: dict[str, list[dict[str, Any]]] = {}
    for err in error.errors():
        # The field is enough: union members add their type names to loc, one error each.
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "settings"
        by_flag.setdefault(flag, []).append(err)
    lines = []
    for flag, errs in by_flag.items():
        if any(err["type"] == "missing" for err in errs):
            lines.append(f"{flag} is required (on the command line or in the recipe)")
            continue
        for value, messages in _messages_by_input(errs).items():
            text = _either(messages)
            lines.append(text if text.startswith(f"{flag} ") else f"{flag}: {text} (got {value})")
    return lines


def _messages_by_input(errs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each value given, with what is wrong with it (pydantic's "Value error, " prefix left out)."""
    out: dict[str, list[str]] = {}
    for err in errs:
        messages, message = out.setdefault(repr(err.get("input")), []), err["msg"].removeprefix("Value error, ")
        if message not in messages:
            messages.append(message)
    return out


def _either(messages: list[str]) -> str:
    """One sentence for a value each member of a union refused: "Input should be greater than 0 or 'auto'"."""
    lead = "Input should be "
    if len(messages) > 1 and all(m.startswith(lead) for m in messages):
        return lead + " or ".join(m.removeprefix(lead) for m in messages)
    return "; ".join(messages)


def user_errors(command: F | None = None, *, value_errors: bool = False) -> Any:
    """Decorates a command: a user error becomes one line per problem on stderr and exit status 2,
    not a traceback.

    User errors are FinetuneError and pydantic's ValidationError (a bad setting). Use it bare
    (`@user_errors`) or as `@user_errors(value_errors=True)` for commands whose library calls check
    option values with ValueError naming the choices (tta, formats, top-k...).
    """
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            settings = kwargs.get("settings")
            verbose = bool(kwargs.get("verbose") or (settings.get("verbose") if isinstance(settings, dict) else False))
            try:
                with _sigterm_stops(), _quiet_console(verbose):
                    return fn(*args, **kwargs)
            except ValidationError as e:  # a ValueError too: reported field by field
                lines = setting_errors(e)
            except FinetuneError as e:
                lines = [str(e)]
            except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: where it stopped, and 128 + the signal, as a shell
                signum = e.signal_number if isinstance(e, Interrupted) else int(signal.SIGINT)
                text = str(e) if isinstance(e, Interrupted) else "Stopped by Ctrl-C (SIGINT)"
                err_console.print(f"[yellow]{escape(printable(text))}[/yellow]", soft_wrap=True)
                raise typer.Exit(128 + signum) from None
            except ValueError as e:
                if not value_errors:
                    raise
                lines = [str(e)]
            except Exception as e:  # noqa: BLE001 - only a file that cannot be written is the user's to fix
                line = _unwritable(e)
                if line is None:
                    raise
                lines = [line]
            for line in lines:  # printable: a path that is not UTF-8 in a message shows its bytes as \xNN
                err_console.print(f"[red]Error:[/red] {escape(printable(line))}", soft_wrap=True)  # paths unbroken
            raise typer.Exit(2)

        return wrapper  # type: ignore[return-value]

    return decorate(command) if command is not None else decorate


def _unwritable(error: BaseException) -> str | None:
    """One line for an error the file system raised about a file (a full disk, a read-only folder, a file
    this user may not open), naming the file; None for any other error."""
    full = atomic.no_space(error)
    if full is not None:
        if str(full).startswith(f"[Errno {errno.ENOSPC}] no space left in "):  # atomic.full_disk's own words
            return full.strerror
        return atomic.full_disk(Path(full.filename or "."), 0).strerror if full.filename else str(full)
    if isinstance(error, OSError) and error.filename and error.errno == errno.EROFS:
        return f"cannot write {error.filename}: {error.strerror} (write elsewhere with --output)"
    if isinstance(error, OSError) and error.filename and error.errno in (errno.EACCES, errno.EPERM):
        return f"{error.strerror}: {error.filename}"  # reading or writing: the file system does not say which
    return None


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """For a command's life, SIGTERM stops it as Ctrl-C does (finetune.errors.Interrupted), so that it
    ends with its one line and its files whole instead of dying mid-write. Process-wide, so the
    command line sets it, never the library."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    stopped: list[object] = []  # SIGCHLD's handler when a SIGTERM came: put back on leaving

    def stop(signum: int, frame: object) -> None:
        # A SIGTERM sent to the process group stops the DataLoader workers too. torch's SIGCHLD handler
        # would raise "worker killed by signal" at whatever line the stopping command has reached (writing
        # its last files, say); the command is stopping, and says why, so a child's end is no news.
        stopped.append(signal.signal(signal.SIGCHLD, signal.SIG_DFL))
        raise Interrupted("Stopped by SIGTERM", signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stopped:  # torch installs its handler once a process: a command that ran to its end keeps it
            signal.signal(signal.SIGCHLD, stopped[0] if stopped[0] is not None else signal.SIG_DFL)


@contextmanager
def _quiet_console(verbose: bool) -> Iterator[None]:
    """For a command's life: Lightning's banners and the libraries' deprecation notices held back (unless
    `verbose`), and every warning shown as one yellow line on stderr, without Python's source line."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        where = f" ({category.__name__}, {filename}:{lineno})" if verbose else ""
        err_console.print(f"[yellow]Warning:[/yellow] {escape(printable(str(message)))}{escape(where)}", soft_wrap=True)

    with quiet_lightning(verbose), warnings.catch_warnings():
        warnings.showwarning = show
        yield
