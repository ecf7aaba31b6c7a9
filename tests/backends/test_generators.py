"""Image generators: a tiny random Stable Diffusion saved and loaded back; seeds, batches, names, load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dnd.backends.generators import (
    DiffusersGenerator,
    GenerationRequest,
    build_generator,
    generator_name,
    load_pipeline,
)
from dnd.config import SynthesizeConfig
from dnd.errors import ModelLoadError
from tests.tiny_models import TINY_IMAGE_SIZE, tiny_stable_diffusion


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def generator(sd_folder: Path) -> DiffusersGenerator:
    return DiffusersGenerator(SynthesizeConfig(model=str(sd_folder), size=TINY_IMAGE_SIZE, steps=3), "cpu")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


#: "The same image" for generated pixels: batched float math is not bit-identical across batch positions or
#: releases (nor is Stable Diffusion on a GPU), so the same request may differ by a few levels in a few pixels.
SAME_IMAGE_MEAN_LEVELS = 1.0  # mean absolute difference per channel value, below
SAME_IMAGE_MAX_LEVELS = 4  # largest difference of any channel value, at most
#: Two seeds give unrelated noise, hence images that differ by tens of levels on average.
OTHER_SEED_MEAN_LEVELS = 10.0


def assert_same_image(first, second) -> None:
    difference = np.abs(pixels(first) - pixels(second))
    assert difference.mean() < SAME_IMAGE_MEAN_LEVELS and difference.max() <= SAME_IMAGE_MAX_LEVELS, (
        f"images differ by {difference.mean():.3f} levels on average, {difference.max()} at most"
    )


def assert_other_image(first, second) -> None:
    assert np.abs(pixels(first) - pixels(second)).mean() > OTHER_SEED_MEAN_LEVELS


def test_one_rgb_image_of_the_configured_size_per_request(generator):
    requests = [GenerationRequest("a dog", 1), GenerationRequest("a cat", 2), GenerationRequest("red grass", 3)]

    images = generator.generate(requests)

    assert [(image.size, image.mode) for image in images] == [((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), "RGB")] * 3
    assert all(pixels(image).std() > 0 for image in images)  # real pictures, not blank (no safety checker)
    assert generator.generate([]) == []


def test_the_seed_fixes_the_image(generator):
    first, again, other_seed = generator.generate(
        [GenerationRequest("a dog", 7), GenerationRequest("a dog", 7), GenerationRequest("a dog", 8)]
    )
    assert_same_image(first, again)
    assert_other_image(first, other_seed)


def test_an_image_does_not_depend_on_its_batch_mates(generator):
    alone = generator.generate([GenerationRequest("a dog", 5)])[0]
    in_batch = generator.generate(
        [GenerationRequest("a cat", 1), GenerationRequest("a dog", 5), GenerationRequest("red", 9)]
    )[1]
    other_mates = generator.generate([GenerationRequest("grass", 3), GenerationRequest("a dog", 5)])[1]
    assert_same_image(alone, in_batch)
    assert_same_image(alone, other_mates)
    assert_other_image(alone, generator.generate([GenerationRequest("a dog", 6)])[0])


def test_stochastic_schedulers_draw_their_noise_from_each_request_s_own_seed(sd_folder):
    config = SynthesizeConfig(model=str(sd_folder), size=TINY_IMAGE_SIZE, steps=3, scheduler="euler_ancestral")
    generator = DiffusersGenerator(config, "cpu")
    assert type(generator.pipeline.scheduler).__name__ == "EulerAncestralDiscreteScheduler"

    alone = generator.generate([GenerationRequest("a dog", 5)])[0]
    in_batch = generator.generate([GenerationRequest("a cat", 1), GenerationRequest("a dog", 5)])[1]
    assert_same_image(alone, in_batch)


def test_the_scheduler_follows_the_config(generator, sd_folder):
    assert type(generator.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    kept = DiffusersGenerator(SynthesizeConfig(model=str(sd_folder), scheduler="model_default"), "cpu")
    assert kept.pipeline.scheduler.config.steps_offset == 1  # the scheduler saved with the model, untouched
    assert generator.pipeline.scheduler.config.steps_offset == 1  # a replacement keeps the model's settings


def test_name_holds_every_setting_that_changes_the_pixels(sd_folder):
    config = SynthesizeConfig(model=str(sd_folder))
    generator = build_generator(config, "cpu")
    assert isinstance(generator, DiffusersGenerator)
    assert (
        generator.name
        == generator_name(config)
        == f"diffusers:{sd_folder}:dpm_multistep:steps=50:guidance=7.5:size=512"
    )
    changes = [{}, {"steps": 4}, {"guidance_scale": 0.0}, {"size": 256}, {"scheduler": "euler_ancestral"}]
    changes.append({"model": "stabilityai/sd-turbo"})
    assert len({generator_name(config.model_copy(update=change)) for change in changes}) == len(changes)
    for unchanged in [{"batch_size": 2}, {"images_per_concept": 3}]:
        assert generator_name(config.model_copy(update=unchanged)) == generator.name


def test_fp16_loads_a_model_without_fp16_weight_files_by_casting(sd_folder):
    assert not list(sd_folder.rglob("*.fp16.*"))
    pipeline = load_pipeline(str(sd_folder), torch.float16)
    assert pipeline.unet.dtype == pipeline.vae.dtype == pipeline.text_encoder.dtype == torch.float16


def test_a_folder_without_a_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        DiffusersGenerator(SynthesizeConfig(model=str(tmp_path)), "cpu")
