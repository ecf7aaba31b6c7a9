"""Fixtures for backend tests: a scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends.openai_server import ScriptedServer, serve


@pytest.fixture
def openai_server() -> Iterator[ScriptedServer]:
    """A fresh server per test, stopped at teardown; script it with ``openai_server.script(...)``."""
    with serve() as running:
        yield running
