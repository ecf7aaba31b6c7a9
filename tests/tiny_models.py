"""Tiny randomly initialised Hugging Face models for tests, built from configs (never downloaded).

Each builder writes a complete model folder with ``save_pretrained`` and returns it, so code under test loads it
exactly like a real model: ``from_pretrained(folder)``. Weights are seeded, so a folder's outputs are reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: A BERT word-piece vocabulary: the special tokens BLIP's text decoder needs, then a few caption words.
BLIP_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "dog", "cat", "on", "the", "grass", "red")
TINY_IMAGE_SIZE = 32


def tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A BLIP captioner with 16-wide text and vision towers on 32×32 images, saved to ``folder``; returns it."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(BLIP_VOCAB) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = BlipConfig(
        text_config={
            **tower,
            "vocab_size": len(BLIP_VOCAB),
            "bos_token_id": BLIP_VOCAB.index("[DEC]"),
            "pad_token_id": BLIP_VOCAB.index("[PAD]"),
            "sep_token_id": BLIP_VOCAB.index("[SEP]"),
        },
        vision_config={**tower, "image_size": TINY_IMAGE_SIZE, "patch_size": 8},
    )
    with torch.random.fork_rng():  # seeded weights without disturbing the caller's random stream
        torch.manual_seed(seed)
        BlipForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def tiny_blip2(folder: Path, seed: int = 0) -> Path:
    """A BLIP-2 captioner (vision tower, Q-Former, OPT decoder; all 16 wide) on 32×32 images; returns ``folder``.

    The OPT tokenizer is byte-level BPE over single letters and ``Ġ`` (space) with no merges, so every letter is a
    token; the processor adds the ``<image>`` token that stands for the query outputs.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2Tokenizer,
        OPTConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    special = ["</s>", "<pad>", "<unk>"]
    vocab = {token: i for i, token in enumerate([*special, *"abcdefghijklmnopqrstuvwxyzĠ"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = GPT2Tokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token="</s>", eos_token="</s>", pad_token="<pad>"
    )
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=4)
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    decoder = OPTConfig(
        vocab_size=len(processor.tokenizer),
        hidden_size=16,
        word_embed_proj_dim=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        bos_token_id=vocab["</s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    config = Blip2Config(
        vision_config={**tower, "image_size": TINY_IMAGE_SIZE, "patch_size": 8},
        qformer_config={**tower, "encoder_hidden_size": 16, "vocab_size": len(vocab)},  # text input is never used
        text_config=decoder.to_dict(),
        num_query_tokens=4,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        Blip2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIP model (16-wide text and vision towers, 8-dim projections, 32×32 images) with its processor; returns
    ``folder``. The tokenizer knows single characters (plus ``</w>`` word ends) and no merges."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = character_clip_tokenizer(folder)
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tower, **clip_text_ids(tokenizer)},
        vision_config={**tower, "image_size": TINY_IMAGE_SIZE, "patch_size": 8},
        projection_dim=8,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def tiny_stable_diffusion(folder: Path, seed: int = 0) -> Path:
    """A Stable Diffusion pipeline (UNet, VAE and CLIP text encoder all 8 to 16 wide; DPM-Solver multistep) saved to
    ``folder``; returns it. The VAE downsamples by 2, so 32×32 images denoise 16×16 latents."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = character_clip_tokenizer(folder / "tokenizer")
    text_width = 16
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=TINY_IMAGE_SIZE // 2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_width,
            norm_num_groups=8,
            attention_head_dim=2,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=text_width,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                **clip_text_ids(tokenizer),
            )
        )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(steps_offset=1),  # steps_offset=1 as Stable Diffusion's own
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder


def character_clip_tokenizer(folder: Path, vocab_size: int | None = None):
    """A ``CLIPTokenizer`` over single characters (alone and ending a word), no merges, so every character is a token;
    with ``vocab_size``, placeholder tokens fill the vocabulary to that size (a real model's embedding table). The
    start and end tokens come last, as in CLIP's own vocabulary. Its files go to ``folder``."""
    import string

    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    characters = list(string.ascii_lowercase + string.digits + "-'/&")
    tokens = [*characters, *(f"{c}</w>" for c in characters)]
    if vocab_size is not None:
        tokens += [f"t{index}</w>" for index in range(len(tokens), vocab_size - 2)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def clip_text_ids(tokenizer) -> dict[str, int]:
    """The vocabulary size, context length and special token ids a CLIP text tower needs to match ``tokenizer``."""
    return {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
