"""The text-embedding spaces an ``--embedder`` names, loaded lazily, and the note on any that stood in for another."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from rich.markup import escape

from dnd.cli.console import wrapped_err, wrapped_out
from dnd.config import EmbedConfig

if TYPE_CHECKING:
    from dnd.backends.embedders import TextEmbedder

DEFAULT_EMBEDDER = "minilm"


def embedders(specs: list[str] | None, device: str) -> Iterator[TextEmbedder]:
    """The ``--embedder`` models, each loaded only when reached, so bad input fails before any model loads."""
    from dnd.backends.embedders import load_text_embedder
    from dnd.devices import resolve_device

    resolved = resolve_device(device)
    for spec in dict.fromkeys(specs or [DEFAULT_EMBEDDER]):
        yield load_text_embedder(spec, EmbedConfig(), resolved)


def evaluation_spaces(specs: list[str] | None, device: str) -> Iterable[TextEmbedder]:
    """The ``--embedder`` spaces of an evaluation; by default the paper's (see :class:`PaperTextSpaces`)."""
    from dnd.backends.embedders import PaperTextSpaces
    from dnd.devices import resolve_device

    if specs:
        return embedders(specs, device)
    return PaperTextSpaces(EmbedConfig(), resolve_device(device))


def report_stand_ins(spaces: Iterable[TextEmbedder]) -> None:
    """Say, after the results, which paper spaces MiniLM stood in for and why (nothing if none)."""
    from dnd.backends.embedders import OFFLINE_SPACE, PaperTextSpaces

    if not isinstance(spaces, PaperTextSpaces) or not spaces.missing:
        return
    names = " and ".join(spaces.missing)
    wrapped_out.print(
        f"[bold yellow]note:[/] {OFFLINE_SPACE} stands in for {names}, which could not be loaded here: its numbers "
        f"are not comparable with published {names} numbers. Run where the model(s) load (Hugging Face hub access "
        f"once, or embed.clip_model / embed.sentence_model set to local folders).",
        highlight=False,
    )
    for space, reason in spaces.missing.items():
        wrapped_err.print(f"[yellow]{space}:[/] {escape(reason)}", highlight=False)
