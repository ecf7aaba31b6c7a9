"""Image generators (stage 5): Stable Diffusion and fast distilled variants through ``diffusers``; retrieval from a
pool of real images (:mod:`dnd.backends.retrieval`) goes through the same door."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from dnd.backends.loading import load_model
from dnd.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from dnd.config import SynthesizeConfig

#: How to get a text-to-image model where it cannot be loaded.
SYNTHESIZE_FIX = (
    "Set synthesize.model to a local folder holding a diffusers pipeline (saved with save_pretrained), or run on a "
    "machine with Hugging Face hub access."
)


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate: the same prompt and seed always give the same image.

    ``concept`` and ``index`` say which image of which concept (or label) this is: the prompt is the concept written
    into a template, the seed a hash of the prompt and the index. Text-to-image models use the prompt and seed; a
    retrieval generator matches on the concept itself and takes its ``index``-th nearest image.
    """

    prompt: str
    seed: int
    concept: str | None = None
    index: int | None = None


class ImageGenerator(Protocol):
    """Generates images in batches.

    ``name`` identifies the model and every setting that changes the pixels (scheduler, steps, guidance, size), so
    stored images are reused exactly when this generator would make them again.
    """

    name: str

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image | None]:
        """One RGB image per request, in order; each depends only on its own request, not on the batch. None where
        the generator has no image for a request (a retrieval pool with nothing more to give); the stage records it
        and the concept is scored on the images it has."""
        ...


class DiffusersGenerator:
    """A ``diffusers`` text-to-image pipeline loaded once: fp16 on CUDA, fp32 elsewhere.

    On CUDA the UNet and VAE run channels-last (``synthesize.channels_last``), attention goes through PyTorch's
    scaled-dot-product attention (diffusers' default processor on torch 2), the unconditional pass of classifier-free
    guidance runs in the same batch as the conditional one (the pipeline's own), and ``synthesize.compile`` compiles
    the UNet; none of these is in the generator's name, so stored images are reused across them.

    The pipeline class comes from the model's ``model_index.json`` (``AutoPipelineForText2Image``), so Stable
    Diffusion 1.x/2.x, SD-Turbo and SDXL-Turbo all load through here. The safety checker is left out: it would cost a
    second model and blank images of ordinary concepts it misjudges.
    """

    #: ``synthesize.scheduler`` → scheduler class in ``diffusers``; ``model_default`` keeps the model's own.
    SCHEDULERS = {
        "dpm_multistep": "DPMSolverMultistepScheduler",
        "euler_ancestral": "EulerAncestralDiscreteScheduler",
    }

    def __init__(self, config: SynthesizeConfig, device: torch.device | str = "cpu"):
        import diffusers
        import torch

        self.name = generator_name(config)
        self.config = config
        device = torch.device(device)
        pipeline = load_pipeline(config.model, torch.float16 if device.type == "cuda" else torch.float32)
        if config.scheduler != "model_default":
            scheduler_class = getattr(diffusers, self.SCHEDULERS[config.scheduler])
            pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)  # the stage shows one bar over all batches instead
        self.pipeline = pipeline.to(device)
        if device.type == "cuda" and config.channels_last:  # tensor cores take float16 convolutions in NHWC
            for model in (pipeline.unet, pipeline.vae):
                model.to(memory_format=torch.channels_last)
        if config.compile:
            pipeline.unet.compile()  # most of the work: 2 UNet evaluations per step (guidance batched in one)

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image]:
        """Generate one ``size``×``size`` RGB image per request with ONE pipeline call over the whole batch.

        Each request gets its own ``torch.Generator`` seeded with ``request.seed``, so its starting noise (and the
        noise of stochastic schedulers) is its own, whatever else is in the batch. The generators live on the CPU:
        the same seed then gives the same starting noise on every device.
        """
        import torch

        if not requests:
            return []
        generators = [torch.Generator().manual_seed(request.seed) for request in requests]
        with torch.inference_mode():
            output = self.pipeline(
                prompt=[request.prompt for request in requests],
                num_inference_steps=self.config.steps,
                guidance_scale=self.config.guidance_scale,
                height=self.config.size,
                width=self.config.size,
                generator=generators,
                output_type="pil",
            )
        return [image.convert("RGB") for image in output.images]


def load_pipeline(model: str, dtype: torch.dtype) -> Any:
    """The text-to-image pipeline of ``model`` (hub id or folder) with weights in ``dtype``.

    In fp16 the model's ``fp16`` weight files are preferred (half the download); a model without them is loaded from
    its full-precision files and cast. Raises :class:`ModelLoadError` naming the fix when the model cannot be had.
    """
    import diffusers
    import torch

    load_or_explain = functools.partial(load_model, "text-to-image model", model, SYNTHESIZE_FIX)
    components = load_or_explain(lambda: diffusers.DiffusionPipeline.load_config(model))
    options: dict[str, Any] = {"dtype": dtype}
    if "safety_checker" in components:
        options |= {"safety_checker": None, "requires_safety_checker": False}

    def load(**extra: Any) -> Any:
        return load_or_explain(lambda: diffusers.AutoPipelineForText2Image.from_pretrained(model, **options, **extra))

    if dtype == torch.float16:
        with contextlib.suppress(ModelLoadError):  # without fp16 files: the full-precision ones, cast on loading
            return load(variant="fp16")
    return load()


def generator_name(config: SynthesizeConfig) -> str:
    """``diffusers:<model>:<scheduler>:steps=N:guidance=G:size=S``: the generator's ``name``, known without loading.

    Execution details are left out, so images are reused across them: the batch size, and the device with its
    precision (fp16 on CUDA, fp32 elsewhere), which changes pixels only slightly.
    """
    return (
        f"diffusers:{config.model}:{config.scheduler}:steps={config.steps}:guidance={config.guidance_scale}"
        f":size={config.size}"
    )


def build_generator(config: SynthesizeConfig, device: torch.device | str) -> ImageGenerator:
    """Load the generator ``config`` describes on ``device``."""
    return DiffusersGenerator(config, device)
