"""Stage 4 — summarize: an LLM turns each neuron's exemplar captions into candidate concepts.

Per layer, every caption text is first shortened to a concept label once (shared captions are asked once), then
each neuron is asked ``summarize.n_summaries`` times for one label summarising its (shortened) captions, in a
differently shuffled order each time. All requests of a round go to the backend in one ``chat`` call so it can run
them concurrently; an unusable answer is re-asked in the next round with the reason, up to
``summarize.max_attempts`` asks in all.

Every reply is kept in the ``llm`` item cache under the request's content key, so a re-run, a resumed run or another
run sharing the output folder asks the LLM only for what is missing, and loads it only then. Errors are not cached:
they are asked again next time. Token usage in the artifact counts each distinct reply the concepts rest on once
(cached or not): a neuron's usage covers its summaries and the shortenings of its captions, the layer's usage every
distinct reply of the run, so shortenings shared by several neurons appear in each of those neurons but once in the
total (a later run's usage joins it as :meth:`~dnd.artifacts.Concepts.merged_over` says). The manifest's counts say
what this run did: ``llm_requests`` sent to the LLM and the ``prompt_tokens`` / ``completion_tokens`` they cost,
replies read from the cache (``cache_hits``), re-asks after an unusable answer (``reasks``, sent or cached), unusable
answers by why they were rejected (``rejected_empty``, ``rejected_comma``, ``rejected_too_long``, ``rejected_copy``;
the last attempt's too) and ``failed_neurons``.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice

from pydantic import BaseModel, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from dnd.artifacts import Concepts, NeuronConcepts, TokenUsage
from dnd.backends.chat import ChatReply, ChatRequest
from dnd.config import SummarizeConfig
from dnd.errors import DnDError
from dnd.stages.base import NeuronWork, Requirement, StageContext, StageSpec
from dnd.store import content_key

SIMPLIFY_PROMPT = "simplify_caption.md"
SUMMARY_PROMPT = "summarize_concepts.md"

Messages = tuple[tuple[str, str], ...]

# --- prompt files ---------------------------------------------------------------------------------------------------

_SECTION = re.compile(r"^## (system|user|assistant|retry)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class ChatTemplate:
    """A prompt file: the chat turns of a request (system, worked examples, the question) and the re-ask turn.

    The file is sections opened by ``## system`` / ``## user`` / ``## assistant`` / ``## retry`` lines; text before
    the first section is a note for readers and is never sent. Turns are ``str.format`` templates whose only
    placeholders are ``{<subject>}`` (what is asked about), ``{max_words}`` and, in the retry turn, ``{reason}``.
    """

    name: str
    turns: Messages
    retry: str

    @classmethod
    def parse(cls, name: str, text: str, subject: str) -> ChatTemplate:
        """Read prompt file ``name`` (its ``text``); raise :class:`DnDError` naming the problem when malformed."""
        parts = _SECTION.split(text)
        sections = [(role, body.strip()) for role, body in zip(parts[1::2], parts[2::2], strict=True)]
        turns = tuple((role, body) for role, body in sections if role != "retry")
        retries = [body for role, body in sections if role == "retry"]
        roles = [role for role, _ in turns]
        conversation = roles[1:] if roles[:1] == ["system"] else roles
        alternates = all(role == ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(conversation))
        fix = f"fix prompts/{name} (the note at its top describes the format)"
        if not conversation or not alternates or len(conversation) % 2 == 0 or len(retries) != 1:
            raise DnDError(
                f"prompt {name}: expected an optional '## system' section, then '## user' and '## assistant' turns "
                f"alternating and ending with a '## user' turn, and one '## retry' section; {fix}"
            )
        if any(not body for _, body in sections):
            raise DnDError(f"prompt {name}: a section is empty; {fix}")
        for role, body in turns:
            _check_placeholders(name, role, body, {subject, "max_words"}, fix)
        _check_placeholders(name, "retry", retries[0], {"reason", "max_words"}, fix)
        if f"{{{subject}}}" not in turns[-1][1]:
            raise DnDError(f"prompt {name}: the last '## user' turn must contain the placeholder {{{subject}}}; {fix}")
        if "{reason}" not in retries[0]:
            raise DnDError(f"prompt {name}: the '## retry' section must contain the placeholder {{reason}}; {fix}")
        return cls(name, turns, retries[0])

    def messages(self, **values: object) -> Messages:
        """The request's ``(role, content)`` turns with the placeholders filled."""
        return tuple((role, body.format(**values)) for role, body in self.turns)

    def reask(self, **values: object) -> str:
        """The user turn that asks again after an unusable answer (``values`` include ``reason``)."""
        return self.retry.format(**values)


