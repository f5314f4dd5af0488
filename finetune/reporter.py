"""Where a run's narration goes: the console for the command line, the `finetune` logger for the Python API.

`fit` and `tune` say what they decided and found (the data, the weights, the precision, the plan, one line per
epoch, the best figure, warnings) through a `Reporter`. The command line passes a `ConsoleReporter`; a
library call gets a `LogReporter` unless it passes another, so that a notebook, a server or a test is not
written to. Message text is rich console markup (`[yellow]`, escaped paths); a reporter that does not draw
it uses its plain text.

Example:
    >>> result = finetune.fit(config, reporter=ConsoleReporter())  # doctest: +SKIP
"""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from finetune.training.module import FinetuneModule

LOGGER = "finetune"
# A library adds no handler of its own but this one (the logging HOWTO, "Configuring Logging for a Library"):
# without it, Python's last-resort handler would print the warnings to stderr of every caller who has not
# configured logging. With `logging.basicConfig(level=logging.INFO)` the narration shows.
logging.getLogger(LOGGER).addHandler(logging.NullHandler())


@runtime_checkable
class Reporter(Protocol):
    """What a run says, by kind of message.

    Attributes:
        progress: Whether live progress bars may be drawn (they write to the terminal directly).
    """

    progress: bool

    def info(self, text: str, *, whole: bool = False) -> None:
        """A line of narration. `whole`: never broken at the console's width (it holds a path)."""

    def warning(self, text: str, *, label: str = "Warning: ", whole: bool = False) -> None:
        """Something the user should look at; on the console `label` leads it, in yellow."""

    def epoch(self, line: str) -> None:
        """The line of one finished epoch (metrics.csv's row)."""

    def table(self, table: Table) -> None:
        """A table: the search space or the summary of a study."""

    def plan(self, module: FinetuneModule, world_size: int = 1) -> None:
        """The plan before training: each layer group, its size, frozen or trainable, its LR."""


class ConsoleReporter:
    """Draws the narration on a rich console, as `finetune run` and `finetune tune` print it.

    Args:
        console: Where to print (default: stdout).
    """

    progress = True

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()

    def info(self, text: str, *, whole: bool = False) -> None:
        self.console.print(text, soft_wrap=whole)

    def warning(self, text: str, *, label: str = "Warning: ", whole: bool = False) -> None:
        self.console.print(f"[yellow]{label}{text}[/yellow]", soft_wrap=whole)

    def epoch(self, line: str) -> None:
        # Into a file or a pipe an epoch is one line whatever the width: a record.
        self.console.print(line, soft_wrap=not self.console.is_terminal)

    def table(self, table: Table) -> None:
        self.console.print(table)

    def plan(self, module: FinetuneModule, world_size: int = 1) -> None:
        from finetune.training.plan_table import print_plan

        print_plan(module, self.console, world_size)


class LogReporter:
    """Sends the narration, as plain text, to the `finetune` logger: lines at INFO, warnings at WARNING.

    Nothing shows unless the caller configures logging; the warnings of a run are also in its result
    (`RunResult.warnings`), so a caller who reads neither still has them. Python's `warnings` module is for
    calling code that should change (the logging HOWTO's rule); these are about the data and the run.
    """

    progress = False

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(LOGGER)

    def info(self, text: str, *, whole: bool = False) -> None:
        self.logger.info(plain(text))

    def warning(self, text: str, *, label: str = "Warning: ", whole: bool = False) -> None:
        self.logger.warning(plain(text))

    def epoch(self, line: str) -> None:
        self.logger.info(plain(line))

    def table(self, table: Table) -> None:
        self.logger.info(table_text(table))

    def plan(self, module: FinetuneModule, world_size: int = 1) -> None:
        from finetune.training.plan_table import print_plan

        console = _recording()
        print_plan(module, console, world_size)
        self.logger.info(console.export_text().rstrip())


class Recorder:
    """Passes every message on to `reporter` and keeps the warnings, for the result of the run.

    Args:
        reporter: Where the messages go.
    """

    def __init__(self, reporter: Reporter) -> None:
        self.reporter, self.progress = reporter, reporter.progress
        self.warnings: list[str] = []

    def info(self, text: str, *, whole: bool = False) -> None:
        self.reporter.info(text, whole=whole)

    def warning(self, text: str, *, label: str = "Warning: ", whole: bool = False) -> None:
        self.warnings.append(plain(text))
        self.reporter.warning(text, label=label, whole=whole)

    def epoch(self, line: str) -> None:
        self.reporter.epoch(line)

    def table(self, table: Table) -> None:
        self.reporter.table(table)

    def plan(self, module: FinetuneModule, world_size: int = 1) -> None:
        self.reporter.plan(module, world_size)


def as_reporter(reporter: Reporter | Console | None) -> Reporter:
    """`reporter` itself; a rich Console drawn on as the command line does; None: the `finetune` logger."""
    if reporter is None:
        return LogReporter()
    if isinstance(reporter, Console):
        return ConsoleReporter(reporter)
    if not isinstance(reporter, Reporter):
        raise TypeError(f"reporter: expected a Reporter (ConsoleReporter, LogReporter) or a rich Console, "
                        f"got {type(reporter).__name__}")
    return reporter


def plain(text: str) -> str:
    """The text of a console message without its markup."""
    return Text.from_markup(text).plain


def table_text(table: Table) -> str:
    """A rich table as plain text lines."""
    console = _recording()
    console.print(table)
    return console.export_text().rstrip()


def _recording() -> Console:
    """A console that writes nowhere and keeps what it printed as text (120 columns: a log line's width)."""
    return Console(record=True, file=io.StringIO(), width=120)
