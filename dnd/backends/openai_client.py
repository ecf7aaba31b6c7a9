"""Plumbing shared by every backend that talks to an OpenAI-compatible server (concept LLM, vision captioner).

The API key is read from the environment variable the config names, and only from there. It is sent as the bearer
token and nowhere else: not in names, cache keys, replies or error messages. A server on this machine (localhost,
127.0.0.1, ::1: llama.cpp, vLLM, Ollama and the like) usually needs no key, so there a missing variable is allowed.

Failures never raise: a request whose retries are used up (HTTP 429 / 5xx, timeouts, dropped connections) or that
fails for good (another HTTP error, a malformed answer) becomes a :class:`ChatReply` with ``error`` set.

Newer OpenAI models (the o-series, the gpt-5 family) reject ``max_tokens`` (they take ``max_completion_tokens``, which
also bounds their hidden reasoning), any ``temperature`` but the default, and ``stop``. A client learns this from the
first HTTP 400 that names the parameter and from then on sends every request adapted (see
:meth:`OpenAIClient.adapted`); the request that met the 400 is sent again at once. Nothing is configured, and callers
and their cache keys never see the difference: a model that takes the parameters gets exactly the requests it always
got.
"""

from __future__ import annotations

import itertools
import os
import threading
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
#: Request parameters a model may reject, which a client then adapts (see :meth:`OpenAIClient.adapted`).
ADAPTABLE_PARAMETERS = ("max_tokens", "temperature", "stop")


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
        #: The :data:`ADAPTABLE_PARAMETERS` this server's model has rejected so far.
        self.rejected: set[str] = set()
        self._lock = threading.Lock()

    def complete_all(self, calls: Sequence[Mapping[str, Any]]) -> list[ChatReply]:
        """Run ``calls``, ``concurrency`` at a time: one reply per call, in order.

        Each call holds the keyword arguments of ``chat.completions.create`` except ``model``.
        """
        if not calls:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(calls))) as pool:
            return list(pool.map(self.complete, calls))

    def complete(self, call: Mapping[str, Any]) -> ChatReply:
        """One chat completion, retried with exponential backoff on 429, 5xx, timeouts and connection errors.

        An HTTP 400 naming a parameter the model rejects is not a failure: the request is sent again at once,
        adapted (:meth:`adapted`). ``attempts`` of the reply counts every request sent.
        """
        import openai

        budget = self.config.max_retries + 1
        failures = 0
        for attempt in itertools.count(1):
            detail = ""
            request = self.adapted(call)
            try:
                response = self._client.chat.completions.create(model=self.config.model, **request)
            except openai.APITimeoutError:
                failure, retry = f"timed out (timeout_s={self.config.timeout_s})", True
            except openai.APIConnectionError:
                failure, retry = f"could not connect to {self.label}", True
            except openai.APIStatusError as exc:
                if exc.status_code == 400 and self._learn_rejection(exc.body, request):
                    continue
                failure, detail = f"HTTP {exc.status_code}", self._server_message(exc.body)
                retry = exc.status_code == 429 or exc.status_code >= 500
            except ValueError:  # the body is not JSON (a shape other than a completion is caught in _reply)
                return ChatReply(None, error="malformed reply (not JSON)", attempts=attempt)
            else:
                return self._reply(response, attempt)
            failures += 1
            if not retry or failures == budget:
                plural = "s" if attempt > 1 else ""
                return ChatReply(None, error=f"{failure} after {attempt} attempt{plural}{detail}", attempts=attempt)
            time.sleep(self.config.retry_backoff_s * 2 ** (failures - 1))

    def adapted(self, call: Mapping[str, Any]) -> dict[str, Any]:
        """``call`` as this model takes it: once ``max_tokens`` was rejected, the limit goes as
        ``max_completion_tokens``, raised by ``reasoning_tokens`` for the reasoning that such models do first and
        count against it; once ``temperature`` was rejected, it is left out (the model samples at its default); once
        ``stop`` was rejected, it is left out too (stage 4 reads an answer's first line anyway)."""
        request = dict(call)
        if "max_tokens" in self.rejected and "max_tokens" in request:
            request["max_completion_tokens"] = request.pop("max_tokens") + self.config.reasoning_tokens
        for parameter in ("temperature", "stop"):
            if parameter in self.rejected:
                request.pop(parameter, None)
        return request

    def _learn_rejection(self, body: object, sent: Mapping[str, Any]) -> bool:
        """Remember the parameter an HTTP 400 ``body`` says the model rejects. True when the request ``sent`` still
        carried it (so it is worth sending again, adapted; a concurrent request may have taught the client already),
        False for any other 400, so a model that rejects the adapted request too fails instead of looping."""
        if not isinstance(body, dict):
            return False
        param, message = body.get("param"), str(body.get("message") or "")
        named = [name for name in ADAPTABLE_PARAMETERS if param == name or f"'{name}'" in message]
        if not named or named[0] not in sent or "support" not in message.lower():  # "Unsupported parameter: ..."
            return False
        with self._lock:
            self.rejected.add(named[0])
        return True

    def _reply(self, response: Any, attempt: int) -> ChatReply:
        choices = getattr(response, "choices", None) or [None]
        content = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(content, str):
            return ChatReply(None, error="malformed reply (no message content)", attempts=attempt)
        if not content and getattr(choices[0], "finish_reason", None) == "length" and "max_tokens" in self.rejected:
            return ChatReply(
                None,
                error=f"{self.config.model} used all its completion tokens before answering (its reasoning counts "
                f"against them): raise openai.reasoning_tokens (now {self.config.reasoning_tokens}) in the config "
                f"section that names the model",
                attempts=attempt,
            )
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