def _check_placeholders(name: str, role: str, body: str, allowed: set[str], fix: str) -> None:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(body) if field is not None}
    except ValueError as exc:
        raise DnDError(
            f"prompt {name}, '## {role}' section: {exc} (write a literal brace as {{{{ or }}}}); {fix}"
        ) from None
    unknown = sorted(fields - allowed)
    if unknown:
        raise DnDError(
            f"prompt {name}, '## {role}' section: unknown placeholder(s) {', '.join(unknown)}; "
            f"allowed there: {', '.join(sorted(allowed))}; {fix}"
        )


# --- answers ----------------------------------------------------------------------------------------------------

_OR = re.compile(r"\s+or\s+", re.IGNORECASE)
_QUOTES = "\"'`*“”‘’«»"
# A leading "Label:", "Concept label:", "Answer:" ... that models like to prepend (up to three words and a colon).
_PREFIX = re.compile(r"^(?:[a-z][\w-]*[ \t]*){1,3}:\s*", re.IGNORECASE)


def normalise_label(text: str) -> str:
    """``text``'s first non-empty line, stripped of quotes, a ``Label:``-style prefix and a trailing period, lower-case,
    single-spaced."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    previous = None
    while line != previous:  # the strips can uncover each other, e.g. '**Label:** "dog faces."'
        previous = line
        line = _PREFIX.sub("", line.strip().strip(_QUOTES).strip().rstrip("."))
    return " ".join(line.lower().split())


class ConceptAnswer(BaseModel):
    """An LLM answer as a concept label.

    Validate with ``context={"max_words": int, "copies": set[str]}``: ``copies`` are normalised descriptions the label
    may not merely repeat.
    """

    label: str

    @field_validator("label", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> str:
        return normalise_label(str(value))

    @field_validator("label")
    @classmethod
    def _check(cls, label: str, info: ValidationInfo) -> str:
        max_words, copies = info.context["max_words"], info.context["copies"]
        words = len(label.split())
        if not words:
            raise PydanticCustomError("empty", "it is empty")
        if "," in label:
            raise PydanticCustomError("comma", "it contains a comma, so it names several concepts instead of one")
        if words > max_words:
            raise PydanticCustomError(
                "too_long", "it has {words} words, more than {max_words}", {"words": words, "max_words": max_words}
            )
        if label in copies:
            raise PydanticCustomError("copy", "it repeats a single description instead of summing up what they share")
        return label


#: Why an answer can be rejected (the error types of :class:`ConceptAnswer`), counted per run in the manifest.
REJECTIONS = ("empty", "comma", "too_long", "copy")


def parse_answer(text: str, max_words: int, copies: frozenset[str] = frozenset()) -> tuple[str | None, str | None]:
    """``(label, None)`` when ``text`` is a usable concept label, else ``(None, reason)``."""
    label, rejection = _validate(text, max_words, copies)
    return label, rejection and rejection[1]


def _validate(text: str, max_words: int, copies: frozenset[str]) -> tuple[str | None, tuple[str, str] | None]:
    """``(label, None)``, or ``(None, (kind, reason))`` with ``kind`` one of :data:`REJECTIONS`."""
    try:
        answer = ConceptAnswer.model_validate({"label": text}, context={"max_words": max_words, "copies": copies})
    except ValidationError as exc:
        error = exc.errors()[0]
        return None, (error["type"], error["msg"])
    return answer.label, None


# --- asking the LLM -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ask:
    """One answer wanted: the request's messages as first asked, its sample index and what it may not repeat."""

    messages: Messages
    sample: int = 0
    copies: frozenset[str] = frozenset()


