"""Loading pretrained models with one clear error when a model cannot be had (no hub access, wrong folder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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


#: Seconds to wait for a TCP connection to the hub before calling it unreachable.
HUB_CONNECT_TIMEOUT_S = 3.0


def hub_unavailable(model: str) -> str | None:
    """Why ``model`` cannot be loaded quickly here, or None when it can (probably).

    A local folder, or a hub id whose ``config.json`` is in the local Hugging Face cache, can be loaded. Any other
    hub id needs the hub: with ``HF_HUB_OFFLINE`` set, or no TCP connection to the hub's host within
    :data:`HUB_CONNECT_TIMEOUT_S`, it cannot. Checking first spares a caller with a fallback the minutes
    ``huggingface_hub`` spends retrying an unreachable host before it gives up. Behind a proxy the check is skipped.
    """
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants, try_to_load_from_cache

    if Path(model).expanduser().is_dir():
        return None
    try:
        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return None
    except ValueError:  # not a valid repo id, so not a hub model either
        return f"{model} is neither a folder nor a Hugging Face model id"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return f"the Hugging Face hub ({endpoint.hostname}) is unreachable ({exc}) and it is not in the local cache"
    return None
