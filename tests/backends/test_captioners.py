"""Captioners: BLIP on a tiny random model saved to disk, names that follow the generation settings, load errors."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dnd.backends.captioners import BlipCaptioner, build_captioner, captioner_name
from dnd.config import CaptionConfig
from dnd.errors import DnDError
from tests.tiny_models import BLIP_VOCAB, tiny_blip, tiny_blip2

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


def random_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(count)]


def test_blip_captions_a_batch_deterministically(blip_folder):
    config = CaptionConfig(model=str(blip_folder), max_new_tokens=6)
    captioner = BlipCaptioner(config, "cpu")
    images = random_images(3)

    captions = captioner.caption(images)

    assert len(captions) == 3
    for caption in captions:
        words = caption.split()
        assert caption == caption.strip() and words
        assert set(words) <= set(BLIP_VOCAB) - {"[PAD]", "[CLS]", "[SEP]", "[DEC]"}  # special tokens skipped
        assert len(words) <= 6
    assert captioner.caption(images) == captions
    assert BlipCaptioner(config, "cpu").caption(images[1:]) == captions[1:]  # a fresh load, a smaller batch
    assert captioner.caption([]) == []


def test_blip2_is_chosen_by_the_model_type(tmp_path):
    config = CaptionConfig(model=str(tiny_blip2(tmp_path)), max_new_tokens=6, min_new_tokens=2)
    captioner = BlipCaptioner(config, "cpu")

    captions = captioner.caption(random_images(2))

    assert type(captioner.model).__name__ == "Blip2ForConditionalGeneration"
    assert len(captions) == 2
    for caption in captions:  # letters and spaces only: the <image> and </s> tokens are skipped
        assert 1 <= len(caption) <= 6 and set(caption) <= set(string.ascii_lowercase + " ")


def test_name_holds_every_setting_that_changes_the_text(blip_folder):
    config = CaptionConfig(model=str(blip_folder))
    captioner = build_captioner(config, "cpu", prompts_dir=PROMPTS)
    assert isinstance(captioner, BlipCaptioner)
    assert (
        captioner.name
        == captioner_name(config, prompts_dir=PROMPTS)
        == f"blip:{blip_folder}:max_new_tokens=32,min_new_tokens=5,num_beams=1"
    )
    names = {
        captioner_name(config.model_copy(update=change), prompts_dir=PROMPTS)
        for change in [{}, {"max_new_tokens": 8}, {"min_new_tokens": 1}, {"num_beams": 3}, {"model": "other"}]
    }
    assert len(names) == 5
    assert captioner_name(config.model_copy(update={"batch_size": 2}), prompts_dir=PROMPTS) == captioner.name


def test_a_folder_holding_another_model_type_is_rejected(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    with pytest.raises(DnDError, match=r"is a 'bert' model; caption.backend=blip needs a BLIP or BLIP-2"):
        BlipCaptioner(CaptionConfig(model=str(tmp_path)), "cpu")


def test_openai_backend_needs_its_key(monkeypatch):
    monkeypatch.delenv("DND_TEST_MISSING_KEY", raising=False)
    config = CaptionConfig(backend="openai", openai={"api_key_env": "DND_TEST_MISSING_KEY"})
    with pytest.raises(DnDError, match="DND_TEST_MISSING_KEY"):
        build_captioner(config, "cpu", prompts_dir=PROMPTS)
