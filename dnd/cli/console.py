"""Where the command line prints, and how a user's mistake is shown: one clear message, no traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from dnd.errors import DnDError

if TYPE_CHECKING:
    from dnd.compare.readers import LabelSet

# The pipeline commands soft-wrap, so the folders they print stay whole and copyable when output is not a terminal;
# the label-set commands (compare, evaluate, clip-dissect) word-wrap their prose at the terminal's width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
wrapped_out = Console()
wrapped_err = Console(stderr=True)

#: Unparsed rows listed per file (the rest are counted).
SHOWN_WARNINGS = 10


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a :class:`DnDError` as one clear message (no traceback) and exit with status 2; as a decorator, around
    a whole command."""
    try:
        yield
    except DnDError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def warn_unparsed(label_set: LabelSet) -> None:
    """List on stderr the rows of ``label_set``'s files that did not parse (the first :data:`SHOWN_WARNINGS`)."""
    if not label_set.warnings:
        return
    wrapped_err.print(
        f"[yellow]{len(label_set.warnings)} row(s) of {label_set.source} did not parse:[/]", highlight=False
    )
    for warning in label_set.warnings[:SHOWN_WARNINGS]:
        wrapped_err.print(f"  {escape(warning)}", highlight=False)
    if len(label_set.warnings) > SHOWN_WARNINGS:
        wrapped_err.print(f"  … and {len(label_set.warnings) - SHOWN_WARNINGS} more", highlight=False)
