"""The paper's models with random weights, built from their published configurations (written out below, never read
from the hub), and small counterparts of the same architectures for a CPU smoke run.

A model's compute does not depend on its weights: a full-size network with random weights costs what the trained one
costs, per image and per token (BLIP's captions are the exception in length: random weights never emit the end
token, so every caption runs to ``caption.max_new_tokens``, an upper bound). Each builder saves a complete model
folder with ``save_pretrained`` and returns it, so the benchmark loads it through the product's own loaders
(``caption.model``, ``synthesize.model``, ``embed.clip_model`` pointing at the folder), exactly as a downloaded model.

``scale`` is ``real`` (the published sizes) or ``smoke`` (a few hundred parameters wide, for CPU tests).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tests.tiny_models import character_clip_tokenizer, clip_text_ids

SCALES = ("real", "smoke")

#: BLIP base captioning (Salesforce/blip-image-captioning-base): ViT-B/16 at 384 px and a 12-layer BERT decoder.
#: ``ids`` are the special tokens' places in its BERT vocabulary ([DEC] starts a caption).
BLIP = {
    "real": {
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        "image_size": 384,
        "patch_size": 16,
        "text": {
            "vocab_size": 30524,
            "hidden_size": 768,
            "encoder_hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 512,
        },
        "ids": {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "[DEC]": 30522},
    },
    "smoke": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        "image_size": 32,
        "patch_size": 8,
        "text": {
            "vocab_size": 64,
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
        },
        "ids": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "[DEC]": 5},
    },
}

#: CLIP text towers: ViT-B/16's own (CLIP_VIT_B16), ViT-L/14's in Stable Diffusion 1.5, OpenCLIP ViT-H/14's (23 of its
#: 24 layers, as Stable Diffusion 2.x uses it) in SD-Turbo. All read 77 tokens of a 49,408-token vocabulary.
_TEXT_B16 = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8}
_TEXT_L14 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
_TEXT_H14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
}
_TEXT_SMOKE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
VOCAB = {"real": 49408, "smoke": 128}

#: CLIP ViT-B/16 (openai/clip-vit-base-patch16): stage 6's image and text embeddings.
CLIP_VIT_B16 = {
    "real": {
        "text": _TEXT_B16,
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        "image_size": 224,
        "patch_size": 16,
        "projection_dim": 512,
    },
    "smoke": {
        "text": _TEXT_SMOKE,
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 16,
    },
}

_SD_BLOCKS = {
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32,
    "sample_size": 64,
}
_SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
_SMOKE_UNET = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 8,
    "sample_size": 16,
    "attention_head_dim": 2,
    "cross_attention_dim": 32,
}
_SMOKE_VAE = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}
#: Stable Diffusion 1.5 (stable-diffusion-v1-5): the 860 M-parameter UNet, the KL VAE, CLIP ViT-L/14's text tower.
#: SD-Turbo (stabilityai/sd-turbo): Stable Diffusion 2.1's UNet (linear projections, wider heads, 1,024-wide
#: cross-attention) and text tower, with its Euler scheduler on "trailing" timesteps for one-step sampling.
STABLE_DIFFUSION = {
    "sd15": {
        "real": {
            "unet": {**_SD_BLOCKS, "attention_head_dim": 8, "cross_attention_dim": 768},
            "vae": _SD_VAE,
            "text": _TEXT_L14,
            "scheduler": "DPMSolverMultistepScheduler",
        },
        "smoke": {
            "unet": _SMOKE_UNET,
            "vae": _SMOKE_VAE,
            "text": _TEXT_SMOKE,
            "scheduler": "DPMSolverMultistepScheduler",
        },
    },
    "sd_turbo": {
        "real": {
            "unet": {
                **_SD_BLOCKS,
                "attention_head_dim": (5, 10, 20, 20),
                "cross_attention_dim": 1024,
                "use_linear_projection": True,
            },
            "vae": _SD_VAE,
            "text": _TEXT_H14,
            "scheduler": "EulerDiscreteScheduler",
        },
        "smoke": {"unet": _SMOKE_UNET, "vae": _SMOKE_VAE, "text": _TEXT_SMOKE, "scheduler": "EulerDiscreteScheduler"},
    },
}
#: Stable Diffusion's training noise schedule (both models); SD-Turbo samples its few steps from the last timestep.
_NOISE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
_SCHEDULER_OPTIONS = {"DPMSolverMultistepScheduler": {}, "EulerDiscreteScheduler": {"timestep_spacing": "trailing"}}


def target_network(scale: str) -> Any:
    """The target network with random weights: torchvision's ResNet-50 with the preprocessing of its IMAGENET1K_V1
    weights (resize 256, crop 224), or for ``smoke`` a ResNet of one basic block per stage (the same module names,
    ``layer1``-``layer4`` and ``fc``) on 64 px crops."""
    from torchvision import models, transforms

    from dnd.backends.target_network import TargetNetwork

    torch.manual_seed(0)
    if scale == "real":
        return TargetNetwork("resnet50-random", models.resnet50(), models.ResNet50_Weights.IMAGENET1K_V1.transforms())
    preprocess = transforms.Compose(
        [
            transforms.Resize(72),
            transforms.CenterCrop(64),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    module = models.resnet.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1])
    return TargetNetwork("resnet-1111-random", module, preprocess)


def build_blip(folder: Path, scale: str, device: torch.device) -> Path:
    """BLIP base captioning (or its smoke counterpart) with random weights, its processor and a BERT vocabulary of the
    model's size (placeholder words around the special tokens), saved to ``folder``."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    spec = BLIP[scale]
    text, ids = spec["text"], spec["ids"]
    folder.mkdir(parents=True, exist_ok=True)
    words = {index: token for token, index in ids.items()}
    vocab = [words.get(index, f"w{index}") for index in range(text["vocab_size"])]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    config = BlipConfig(
        text_config={
            **text,
            "bos_token_id": ids["[DEC]"],
            "pad_token_id": ids["[PAD]"],
            "sep_token_id": ids["[SEP]"],
        },
        vision_config={**spec["vision"], "image_size": spec["image_size"], "patch_size": spec["patch_size"]},
    )
    with _random_init(device):
        _save(BlipForConditionalGeneration(config), folder, device)
    size = {"height": spec["image_size"], "width": spec["image_size"]}
    BlipProcessor(image_processor=BlipImageProcessor(size=size), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_clip(folder: Path, scale: str, device: torch.device) -> Path:
    """CLIP ViT-B/16 (or its smoke counterpart) with random weights and its processor, saved to ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    spec = CLIP_VIT_B16[scale]
    tokenizer = character_clip_tokenizer(folder, VOCAB[scale])
    vision = {**spec["vision"], "image_size": spec["image_size"], "patch_size": spec["patch_size"]}
    config = CLIPConfig(
        text_config={**spec["text"], **clip_text_ids(tokenizer)},
        vision_config=vision,
        projection_dim=spec["projection_dim"],
    )
    with _random_init(device):
        _save(CLIPModel(config), folder, device)
    side = spec["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_stable_diffusion(folder: Path, model: str, scale: str, device: torch.device) -> Path:
    """A Stable Diffusion pipeline (``model``: ``sd15`` or ``sd_turbo``) with random weights, saved to ``folder``."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = STABLE_DIFFUSION[model][scale]
    tokenizer = character_clip_tokenizer(folder / "tokenizer", VOCAB[scale])
    scheduler_class = spec["scheduler"]
    with _random_init(device):
        unet = diffusers.UNet2DConditionModel(**spec["unet"])
        vae = diffusers.AutoencoderKL(**spec["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**spec["text"], **clip_text_ids(tokenizer)))
    pipeline = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=getattr(diffusers, scheduler_class)(**_NOISE, **_SCHEDULER_OPTIONS[scheduler_class]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save(pipeline, folder, device)
    return folder


def parameters(folder: Path) -> int:
    """Parameters in the safetensors files under ``folder`` (read from their headers, not loaded)."""
    total = 0
    for path in folder.rglob("*.safetensors"):
        with path.open("rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dimension in entry["shape"]:
                    count *= dimension
                total += count
    return total


@contextlib.contextmanager
def _random_init(device: torch.device) -> Iterator[None]:
    """Seeded random initialisation, on ``device`` when it is a GPU (which fills a billion parameters in a second,
    where a CPU core takes minutes)."""
    torch.manual_seed(0)
    with torch.device(device) if device.type == "cuda" else contextlib.nullcontext():
        yield


def _save(model: Any, folder: Path, device: torch.device) -> None:
    """Save ``model``; on CUDA in float16 (what the product loads there), halving the files to write and read."""
    if device.type == "cuda":
        model = model.to(torch.float16)
    model.save_pretrained(folder)
