"""Progress bars for long work (rich), written to stderr so they never mix with a command's output."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dnd.distributed import is_main_process

T = TypeVar("T")
_console = Console(stderr=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` while showing a progress bar labelled ``description`` (in the main process of a job only)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console, transient=False, disable=not is_main_process()) as progress:
        yield from progress.track(items, total=total, description=description)


def note(message: str) -> None:
    """One line on stderr beside the progress bars (a retried batch, a resumed stage)."""
    _console.print(f"[yellow]{message}[/]", highlight=False)
