"""Plumbing shared by every backend that talks to an OpenAI-compatible server (concept LLM, vision captioner).

The API key is read from the environment variable the config names, and only from there. It is sent as the bearer
token and nowhere else: not in names, cache keys, replies or error messages. A server on this machine (localhost,
127.0.0.1, ::1: llama.cpp, vLLM, Ollama and the like) usually needs no key, so there a missing variable is allowed.

Failures never raise: a request whose retries are used up (HTTP 429 / 5xx, timeouts, dropped connections) or that
fails for good (another HTTP error, a malformed answer) becomes a :class:`ChatReply` with ``error`` set.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from dnd.backends.chat import ChatReply
from dnd.config import OpenAIConfig
from dnd.errors import DnDError

OPENAI_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# The openai client insists on some key; servers on this machine ignore it.
_NO_KEY = "no-key"


def server_label(config: OpenAIConfig) -> str:
    """``model``, or ``model@host[:port]`` for a server other than api.openai.com (never a key or a password)."""
    if config.base_url is None:
        return config.model
    url = urlsplit(config.base_url)
    if url.hostname == urlsplit(OPENAI_BASE_URL).hostname:
        return config.model
    return f"{config.model}@{url.hostname}" + (f":{url.port}" if url.port else "")


def read_api_key(config: OpenAIConfig) -> str | None:
    """The key from ``$<config.api_key_env>``; None for a server on this machine without one.

    Raises :class:`DnDError` naming the variable when a remote server's key is missing.
    """
    key = os.environ.get(config.api_key_env, "").strip()
    if key:
        return key
    if config.base_url is not None and urlsplit(config.base_url).hostname in LOCAL_HOSTS:
        return None
    server = urlsplit(config.base_url or OPENAI_BASE_URL).hostname
    raise DnDError(
        f"no API key for {server}: set the environment variable {config.api_key_env} "
        f"(or point api_key_env at the variable that holds it)"
    )


class OpenAIClient:
    """Chat completions against one server and model, with retries and a bounded pool of concurrent requests."""

    def __init__(self, config: OpenAIConfig):
        import openai

        self.config = config
        self.label = server_label(config)
        self._key = read_api_key(config)
        # Retries are counted here rather than by the client, so a reply can say how many attempts it took.
        self._client = openai.OpenAI(
            api_key=self._key or _NO_KEY,
            base_url=config.base_url or OPENAI_BASE_URL,
            timeout=config.timeout_s,
            max_retries=0,
        )

    def complete_all(self, calls: Sequence[Mapping[str, Any]]) -> list[ChatReply]:
        """Run ``calls``, ``concurrency`` at a time: one reply per call, in order.

        Each call holds the keyword arguments of ``chat.completions.create`` except ``model``.
        """
        if not calls:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(calls))) as pool:
            return list(pool.map(self.complete, calls))

    def complete(self, call: Mapping[str, Any]) -> ChatReply:
        """One chat completion, retried with exponential backoff on 429, 5xx, timeouts and connection errors."""
        import openai

        attempts = self.config.max_retries + 1
        for attempt in itertools.count(1):
            detail = ""
            try:
                response = self._client.chat.completions.create(model=self.config.model, **call)
            except openai.APITimeoutError:
                failure, retry = f"timed out (timeout_s={self.config.timeout_s})", True
            except openai.APIConnectionError:
                failure, retry = f"could not connect to {self.label}", True
            except openai.APIStatusError as exc:
                failure, detail = f"HTTP {exc.status_code}", self._server_message(exc.body)
                retry = exc.status_code == 429 or exc.status_code >= 500
            except ValueError:  # the body is not JSON (a shape other than a completion is caught in _reply)
                return ChatReply(None, error="malformed reply (not JSON)", attempts=attempt)
            else:
                return self._reply(response, attempt)
            if not retry or attempt == attempts:
                plural = "s" if attempt > 1 else ""
                return ChatReply(None, error=f"{failure} after {attempt} attempt{plural}{detail}", attempts=attempt)
            time.sleep(self.config.retry_backoff_s * 2 ** (attempt - 1))

    @staticmethod
    def _reply(response: Any, attempt: int) -> ChatReply:
        choices = getattr(response, "choices", None) or [None]
        content = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(content, str):
            return ChatReply(None, error="malformed reply (no message content)", attempts=attempt)
        usage = getattr(response, "usage", None)
        return ChatReply(
            content,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            attempts=attempt,
        )

    def _server_message(self, body: object) -> str:
        """``": <the server's error message>"`` with the key blanked out, or "" when there is none."""
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message:
            return ""
        return ": " + (message.replace(self._key, "***") if self._key else message)
