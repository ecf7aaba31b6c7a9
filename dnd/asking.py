"""Asking a chat model until its answer is usable, and stage 4's cached asks of the concept LLM.

:func:`ask_until_usable` is the re-ask loop: every conversation is asked, each answer is checked, and an unusable
one is asked again with the reason (the model's answer and a re-ask turn added to its conversation), round by round,
up to a number of asks. Stage 4 asks the concept LLM for labels through :class:`ConceptAsker`, which keeps every
reply in the ``llm`` item cache; the vision captioner (:class:`dnd.backends.captioners.OpenAIVisionCaptioner`) asks
for a list of captions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dnd.artifacts import TokenUsage
from dnd.backends.chat import ChatReply, ChatRequest
from dnd.batching import BatchFunction, EncodedCache, cached_map
from dnd.concept_answers import check_label
from dnd.store import content_key

if TYPE_CHECKING:
    from dnd.backends.llms import ConceptLLM
    from dnd.config import SummarizeConfig
    from dnd.distributed import Ranks
    from dnd.prompts import ChatTemplate, Messages
    from dnd.store import ItemCache

T = TypeVar("T")

#: A conversation as sent: ``(role, content)`` turns; content is text, or the parts of a request that carries images.
Conversation = tuple[tuple[str, Any], ...]
#: What a check makes of an answer: ``(value, None)`` when it is usable, else ``(None, (kind, reason))``: ``kind``
#: is counted as ``rejected_<kind>``, ``reason`` is sent back to the model.
Checked = tuple[Any, tuple[str, str] | None]


@dataclass
class Answer(Generic[T]):
    """How an ask ended: a usable ``value``, a still unusable last answer (``rejected``: the answer and ``reason``)
    or a transport ``error``."""

    value: T | None = None
    rejected: str | None = None
    reason: str | None = None
    error: str | None = None
    keys: list[str] = field(default_factory=list)  # the keys of every reply the ask consumed, as ``send`` named them


def ask_until_usable(
    conversations: Sequence[Conversation],
    send: Callable[[list[int], list[Conversation]], list[tuple[str, ChatReply]]],
    check: Callable[[int, str], Checked],
    reask: Callable[[str], str],
    max_attempts: int,
    counts: Counter[str] | None = None,
) -> list[Answer[Any]]:
    """One :class:`Answer` per conversation, asked round by round, at most ``max_attempts`` times each.

    ``send(indices, conversations)`` asks the conversations of ``indices`` (all of a round at once) and returns one
    ``(key, reply)`` per conversation, ``key`` naming the reply (its cache key; any name where nothing is cached).
    ``check(index, text)`` judges an answer (see :data:`Checked`) and ``reask(reason)`` words the user turn that asks
    again. A reply with an error (or no text) ends its ask. ``counts`` gains ``reasks`` (the requests after the first
    round) and ``rejected_<kind>`` per unusable answer, the last attempt's too.
    """
    counts = Counter() if counts is None else counts
    answers: list[Answer[Any]] = [Answer() for _ in conversations]
    asked = list(conversations)
    pending = list(range(len(asked)))
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        if attempt > 1:
            counts["reasks"] += len(pending)
        still_pending = []
        for i, (key, reply) in zip(pending, send(pending, [asked[i] for i in pending]), strict=True):
            answer = answers[i]
            answer.keys.append(key)
            if reply.error is not None or reply.text is None:
                answer.error = reply.error or "the LLM returned no text"
                continue
            answer.value, rejection = check(i, reply.text)
            if rejection is None:
                continue
            kind, reason = rejection
            counts[f"rejected_{kind}"] += 1
            if attempt == max_attempts:
                answer.rejected, answer.reason = f"{reply.text.strip()!r}: {reason}", reason
                continue
            asked[i] = (*asked[i], ("assistant", reply.text), ("user", reask(reason)))
            still_pending.append(i)
        pending = still_pending
    return answers


# --- the concept LLM's asks (stage 4) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """One concept label wanted: the request's messages as first asked, its sample index and the normalised
    descriptions the label may not merely repeat."""

    messages: Messages
    sample: int = 0
    copies: frozenset[str] = frozenset()


class ConceptAsker:
    """Asks the concept LLM for labels (``summarize.*`` settings): the ``llm`` cache first, one ``chat`` call per
    ``summarize.requests_per_call`` requests for the rest, re-asking unusable answers with the reason.

    ``llm()`` gives the loaded model, called only when a reply is missing (a fully cached run never loads it);
    ``identity`` is its name in the reply keys. ``usage`` holds the token usage of every reply seen (cache key →
    usage) and ``counts`` what was asked: ``llm_requests``, ``prompt_tokens`` and ``completion_tokens`` sent,
    ``cache_hits``, ``reasks`` and ``rejected_<kind>``.
    """

    def __init__(
        self, llm: Callable[[], ConceptLLM], identity: str, cache: ItemCache, config: SummarizeConfig, ranks: Ranks
    ) -> None:
        self.llm, self.identity, self.cache, self.config, self.ranks = llm, identity, cache, config, ranks
        self.usage: dict[str, TokenUsage] = {}
        self.counts: Counter[str] = Counter()
        self._replies = EncodedCache(cache, _stored_reply, lambda stored: ChatReply(**stored))

    def resolve(self, asks: list[Ask], template: ChatTemplate) -> list[Answer[str]]:
        """One answer per ask (its ``value`` the label); ``template`` words the re-ask turns."""
        config = self.config

        def send(indices: list[int], conversations: list[Conversation]) -> list[tuple[str, ChatReply]]:
            return self._answer(
                [
                    ChatRequest(messages, config.temperature, config.max_new_tokens, asks[i].sample, tuple(config.stop))
                    for i, messages in zip(indices, conversations, strict=True)
                ]
            )

        return ask_until_usable(
            [ask.messages for ask in asks],
            send,
            lambda i, text: check_label(text, config.max_words, asks[i].copies),
            lambda reason: template.reask(reason=reason, max_words=config.max_words),
            config.max_attempts,
            self.counts,
        )

    def resolve_spread(self, asks: list[Ask], template: ChatTemplate) -> list[Answer[str]]:
        """:meth:`resolve`, each process of a job resolving its share of ``asks`` (re-asks included); every process
        gets every answer and the usage of every reply. Asks that send the same request (e.g. two neurons with the
        same captions) go to the same process, so a request is never sent twice."""
        groups: dict[tuple[Messages, int], list[int]] = {}
        for index, ask in enumerate(asks):
            groups.setdefault((ask.messages, ask.sample), []).append(index)

        def resolve_share(mine: list[list[int]]) -> list[list[tuple[Answer[str], dict[str, TokenUsage]]]]:
            answers = iter(self.resolve([asks[index] for group in mine for index in group], template))
            return [
                [(answer, {key: self.usage[key] for key in answer.keys}) for answer in islice(answers, len(group))]
                for group in mine
            ]

        resolved: list[Answer[str] | None] = [None] * len(asks)
        for group, results in zip(groups.values(), self.ranks.map(list(groups.values()), resolve_share), strict=True):
            for index, (answer, usage) in zip(group, results, strict=True):
                resolved[index] = answer
                self.usage.update(usage)
        return [answer for answer in resolved if answer is not None]

    def _answer(self, requests: list[ChatRequest]) -> list[tuple[str, ChatReply]]:
        """``(cache key, reply)`` per request: cached replies, the missing ones from ``chat`` calls of
        ``summarize.requests_per_call`` requests each (which the backend runs concurrently); each call's replies are
        cached when it returns, so a killed run loses one call's at most."""
        keys = [reply_key(self.identity, request) for request in requests]
        request_of = dict(zip(keys, requests, strict=True))  # equal keys are equal requests

        def load() -> BatchFunction[ChatRequest, ChatReply]:
            llm = self.llm()  # built only now: a fully cached run never loads the model
            return BatchFunction(llm.chat, f"concept LLM {llm.name}", "replies", "requests")

        found = cached_map(self._replies, keys, request_of.__getitem__, load, self.config.requests_per_call)
        self.counts["cache_hits"] += found.hits
        for reply in (found.values[key] for key in found.fresh):
            self.counts["llm_requests"] += 1
            self.counts["prompt_tokens"] += reply.prompt_tokens
            self.counts["completion_tokens"] += reply.completion_tokens
        for key, reply in found.values.items():
            self.usage[key] = TokenUsage(
                prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens, requests=1
            )
        return [(key, found.values[key]) for key in keys]

    def total_usage(self, keys: list[str]) -> TokenUsage:
        """Usage of the distinct replies among ``keys``."""
        return sum((self.usage[key] for key in dict.fromkeys(keys)), TokenUsage())


def _stored_reply(reply: ChatReply) -> dict[str, Any] | None:
    """What the ``llm`` cache keeps of ``reply``: its text and token counts; nothing for a failure, which is asked
    again on the next run."""
    if reply.error is not None or reply.text is None:
        return None
    return {"text": reply.text, "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}


def reply_key(llm: str, request: ChatRequest) -> str:
    """The ``llm`` item-cache key of the reply of the model named ``llm`` to ``request``: everything that shapes it."""
    return content_key(
        {
            "llm": llm,
            "messages": [list(turn) for turn in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "sample": request.sample,
            "stop": list(request.stop),
        }
    )