@dataclass
class _Outcome:
    """How an ask ended: a valid ``label``, a still-invalid answer (``rejected``) or a transport ``error``."""

    label: str | None = None
    rejected: str | None = None
    error: str | None = None
    keys: list[str] = field(default_factory=list)  # cache keys of every reply the ask consumed


class _Asker:
    """Answers asks round by round: the ``llm`` cache first, one ``chat`` call for the rest, re-asking bad answers."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.config = ctx.config.summarize
        self.identity = ctx.backends.concept_llm_identity()
        self.cache = ctx.cache("llm")
        self.usage: dict[str, TokenUsage] = {}  # cache key → usage of that reply
        self.counts: Counter[str] = Counter()

    def resolve(self, asks: list[_Ask], template: ChatTemplate) -> list[_Outcome]:
        """One outcome per ask; ``template`` words the re-ask turns."""
        outcomes = [_Outcome() for _ in asks]
        conversations = [ask.messages for ask in asks]
        pending = list(range(len(asks)))
        for attempt in range(1, self.config.max_attempts + 1):
            if not pending:
                break
            requests = [
                ChatRequest(
                    conversations[i],
                    self.config.temperature,
                    self.config.max_new_tokens,
                    asks[i].sample,
                    tuple(self.config.stop),
                )
                for i in pending
            ]
            if attempt > 1:
                self.counts["reasks"] += len(requests)
            still_pending = []
            for i, (key, reply) in zip(pending, self._answer(requests), strict=True):
                outcome = outcomes[i]
                outcome.keys.append(key)
                if reply.error is not None or reply.text is None:
                    outcome.error = reply.error or "the LLM returned no text"
                    continue
                outcome.label, rejection = _validate(reply.text, self.config.max_words, asks[i].copies)
                if rejection is None:
                    continue
                kind, reason = rejection
                self.counts[f"rejected_{kind}"] += 1
                if attempt == self.config.max_attempts:
                    outcome.rejected = f"{reply.text.strip()!r}: {reason}"
                    continue
                retry = template.reask(reason=reason, max_words=self.config.max_words)
                conversations[i] = (*conversations[i], ("assistant", reply.text), ("user", retry))
                still_pending.append(i)
            pending = still_pending
        return outcomes

    def resolve_spread(self, asks: list[_Ask], template: ChatTemplate) -> list[_Outcome]:
        """:meth:`resolve`, each process of a job resolving its share of ``asks`` (re-asks included); every process
        gets every outcome and the usage of every reply. Asks that send the same request (e.g. two neurons with the
        same captions) go to the same process, so a request is never sent twice."""
        groups: dict[tuple[Messages, int], list[int]] = {}
        for index, ask in enumerate(asks):
            groups.setdefault((ask.messages, ask.sample), []).append(index)

        def resolve_share(mine: list[list[int]]) -> list[list[tuple[_Outcome, dict[str, TokenUsage]]]]:
            outcomes = iter(self.resolve([asks[index] for group in mine for index in group], template))
            return [
                [(outcome, {key: self.usage[key] for key in outcome.keys}) for outcome in islice(outcomes, len(group))]
                for group in mine
            ]

        resolved: list[_Outcome | None] = [None] * len(asks)
        for group, results in zip(
            groups.values(), self.ctx.ranks.map(list(groups.values()), resolve_share), strict=True
        ):
            for index, (outcome, usage) in zip(group, results, strict=True):
                resolved[index] = outcome
                self.usage.update(usage)
        return [outcome for outcome in resolved if outcome is not None]

    def _answer(self, requests: list[ChatRequest]) -> list[tuple[str, ChatReply]]:
        """``(cache key, reply)`` per request: cached replies, the missing ones from ``chat`` calls of
        ``summarize.requests_per_call`` requests each (which the backend runs concurrently)."""
        keys = [self._key(request) for request in requests]
        replies: dict[str, ChatReply] = {}
        missing: dict[str, ChatRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            if key in replies or key in missing:
                continue
            cached = self.cache.get(key)
            if cached is None:
                missing[key] = request
            else:
                replies[key] = ChatReply(**cached)
                self.counts["cache_hits"] += 1
        pending, size = list(missing), self.config.requests_per_call
        calls = [pending[i : i + size] for i in range(0, len(pending), size)]
        for call in calls:  # each call's replies are cached when it returns: a killed run loses one call's at most
            llm = self.ctx.backends.concept_llm  # built only now: a fully cached run never loads the model
            fresh = llm.chat([missing[key] for key in call])
            if len(fresh) != len(call):
                raise RuntimeError(f"concept LLM {llm.name} returned {len(fresh)} replies for {len(call)} requests")
            for key, reply in zip(call, fresh, strict=True):
                self.counts["llm_requests"] += 1
                self.counts["prompt_tokens"] += reply.prompt_tokens
                self.counts["completion_tokens"] += reply.completion_tokens
                if reply.error is None and reply.text is not None:  # failures are asked again on the next run
                    usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
                    self.cache.put(key, {"text": reply.text, **usage})
                replies[key] = reply
        for key, reply in replies.items():
            self.usage[key] = TokenUsage(
                prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens, requests=1
            )
        return [(key, replies[key]) for key in keys]

    def _key(self, request: ChatRequest) -> str:
        return content_key(
            {
                "llm": self.identity,
                "messages": [list(turn) for turn in request.messages],
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
                "sample": request.sample,
                "stop": list(request.stop),
            }
        )

    def total_usage(self, keys: list[str]) -> TokenUsage:
        """Usage of the distinct replies among ``keys``."""
        return sum((self.usage[key] for key in dict.fromkeys(keys)), TokenUsage())


# --- the stage ------------------------------------------------------------------------------------------------------


def compute(ctx: StageContext, work: NeuronWork) -> tuple[Concepts, dict[str, int]]:
    """Summarise the captions of ``work.neurons`` of one layer into candidate concepts; return them with the counts
    of what this run asked."""
    simplify = ChatTemplate.parse(SIMPLIFY_PROMPT, ctx.prompt_text(SIMPLIFY_PROMPT), subject="caption")
    summary = ChatTemplate.parse(SUMMARY_PROMPT, ctx.prompt_text(SUMMARY_PROMPT), subject="captions")
    config = ctx.config.summarize
    asker = _Asker(ctx)
    # 1. Each neuron's captions (the kernel has carried neurons that failed upstream over as failed).
    captions = {
        neuron: [caption.text for caption in entry.captions] for neuron, entry in work.entries["caption"].items()
    }
    # 2. Shorten every distinct caption once; a caption that could not be shortened is used as it is.
    shortened: dict[str, _Outcome] = {}
    if config.simplify_captions:
        distinct = list(dict.fromkeys(text for texts in captions.values() for text in texts))
        asks = [_Ask(simplify.messages(caption=text, max_words=config.max_words)) for text in distinct]
        shortened = dict(zip(distinct, asker.resolve_spread(asks, simplify), strict=True))
    descriptions = {
        neuron: [(shortened[text].label or text) if config.simplify_captions else text for text in texts]
        for neuron, texts in captions.items()
    }
    # 3. N summary asks per neuron, the descriptions shuffled with a seed of their own for each sample.
    asks, owners = [], []
    for neuron, items in descriptions.items():
        copies = _lone_descriptions(captions[neuron], items)
        for sample in range(config.n_summaries):
            listing = _numbered(_shuffled(items, ctx.config.seed, work.layer, neuron, sample))
            asks.append(_Ask(summary.messages(captions=listing, max_words=config.max_words), sample, copies))
            owners.append(neuron)
    # 4-6. All summaries of the layer asked together, round by round (cache first, re-asks with the reason).
    outcomes: dict[int, list[_Outcome]] = {neuron: [] for neuron in captions}
    for neuron, outcome in zip(owners, asker.resolve_spread(asks, summary), strict=True):
        outcomes[neuron].append(outcome)
    # 7. Per neuron: distinct labels in order, background variants, usage; no valid label at all = failed.
    results = []
    for neuron, texts in captions.items():
        own_shortenings = [shortened[text] for text in dict.fromkeys(texts)] if config.simplify_captions else []
        simplified = descriptions[neuron] if config.simplify_captions else []
        results.append(_neuron_concepts(neuron, simplified, own_shortenings, outcomes[neuron], asker, config))
    # 8. The layer's concepts, and what this run asked.
    artifact = Concepts(
        layer=work.layer, llm=asker.identity, neurons=results, usage=asker.total_usage(list(asker.usage))
    )
    counted = ("llm_requests", "cache_hits", "reasks", "prompt_tokens", "completion_tokens")
    counts = {name: asker.counts[name] for name in (*counted, *(f"rejected_{kind}" for kind in REJECTIONS))}
    return artifact, counts


def _neuron_concepts(
    neuron: int,
    simplified: list[str],
    shortenings: list[_Outcome],
    summaries: list[_Outcome],
    asker: _Asker,
    config: SummarizeConfig,
) -> NeuronConcepts:
    """One neuron's entry from the outcomes of its caption shortenings and its summary asks."""
    concepts: list[str] = []
    for label in dict.fromkeys(outcome.label for outcome in summaries if outcome.label):
        concepts.append(label)
        if label.split()[-1] in config.background_suffixes:
            concepts.append(f"{label} background")
    rejected = [f"shortening: {outcome.rejected}" for outcome in shortenings if outcome.rejected]
    rejected += [f"summary: {outcome.rejected}" for outcome in summaries if outcome.rejected]
    keys = [key for outcome in [*shortenings, *summaries] for key in outcome.keys]
    return NeuronConcepts(
        neuron=neuron,
        failed=None if concepts else _failure_reason(summaries),
        simplified_captions=simplified,
        concepts=list(dict.fromkeys(concepts)),
        rejected=rejected,
        usage=asker.total_usage(keys),
    )


