"""Shared fixtures: offline environment, seeding, tiny networks and image folders built on the fly."""

from __future__ import annotations

import os

# Before any Hugging Face import: an accidental download must fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from dnd.backends.targets import TargetNetwork
from tests.helpers import ChannelMixer, to_tensor, write_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def shared() -> Path:
    """The read-only ``../shared`` folder; tests that need it skip with a reason when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared is not beside this checkout (looked for {SHARED})")
    return SHARED


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every outgoing connection fail at once, as on a machine without hub access."""

    def refuse(*_args, **_kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def mixer() -> TargetNetwork:
    return TargetNetwork("channel-mixer", ChannelMixer(), to_tensor)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "probe"
    write_images(folder, 12)
    return folder
