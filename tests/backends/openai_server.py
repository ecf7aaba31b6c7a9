"""A scripted OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1 for tests of the real ``openai`` client.

Each request takes the next behaviour from a queue: the queue of the first ``match`` string found in the request's
last user message, else the general queue; when that queue is empty the server answers ``"echo: <last user
message>"``, so concurrent requests can be told apart by their answers. Behaviours:

- ``("ok", text)``: a normal completion whose ``usage`` counts words (prompt = all message words, completion = text
  words);
- ``("status", code)``: an error body with that HTTP status;
- ``("sleep", seconds)``: wait, then answer like an empty queue (a client with a shorter timeout gives up first);
- ``("hang", None)``: answer only when the server stops, so a client's timeout is certain whatever its length;
- ``("hold", (in_flight, total))``: wait until ``in_flight`` requests are being handled at once, or until ``total``
  requests have arrived (the last, smaller round), then :data:`HOLD_LINGER_S` more, then answer like an empty queue.
  The count is reached by construction, however slowly the client's threads start, and the linger leaves a client
  that sends more than it should the time to show it; after :data:`HOLD_TIMEOUT_S` it answers HTTP 504 naming the
  count it saw, so a client that never sends that many at once fails its test clearly instead of hanging;
- ``("raw", body)``: status 200 with ``body`` as the JSON content (e.g. ``"not json"``);
- ``("bad_key", None)``: HTTP 401 whose message quotes the bearer token back, as api.openai.com does.

A request for a model of the newer OpenAI families (:data:`REASONING_MODELS`: o-series, gpt-5) is first checked as
api.openai.com checks it: one that sends ``max_tokens``, a ``temperature`` other than 1, or ``stop``, gets HTTP 400
with api.openai.com's error body for it (one parameter at a time, in that order), without taking a behaviour.

A ``responder`` (a function of the request body) answers instead of the echo when no queue applies, after
``delay`` seconds: deterministic answers whatever order concurrent requests arrive in.

Every request is recorded (body, headers, start and end times) and :meth:`ScriptedServer.max_in_flight` says how
many overlapped. A request ends just before its answer is written, so a client that sends its next request only
after an answer never makes two requests overlap on the server's clock. Waits end early when the server stops, so
teardown never hangs on a sleeping handler.
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
#: How long a ``("hold", ...)`` request waits for the others before it gives up with HTTP 504.
HOLD_TIMEOUT_S = 30.0
#: How long held requests stay in flight once their count is reached: a correct client's peak is the count whatever
#: this is; a client that breaks its bound has this long to send more requests and be seen doing it.
HOLD_LINGER_S = 0.25
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
    #: Notified whenever a request arrives or ends; guards :attr:`_in_flight`.
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _in_flight: int = 0
    _hold_timed_out: bool = False

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
        with self._changed:
            self._in_flight += 1
            self._changed.notify_all()
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

    def end(self, record: Received) -> None:
        """Mark ``record`` answered (called once, just before its answer is written)."""
        if record.end:
            return
        record.end = time.monotonic()
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def hold(self, in_flight: int, total: int) -> int | None:
        """Wait until ``in_flight`` requests run at once or ``total`` have arrived; None, or the count seen at timeout.

        Once one hold has timed out, the others give up at once: the test has failed, and waiting again for each
        request would only make it slow to say so.
        """
        deadline = time.monotonic() + HOLD_TIMEOUT_S
        with self._changed:
            while self._in_flight < in_flight and len(self.received) < total and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self._hold_timed_out:
                    self._hold_timed_out = True
                    return self._in_flight
                self._changed.wait(min(left, 0.1))  # short waits: a stopping server is seen at once too
        self.wait(HOLD_LINGER_S)
        return None


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
            self._record = record
            try:
                self._respond(body, behaviour)
            finally:
                server.end(record)

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
            elif kind == "hang":
                server._stopping.wait()
                self._send(503, {"error": {"message": "the server stopped", "type": "test"}})
            elif kind == "hold":
                seen = server.hold(*value)
                if seen is None:
                    self._send(200, _completion(body, f"echo: {_last_user_text(body)}"))
                else:
                    message = f"held {HOLD_TIMEOUT_S:.0f} s with {seen} requests in flight, waiting for {value[0]}"
                    self._send(504, {"error": {"message": message, "type": "test"}})
            elif kind == "raw":
                self._send(200, value)
            elif kind == "reject":
                self._send(400, {"error": value})
            else:
                raise ValueError(f"unknown behaviour {kind!r}")

        def _send(self, status: int, payload: Any) -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            record = getattr(self, "_record", None)
            if record is not None:
                server.end(record)
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
