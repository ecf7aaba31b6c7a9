"""Pydantic artifacts: what each stage writes to the stage store (``artifact.json``) and later stages read."""

from __future__ import annotations

from pydantic import BaseModel, Field


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

    The full matrix ``activations [n_images, n_neurons]`` (float32) and ``probe_indices [n_images]`` (int64) are in
    ``activations_file`` (safetensors) beside this artifact; row ``r`` is probing image ``probe_indices[r]``.
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
    activations_file: str = "activations.safetensors"
