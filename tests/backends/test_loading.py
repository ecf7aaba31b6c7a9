"""Every backend that loads from the Hugging Face hub fails fast offline, naming the model and the fix."""

from __future__ import annotations

import os

import pytest
import torch

from dnd.backends.captioners import BlipCaptioner
from dnd.backends.embedders import ClipEmbedder, SentenceEmbedder
from dnd.backends.generators import DiffusersGenerator
from dnd.backends.llms import LocalConceptLLM
from dnd.config import CaptionConfig, SynthesizeConfig
from dnd.errors import ModelLoadError

CPU = torch.device("cpu")
BACKENDS = {
    "captioner": (lambda model: BlipCaptioner(CaptionConfig(model=model), CPU), "set caption.model to a local folder"),
    "generator": (
        lambda model: DiffusersGenerator(SynthesizeConfig(model=model), CPU),
        "set synthesize.model to a local folder",
    ),
    "chat model": (lambda model: LocalConceptLLM(model, CPU, 1), "set summarize.local_model to a downloaded"),
    "clip": (lambda model: ClipEmbedder("clip", model, CPU, 1), "--embedder minilm"),
    "sentence embedder": (lambda model: SentenceEmbedder("mpnet", model, CPU, 1), "--embedder minilm"),
}


@pytest.mark.parametrize("role", list(BACKENDS))
def test_an_uncached_hub_model_offline_is_a_clear_error(role, no_network):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest sets it before huggingface_hub reads it (at import)
    build, fix = BACKENDS[role]
    with pytest.raises(ModelLoadError) as error:
        build("dnd-tests/no-such-model")
    assert (no_network.connections, no_network.slept_s) == (0, 0)  # offline: not even one try
    message = str(error.value)
    assert "could not load the" in message and "'dnd-tests/no-such-model'" in message
    assert fix in message.lower()


def test_hub_unavailable_answers_in_seconds(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    from dnd.backends.loading import hub_unavailable

    assert hub_unavailable(str(tmp_path)) is None  # a local folder loads without the hub
    assert "HF_HUB_OFFLINE is set" in hub_unavailable("openai/clip-vit-base-patch16")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    reason = hub_unavailable("openai/clip-vit-base-patch16")
    assert (no_network.connections, no_network.slept_s) == (1, 0)
    assert reason.startswith("the Hugging Face hub (huggingface.co) is unreachable (network is unreachable")
    assert "neither a folder nor a Hugging Face model id" in hub_unavailable("/no/such/folder")
