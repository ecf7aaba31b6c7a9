"""Loading pretrained models with one clear error when a model cannot be had (no hub access, wrong folder)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dnd.errors import ModelLoadError

T = TypeVar("T")


def load_model(role: str, model: str, fix: str, loader: Callable[[], T]) -> T:
    """Return ``loader()``; if it fails to find or read ``model``, raise :class:`ModelLoadError` naming ``fix``.

    ``role`` says what the model is for ("captioning model", ...). transformers and diffusers raise OSError for
    missing files or an unreachable hub, ValueError or KeyError for a folder that holds another kind of model.
    """
    try:
        return loader()
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0].rstrip(".") if text else type(exc).__name__
        raise ModelLoadError(f"could not load the {role} {model!r} ({reason}). {fix}") from None
