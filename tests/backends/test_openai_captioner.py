"""The OpenAI vision captioner against the scripted server: one request per batch, JSON-list answers, one re-ask."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dnd.backends.captioners import OpenAIVisionCaptioner, build_captioner, captioner_name
from dnd.config import CaptionConfig, OpenAIConfig
from dnd.errors import DnDError
from tests.backends.openai_server import ScriptedServer

KEY_ENV = "DND_TEST_OPENAI_KEY"
PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-vision")


def vision_config(server: ScriptedServer) -> CaptionConfig:
    openai = OpenAIConfig(base_url=server.base_url, model="vision-model", api_key_env=KEY_ENV, retry_backoff_s=0.01)
    return CaptionConfig(backend="openai", max_new_tokens=10, openai=openai)


def images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (12, 16 + i, 3), dtype=np.uint8)) for i in range(count)]


def sent_images(body: dict) -> list[Image.Image]:
    """The images of a request body's user message, decoded from their data URLs."""
    parts = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    prefix = "data:image/png;base64,"
    assert all(p["image_url"]["url"].startswith(prefix) for p in parts)
    return [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].removeprefix(prefix)))) for p in parts]


def test_one_request_carries_the_whole_batch(openai_server):
    openai_server.script(("ok", '["a striped cat", " a red car ", "grass"]'))
    config = vision_config(openai_server)
    captioner = build_captioner(config, "cpu", prompts_dir=PROMPTS)
    batch = images(3)

    captions = captioner.caption(batch)

    assert captions == ["a striped cat", "a red car", "grass"]
    [request] = openai_server.received
    assert [np.asarray(image).tolist() for image in sent_images(request.body)] == [
        np.asarray(image).tolist() for image in batch
    ]
    assert (request.body["model"], request.body["max_tokens"], request.body["temperature"]) == ("vision-model", 42, 0)
    assert "exactly 3 strings" in request.last_user_message
    assert isinstance(captioner, OpenAIVisionCaptioner)
    assert captioner.name == captioner_name(config, prompts_dir=PROMPTS)
    assert captioner.name.startswith(f"openai-vision:vision-model@127.0.0.1:{openai_server.port}:max_new_tokens=10,")
    assert captioner.caption([]) == []


def test_an_unusable_answer_is_asked_again_with_the_reason(openai_server):
    openai_server.script(("ok", '["only one"]'), ("ok", '```json\n["a dog", "a tree"]\n```'))
    captioner = build_captioner(vision_config(openai_server), "cpu", prompts_dir=PROMPTS)

    assert captioner.caption(images(2)) == ["a dog", "a tree"]

    first, second = (r.body["messages"] for r in openai_server.received)
    assert second[:2] == first
    assert second[2] == {"role": "assistant", "content": '["only one"]'}
    assert second[3]["content"].startswith("That answer cannot be used: it has 1 captions for 2 images.")


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        (["not json", "still not json"], "it is not valid JSON"),
        ([json.dumps({"captions": ["a", "b"]}), json.dumps(["a", ""])], "it is not a JSON list of non-empty strings"),
    ],
)
def test_a_batch_without_a_usable_answer_raises(openai_server, answers, reason):
    openai_server.script(*[("ok", answer) for answer in answers])
    captioner = build_captioner(vision_config(openai_server), "cpu", prompts_dir=PROMPTS)

    with pytest.raises(DnDError, match=f"even when asked again \\({reason}"):
        captioner.caption(images(2))
    assert len(openai_server.received) == 2


def test_a_failed_request_raises_with_the_reason(openai_server):
    openai_server.script(*[("status", 503)] * 6)
    captioner = build_captioner(vision_config(openai_server), "cpu", prompts_dir=PROMPTS)

    with pytest.raises(DnDError, match="HTTP 503 after 6 attempts"):
        captioner.caption(images(1))


def test_a_model_that_rejects_max_tokens_and_temperature_captions_after_adapting(openai_server):
    config = vision_config(openai_server)
    config = config.model_copy(update={"openai": config.openai.model_copy(update={"model": "o4-mini"})})
    openai_server.script(("ok", '["a striped cat", "grass"]'), ("ok", '["a red car"]'))
    captioner = build_captioner(config, "cpu", prompts_dir=PROMPTS)

    assert captioner.caption(images(2)) == ["a striped cat", "grass"]
    assert captioner.caption(images(1)) == ["a red car"]

    bodies = [r.body for r in openai_server.received]
    assert [sorted(set(body) & {"max_tokens", "max_completion_tokens", "temperature"}) for body in bodies] == [
        ["max_tokens", "temperature"],
        ["max_completion_tokens", "temperature"],
        ["max_completion_tokens"],
        ["max_completion_tokens"],  # the second batch is sent adapted at once
    ]
    assert bodies[2]["max_completion_tokens"] == (10 + 4) * 2 + 4096
    assert captioner.name == captioner_name(vision_config(openai_server), prompts_dir=PROMPTS).replace(
        "vision-model", "o4-mini"
    )


def test_the_prompt_is_its_file_and_its_text_is_in_the_name(openai_server, tmp_path):
    config = vision_config(openai_server)
    # The hash of the prompt's three sections, as when they were constants: cached captions keep their keys.
    assert captioner_name(config, prompts_dir=PROMPTS).endswith(":max_new_tokens=10,prompt=7b861c2e")
    edited = tmp_path / "prompts"
    edited.mkdir()
    text = (PROMPTS / "caption_vision.md").read_text()
    (edited / "caption_vision.md").write_text(text.replace("Describe only what is visible.", "Be literal."))
    openai_server.script(("ok", '["a striped cat"]'))
    captioner = build_captioner(config, "cpu", prompts_dir=edited)

    assert captioner.caption(images(1)) == ["a striped cat"]
    [request] = openai_server.received
    assert request.body["messages"][0]["content"].endswith(
        "(objects, parts of them, materials, textures, patterns, colours or scenes). Be literal."
    )
    assert captioner.name != captioner_name(config, prompts_dir=PROMPTS)
    with pytest.raises(DnDError, match=r"prompt file .*caption_vision.md is missing"):
        captioner_name(config, prompts_dir=tmp_path)
