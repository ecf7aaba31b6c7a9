"""Heavy models behind small interfaces, loaded lazily and once per run.

:class:`Backends` is the only place that chooses and loads implementations; tests hand it fakes or tiny real
models instead (``Backends(config, target=my_network, captioner=fake)``).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from dnd.backends.captioners import Captioner
    from dnd.backends.embedders import ClipEmbedder
    from dnd.backends.generators import ImageGenerator
    from dnd.backends.llms import ConceptLLM
    from dnd.backends.targets import TargetNetwork
    from dnd.config import RunConfig


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
        clip: ClipEmbedder | None = None,
    ):
        self.config = config
        self._given: dict[str, Any] = {
            "target": target,
            "captioner": captioner,
            "concept_llm": concept_llm,
            "generator": generator,
            "clip": clip,
        }

    @cached_property
    def device(self) -> torch.device:
        from dnd.backends.targets import resolve_device

        return resolve_device(self.config.device)

    @cached_property
    def target(self) -> TargetNetwork:
        from dnd.backends.targets import load_target

        network = self._given["target"] or load_target(self.config.target)
        return network.to(self.device)

    @cached_property
    def captioner(self) -> Captioner:
        from dnd.backends.captioners import build_captioner

        return self._given["captioner"] or build_captioner(self.config.caption, self.device)

    @cached_property
    def concept_llm(self) -> ConceptLLM:
        from dnd.backends.llms import build_concept_llm

        return self._given["concept_llm"] or build_concept_llm(self.config.summarize, self.device)

    @cached_property
    def generator(self) -> ImageGenerator:
        from dnd.backends.generators import build_generator

        return self._given["generator"] or build_generator(self.config.synthesize, self.device)

    @cached_property
    def clip(self) -> ClipEmbedder:
        """CLIP image and text embeddings (``embed.clip_model``)."""
        from dnd.backends.embedders import load_clip

        return self._given["clip"] or load_clip(self.config.embed, self.device)

    def clip_model(self) -> str:
        """The CLIP model's name for embedding-cache keys, without loading a built-in one."""
        given = self._given["clip"]
        return given.model if given is not None else self.config.embed.clip_model

    def generator_name(self) -> str:
        """The generator's name for image-store keys, without loading a built-in one."""
        from dnd.backends.generators import generator_name

        given = self._given["generator"]
        return given.name if given is not None else generator_name(self.config.synthesize)

    def captioner_name(self) -> str:
        """The captioner's name for cache keys, without loading a built-in one."""
        from dnd.backends.captioners import captioner_name

        given = self._given["captioner"]
        return given.name if given is not None else captioner_name(self.config.caption)

    def concept_llm_name(self) -> str:
        """The concept LLM's name for cache keys, without loading a built-in one."""
        from dnd.backends.llms import concept_llm_name

        given = self._given["concept_llm"]
        return given.name if given is not None else concept_llm_name(self.config.summarize)

    def target_identity(self) -> dict[str, Any]:
        """What cache keys know about the target network, without loading a built-in one."""
        from dnd.backends.targets import target_identity

        if self._given["target"] is not None:
            return self._given["target"].identity
        return target_identity(self.config.target)
