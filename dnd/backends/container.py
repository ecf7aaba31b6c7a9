"""The one container of a run's heavy models (:class:`Backends`), each loaded lazily and once per run.

:class:`Backends` is the only place that chooses and loads implementations; tests hand it fakes or tiny real
models instead (``Backends(config, target=my_network, captioner=fake)``). Each role has the paper's model and an
offline stand-in: captions from BLIP or a classifier's class names (``caption.backend``), images from Stable
Diffusion or retrieved from a pool (``synthesize.backend``), scoring embeddings from CLIP or the classifier's features
with MiniLM text (``score.image_embedder``). One classifier serves every role that names it.

Every role has a property that builds its model on first use (``captioner``) and a ``<role>_identity()`` method that
says what cache keys know about that model without loading a built-in one (``captioner_identity()``): the model's
name or id, or for the target network the dict of its identifying fields.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from dnd.backends.captioners import Captioner
    from dnd.backends.classifier import ImageClassifier
    from dnd.backends.embedders import ImageEmbedder, ImageTextEmbedder, SentenceEmbedder, TextEmbedder
    from dnd.backends.generators import ImageGenerator
    from dnd.backends.llms import ConceptLLM
    from dnd.backends.target_network import TargetNetwork
    from dnd.config import ClassifierConfig, RunConfig
    from dnd.data import ProbeSet
    from dnd.units import UnitMap


class Backends:
    """The models a run needs, each built on first use and then reused by every stage of the run."""

    def __init__(
        self,
        config: RunConfig,
        *,
        target: TargetNetwork | None = None,
        captioner: Captioner | None = None,
        concept_llm: ConceptLLM | None = None,
        generator: ImageGenerator | None = None,
        clip: ImageTextEmbedder | None = None,
        image_embedder: ImageEmbedder | None = None,
        text_embedder: TextEmbedder | None = None,
    ):
        self.config = config
        # the models handed in (tests, Python callers); a role left None is built from the config on first use
        self._given_target = target
        self._given_captioner = captioner
        self._given_concept_llm = concept_llm
        self._given_generator = generator
        self._given_clip = clip
        self._given_image_embedder = image_embedder
        self._given_text_embedder = text_embedder
        self._classifiers: dict[str, ImageClassifier] = {}

    @cached_property
    def device(self) -> torch.device:
        """``config.device``; in a job of several processes per machine, ``auto`` and ``cuda`` mean this process's
        own GPU (``cuda:<LOCAL_RANK>``). On the CPU the process's malloc is tuned first (see :mod:`dnd.cpu`)."""
        from dnd import cpu
        from dnd.devices import resolve_device
        from dnd.distributed import local_rank

        device = resolve_device(self.config.device, local_rank())
        if device.type == "cpu":
            cpu.tune_process()
        return device

    @cached_property
    def units(self) -> UnitMap | None:
        """The units ``units.*`` defines (an SAE's latents, directions), read once; None for neurons."""
        from dnd.units import load_units

        return load_units(self.config.units)

    def classifier(self, config: ClassifierConfig, setting: str) -> ImageClassifier:
        """The ImageNet classifier ``config`` names, loaded once however many roles use it (``setting`` names the
        config key, for errors)."""
        from dnd.backends.classifier import ImageClassifier, classifier_name

        name = classifier_name(config)
        if name not in self._classifiers:
            self._classifiers[name] = ImageClassifier(config, self.device, setting)
        return self._classifiers[name]

    # --- the target network -------------------------------------------------------------------------------------

    @cached_property
    def target(self) -> TargetNetwork:
        """The target network on the device, in the layout ``execution.memory_format`` names, compiled if
        ``execution.compile``."""
        from dnd.backends.targets import load_target

        network = self._given_target or load_target(self.config.target)
        network.units = self.units
        network.to(self.device, self.config.execution.memory_format)
        if self.config.execution.compile:
            network.module.compile()
        return network

    def target_identity(self) -> dict[str, Any]:
        """What cache keys know about the target network, without loading a built-in one."""
        from dnd.backends.targets import target_identity

        if self._given_target is not None:
            return self._given_target.identity
        return target_identity(self.config.target)

    # --- stage 3: captions --------------------------------------------------------------------------------------

    @cached_property
    def captioner(self) -> Captioner:
        from dnd.backends.captioners import build_captioner

        given = self._given_captioner
        return given or build_captioner(
            self.config.caption,
            self.device,
            lambda config: self.classifier(config, "caption.classifier"),
            prompts_dir=self.config.prompts_dir,
        )

    def captioner_identity(self) -> str:
        """What cache keys know about the captioner (its name), without loading a built-in one."""
        from dnd.backends.captioners import captioner_name

        given = self._given_captioner
        return (
            given.name
            if given is not None
            else captioner_name(self.config.caption, prompts_dir=self.config.prompts_dir)
        )

    # --- stage 4: concepts --------------------------------------------------------------------------------------

    @cached_property
    def concept_llm(self) -> ConceptLLM:
        from dnd.backends.llms import build_concept_llm

        return self._given_concept_llm or build_concept_llm(self.config.summarize, self.device)

    def concept_llm_identity(self) -> str:
        """What cache keys know about the concept LLM (its name), without loading a built-in one."""
        from dnd.backends.llms import concept_llm_name

        given = self._given_concept_llm
        return given.name if given is not None else concept_llm_name(self.config.summarize)

    # --- stage 5: images of concepts ----------------------------------------------------------------------------

    @cached_property
    def generator(self) -> ImageGenerator:
        """Stable Diffusion (``synthesize.backend: diffusers``) or retrieval from ``synthesize.pool``."""
        from dnd.backends.generators import build_generator

        given = self._given_generator
        if given is not None:
            return given
        if self.config.synthesize.backend == "retrieval":
            return self._retrieval()
        return build_generator(self.config.synthesize, self.device)

    def generator_identity(self) -> str:
        """What cache keys (the image store's) know about the generator (its name), without loading a built-in one
        (retrieval: without captioning or embedding its pool, only listing it)."""
        from dnd.backends.embedders import minilm_identity
        from dnd.backends.generators import generator_name
        from dnd.backends.retrieval import RetrievalGenerator

        given = self._given_generator
        if given is not None:
            return given.name
        config = self.config.synthesize
        if config.backend == "retrieval":
            fingerprint = self.retrieval_pool.fingerprint
            return RetrievalGenerator.name_for(config, fingerprint, self.captioner_identity(), minilm_identity())
        return generator_name(config)

    def _retrieval(self) -> ImageGenerator:
        from dnd import layout
        from dnd.backends.captioners import CAPTION_CACHE
        from dnd.backends.retrieval import RetrievalGenerator
        from dnd.distributed import process_ranks
        from dnd.store import ItemCache

        config = self.config
        return RetrievalGenerator(
            config.synthesize,
            self.retrieval_pool,
            self._pool_setting(),
            captioner=lambda: self.captioner,
            captioner_name=self.captioner_identity(),
            captions=ItemCache(layout.cache_dir(config.output_dir), CAPTION_CACHE),
            texts=self.minilm,
            batch_size=config.caption.batch_size,
            num_workers=config.probe.num_workers,
            ranks=process_ranks(),
        )

    @cached_property
    def retrieval_pool(self) -> ProbeSet:
        """The images ``synthesize.backend: retrieval`` takes from: ``synthesize.pool``, else the probing set."""
        from dnd.data import open_image_folders, open_probe

        pool = self.config.synthesize.pool
        return open_probe(self.config.probe) if pool is None else open_image_folders(pool, "synthesize.pool")

    def _pool_setting(self) -> str:
        pool = self.config.synthesize.pool
        return "synthesize.pool" if pool is not None else "synthesize.pool (empty: the probing set, probe.path)"

    # --- stage 6: embeddings for scoring ------------------------------------------------------------------------

    @cached_property
    def minilm(self) -> SentenceEmbedder:
        """The offline all-MiniLM-L6-v2 sentence model (retrieval and the offline scoring's text similarity)."""
        from dnd.backends.embedders import load_minilm

        return load_minilm(self.device, self.config.embed.batch_size)

    @cached_property
    def clip(self) -> ImageTextEmbedder:
        """CLIP image and text embeddings (``embed.clip_model``)."""
        from dnd.backends.embedders import load_clip

        return self._given_clip or load_clip(self.config.embed, self.device)

    def clip_identity(self) -> str:
        """What cache keys (the embedding cache's) know about CLIP (its ``model``), without loading a built-in
        one."""
        given = self._given_clip
        return given.model if given is not None else self.config.embed.clip_model

    @cached_property
    def image_embedder(self) -> ImageEmbedder:
        """Stage 6's image embeddings: CLIP (``score.image_embedder: clip``) or the classifier's features."""
        from dnd.backends.embedders import ClassifierImageEmbedder

        given = self._given_image_embedder
        if given is not None:
            return given
        if self.config.score.image_embedder == "clip":
            return self.clip
        classifier = self.classifier(self.config.score.classifier, "score.classifier")
        return ClassifierImageEmbedder(classifier, self.config.score.batch_size)

    def image_embedder_identity(self) -> str:
        """What cache keys (the embedding cache's) know about the image embedder (its ``model``), without loading
        it."""
        from dnd.backends.classifier import classifier_name
        from dnd.backends.embedders import ClassifierImageEmbedder

        given = self._given_image_embedder
        if given is not None:
            return given.model
        if self.config.score.image_embedder == "clip":
            return self.clip_identity()
        return ClassifierImageEmbedder.model_for(classifier_name(self.config.score.classifier))

    @cached_property
    def text_embedder(self) -> TextEmbedder:
        """Stage 6's text similarity (multi-label rule): CLIP's text tower beside CLIP images, else MiniLM."""
        given = self._given_text_embedder
        if given is not None:
            return given
        return self.clip if self.config.score.image_embedder == "clip" else self.minilm

    def text_embedder_identity(self) -> str:
        """What cache keys (the embedding cache's) know about the text embedder (its ``model``), without loading
        it."""
        from dnd.backends.embedders import minilm_identity

        given = self._given_text_embedder
        if given is not None:
            return given.model
        return self.clip_identity() if self.config.score.image_embedder == "clip" else minilm_identity()
