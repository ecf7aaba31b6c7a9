"""A scripted OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1 for tests of the real ``openai`` client.

Each request takes the next behaviour from a queue: the queue of the first ``match`` string found in the request's
last user message, else the general queue; when that queue is empty the server answers ``"echo: <last user
message>"``, so concurrent requests can be told apart by their answers. Behaviours:

- ``("ok", text)``: a normal completion whose ``usage`` counts words (prompt = all message words, completion = text
  words);
- ``("status", code)``: an error body with that HTTP status;
- ``("sleep", seconds)``: wait, then answer like an empty queue (a client with a shorter timeout gives up first);
- ``("raw", body)``: status 200 with ``body`` as the JSON content (e.g. ``"not json"``);
- ``("bad_key", None)``: HTTP 401 whose message quotes the bearer token back, as api.openai.com does.

A request for a model of the newer OpenAI families (:data:`REASONING_MODELS`: o-series, gpt-5) is first checked as
api.openai.com checks it: one that sends ``max_tokens``, a ``temperature`` other than 1, or ``stop``, gets HTTP 400
with api.openai.com's error body for it (one parameter at a time, in that order), without taking a behaviour.

A ``responder`` (a function of the request body) answers instead of the echo when no queue applies, after
``delay`` seconds: deterministic answers whatever order concurrent requests arrive in.

Every request is recorded (body, headers, start and end times) and :meth:`ScriptedServer.max_in_flight` says how
many overlapped. Waits end early when the server stops, so teardown never hangs on a sleeping handler.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = tuple[str, Any]

MAX_BODY_BYTES = 32 * 1024 * 1024
#: Model-name prefixes of the families that reject ``max_tokens``, a non-default ``temperature`` and ``stop``.
REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")


@dataclass
class Received:
    """One request as the server saw it."""

    body: dict[str, Any]
    headers: dict[str, str]
    start: float
    end: float = 0.0

    @property
    def last_user_message(self) -> str:
        return _last_user_text(self.body)


@dataclass
class ScriptedServer:
    """The running server: script it with :meth:`script`, read :attr:`received` afterwards."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    responder: Callable[[dict[str, Any]], str] | None = None
    delay: float = 0.0
    _queues: dict[str | None, deque[Behaviour]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *behaviours: Behaviour, match: str | None = None) -> None:
        """Queue ``behaviours`` for requests whose last user message contains ``match`` (None: any request)."""
        with self._lock:
            self._queues.setdefault(match, deque()).extend(behaviours)

    def max_in_flight(self) -> int:
        """The largest number of requests the server was handling at the same moment."""
        events = sorted([(r.start, 1) for r in self.received] + [(r.end, -1) for r in self.received])
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        return peak

    def receive(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[Received, Behaviour | None]:
        """Record a request and take its behaviour (None: answer with the echo)."""
        record = Received(body, headers, time.monotonic())
        text = _last_user_text(body)
        with self._lock:
            self.received.append(record)
            rejection = _rejection(body)
            if rejection is not None:
                return record, ("reject", rejection)
            for match, queue in self._queues.items():
                if match is not None and match in text and queue:
                    return record, queue.popleft()
            general = self._queues.get(None)
            return record, general.popleft() if general else None

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)


def _rejection(body: dict[str, Any]) -> dict[str, Any] | None:
    """api.openai.com's HTTP 400 error for a parameter a reasoning model does not take, or None."""
    if not str(body.get("model", "")).startswith(REASONING_MODELS):
        return None
    if "max_tokens" in body:
        message = (
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
        )
        return {
            "message": message,
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
    if body.get("temperature", 1) != 1:
        message = (
            f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. Only the "
            f"default (1) value is supported."
        )
        return {
            "message": message,
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_value",
        }
    if "stop" in body:
        return {
            "message": "Unsupported parameter: 'stop' is not supported with this model.",
            "type": "invalid_request_error",
            "param": "stop",
            "code": "unsupported_parameter",
        }
    return None


def _last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return _message_text(users[-1]) if users else ""


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    prompt_words = sum(len(_message_text(m).split()) for m in body.get("messages", []))
    completion_words = len(text.split())
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test-model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words,
            "total_tokens": prompt_words + completion_words,
        },
    }


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # vision requests: text parts between image parts
        return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return str(content or "")


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
            length = int(self.headers.get("content-length", 0))
            if not self.path.endswith("/chat/completions") or length > MAX_BODY_BYTES:
                self._send(404 if length <= MAX_BODY_BYTES else 413, {"error": {"message": "not served here"}})
                return
            body = json.loads(self.rfile.read(length))
            record, behaviour = server.receive(body, {k.lower(): v for k, v in self.headers.items()})
            try:
                self._respond(body, behaviour)
            finally:
                record.end = time.monotonic()

        def _respond(self, body: dict[str, Any], behaviour: Behaviour | None) -> None:
            if behaviour is None and server.responder is not None:
                server.wait(server.delay)
                behaviour = ("ok", server.responder(body))
            kind, value = behaviour or ("sleep", 0.0)
            if kind == "ok":
                self._send(200, _completion(body, value))
            elif kind == "status":
                self._send(value, {"error": {"message": f"scripted status {value}", "type": "test"}})
            elif kind == "bad_key":  # like api.openai.com, quote the key back in the error
                key = self.headers.get("authorization", "").removeprefix("Bearer ")
                self._send(401, {"error": {"message": f"Incorrect API key provided: {key}", "type": "test"}})
            elif kind == "sleep":
                server.wait(value)
                self._send(200, _completion(body, f"echo: {_last_user_text(body)}"))
            elif kind == "raw":
                self._send(200, value)
            elif kind == "reject":
                self._send(400, {"error": value})
            else:
                raise ValueError(f"unknown behaviour {kind!r}")

        def _send(self, status: int, payload: Any) -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before the answer was ready

        def log_message(self, *_args: Any) -> None:
            pass  # keep pytest output clean

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def serve(responder: Callable[[dict[str, Any]], str] | None = None, delay: float = 0.0) -> Iterator[ScriptedServer]:
    """A server on a free port of 127.0.0.1, answering from a daemon thread until the block ends."""
    scripted = ScriptedServer(responder=responder, delay=delay)
    httpd = _Server(("127.0.0.1", 0), _handler_for(scripted))
    scripted.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield scripted
    finally:
        scripted._stopping.set()
        httpd.shutdown()
        httpd.server_close()
