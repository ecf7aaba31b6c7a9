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
from collections import Counter

from dnd.artifacts import Concepts, NeuronConcepts
from dnd.asking import Answer, Ask, ConceptAsker
from dnd.concept_answers import REJECTIONS, normalise_label
from dnd.config import SummarizeConfig
from dnd.prompts import ChatTemplate
from dnd.stages.base import NeuronWork, Requirement, StageContext, StageSpec
from dnd.store import content_key

SIMPLIFY_PROMPT = "simplify_caption.md"
SUMMARY_PROMPT = "summarize_concepts.md"

_OR = re.compile(r"\s+or\s+", re.IGNORECASE)


def compute(ctx: StageContext, work: NeuronWork) -> tuple[Concepts, dict[str, int]]:
    """Summarise the captions of ``work.neurons`` of one layer into candidate concepts; return them with the counts
    of what this run asked."""
    simplify = ChatTemplate.parse(SIMPLIFY_PROMPT, ctx.prompt_text(SIMPLIFY_PROMPT), "caption", ("max_words",))
    summary = ChatTemplate.parse(SUMMARY_PROMPT, ctx.prompt_text(SUMMARY_PROMPT), "captions", ("max_words",))
    config = ctx.config.summarize
    backends = ctx.backends
    asker = ConceptAsker(
        lambda: backends.concept_llm, backends.concept_llm_identity(), ctx.cache("llm"), config, ctx.ranks
    )
    # 1. Each neuron's captions (the kernel has carried neurons that failed upstream over as failed).
    captions = {
        neuron: [caption.text for caption in entry.captions] for neuron, entry in work.entries["caption"].items()
    }
    # 2. Shorten every distinct caption once; a caption that could not be shortened is used as it is.
    shortened: dict[str, Answer[str]] = {}
    if config.simplify_captions:
        distinct = list(dict.fromkeys(text for texts in captions.values() for text in texts))
        asks = [Ask(simplify.messages(caption=text, max_words=config.max_words)) for text in distinct]
        shortened = dict(zip(distinct, asker.resolve_spread(asks, simplify), strict=True))
    descriptions = {
        neuron: [(shortened[text].value or text) if config.simplify_captions else text for text in texts]
        for neuron, texts in captions.items()
    }
    # 3. N summary asks per neuron, the descriptions shuffled with a seed of their own for each sample.
    asks, owners = [], []
    for neuron, items in descriptions.items():
        copies = _lone_descriptions(captions[neuron], items)
        for sample in range(config.n_summaries):
            listing = _numbered(_shuffled(items, ctx.config.seed, work.layer, neuron, sample))
            asks.append(Ask(summary.messages(captions=listing, max_words=config.max_words), sample, copies))
            owners.append(neuron)
    # 4-6. All summaries of the layer asked together, round by round (cache first, re-asks with the reason).
    outcomes: dict[int, list[Answer[str]]] = {neuron: [] for neuron in captions}
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
    shortenings: list[Answer[str]],
    summaries: list[Answer[str]],
    asker: ConceptAsker,
    config: SummarizeConfig,
) -> NeuronConcepts:
    """One neuron's entry from the outcomes of its caption shortenings and its summary asks."""
    concepts: list[str] = []
    for label in dict.fromkeys(outcome.value for outcome in summaries if outcome.value):
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


def _failure_reason(summaries: list[Answer[str]]) -> str:
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