def _failure_reason(summaries: list[_Outcome]) -> str:
    errors = [outcome.error for outcome in summaries if outcome.error]
    if len(errors) == len(summaries):
        return f"every LLM request failed: {errors[0]}"
    if errors:
        return (
            f"no valid concept in {len(summaries)} summaries: {len(errors)} failed requests (first: {errors[0]}), "
            f"the rest rejected"
        )
    return f"no valid concept in {len(summaries)} summaries: every answer was rejected"


def _lone_descriptions(captions: list[str], descriptions: list[str]) -> frozenset[str]:
    """Normalised texts (a caption, the description made of it, or one of the alternatives a text offers as
    "goldfish or tench") that only one exemplar has.

    Repeating one of them describes a single image, not what the exemplars share; repeating a description several
    exemplars share is allowed (it may well be their common concept). Alternatives count on their own because a
    classifier's caption names its top classes that way: "tabby" is shared by exemplars captioned "tabby" and
    "tiger cat or tabby", and is a fair summary of them.
    """
    per_exemplar = [
        {label for text in texts for label in (normalise_label(text), *_alternatives(text))}
        for texts in zip(captions, descriptions, strict=True)
    ]
    counts = Counter(text for texts in per_exemplar for text in texts)
    return frozenset(text for text, count in counts.items() if count == 1)


