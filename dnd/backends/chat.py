"""Chat requests and replies: what stage 4 asks a concept LLM, and what any chat backend (an in-process model, the
OpenAI-compatible client) answers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make. ``sample`` tells repeated asks of the same messages apart (and seeds them).

    The answer ends at the first of the ``stop`` strings once it has begun (leading white space does not count), and
    leaves the stop string out, as OpenAI's ``stop`` does.
    """

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: system / user / assistant
    temperature: float
    max_tokens: int
    sample: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class ChatReply:
    """The answer to a :class:`ChatRequest`; ``error`` is set (and ``text`` None) when every retry failed."""

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    attempts: int = field(default=1)