def _alternatives(text: str) -> list[str]:
    """The normalised parts of a text that offers alternatives ("goldfish or tench" → goldfish, tench)."""
    return [normalise_label(part) for part in _OR.split(text)]


def _shuffled(items: list[str], seed: int, layer: str, neuron: int, sample: int) -> list[str]:
    """``items`` in an order that depends only on the seed, the layer, the neuron and the sample index."""
    rng = random.Random(int(content_key({"seed": seed, "layer": layer, "neuron": neuron, "sample": sample}), 16))
    order = list(items)
    rng.shuffle(order)
    return order


def _numbered(items: list[str]) -> str:
    return "\n".join(f"{i}. {text}" for i, text in enumerate(items, start=1))


def _extra_inputs(ctx: StageContext) -> dict[str, object]:
    # The shuffles depend on the seed; the LLM's name keeps another model's (or an injected one's) concepts apart.
    return {"seed": ctx.config.seed, "llm": ctx.backends.concept_llm_identity()}


SPEC = StageSpec(
    name="summarize",
    version=2,  # 2: the alternatives of a caption ("goldfish or tench") count as descriptions of their own
    needs=("caption",),
    config_sections=("summarize",),
    artifact=Concepts,
    compute=compute,
    requires={"caption": Requirement(lambda entry: entry.captions, "no captions for this neuron")},
    prompts=(SIMPLIFY_PROMPT, SUMMARY_PROMPT),
    extra_inputs=_extra_inputs,
)
