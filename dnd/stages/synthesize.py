"""Stage 5 — synthesize: ``synthesize.images_per_concept`` (Q) generated images for every candidate concept.

Per layer, the distinct candidate concepts of the requested neurons are each written into the prompt of
``prompts/synthesize.md`` once, however many neurons proposed them. Image ``i`` of a prompt is seeded by a hash of
(run seed, prompt, i), never by its place in a batch, and is kept in the image store (``<output_dir>/images``) under
the content key of (generator name, prompt, seed); the generator name holds the model and every setting that changes
the pixels. Stored images are reused by other neurons, layers, later runs and ``--neurons`` subsets; the missing ones
are generated in batches that mix concepts, each batch stored as soon as it returns, so a killed run keeps every
finished batch. The generator is loaded only when an image is missing.
"""

from __future__ import annotations

import re
import string
import time
from typing import TYPE_CHECKING

from dnd.artifacts import ConceptImages, Concepts, Generations, NeuronGenerations
from dnd.backends.generators import GenerationRequest
from dnd.errors import DnDError
from dnd.pipeline import StageContext, StageJob, StageSpec, split_upstream
from dnd.progress import track
from dnd.store import ImageStore, content_key

if TYPE_CHECKING:
    from dnd.backends import Backends

PROMPT_FILE = "synthesize.md"
IMAGE_FOLDER = "images"
#: Seeds are this wide so that every random number generator accepts them.
SEED_BITS = 32

_PROMPT_SECTION = re.compile(r"^## prompt[ \t]*$", re.MULTILINE)


def image_store(ctx: StageContext) -> ImageStore:
    """The generated images of every run under the output folder (stage 6 reads them from here too)."""
    return ImageStore(ctx.config.output_dir / IMAGE_FOLDER)


def parse_template(text: str) -> str:
    """The prompt template in the text of ``prompts/synthesize.md``: what follows its ``## prompt`` line.

    The template's one placeholder is ``{concept}``; raises :class:`DnDError` naming the problem otherwise.
    """
    fix = f"fix prompts/{PROMPT_FILE} (the note at its top describes the format)"
    parts = _PROMPT_SECTION.split(text)
    if len(parts) != 2 or not parts[1].strip():
        raise DnDError(f"prompt {PROMPT_FILE}: expected one '## prompt' line with the prompt below it; {fix}")
    template = parts[1].strip()
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise DnDError(f"prompt {PROMPT_FILE}: {exc} (write a literal brace as {{{{ or }}}}); {fix}") from None
    if fields != {"concept"}:
        found = ", ".join(sorted(f"{{{field}}}" for field in fields)) or "none"
        raise DnDError(
            f"prompt {PROMPT_FILE}: the prompt must hold the placeholder {{concept}} and no other (found: {found}); "
            f"{fix}"
        )
    return template


def image_seed(run_seed: int, prompt: str, index: int) -> int:
    """The seed of image ``index`` of ``prompt``: a hash, so it never depends on batches or the order of concepts."""
    return int(content_key({"seed": run_seed, "prompt": prompt, "image": index}), 16) % 2**SEED_BITS


def plan_images(
    prompts: dict[str, str], images_per_prompt: int, run_seed: int, generator: str
) -> tuple[dict[str, GenerationRequest], dict[str, list[str]]]:
    """``(request by image key, image keys by label)`` for ``images_per_prompt`` images of each label's prompt.

    ``prompts`` maps a label (a concept, a description) to its filled-in prompt. The key of an image is the content
    key of everything that makes its pixels: the generator's name (model and settings), the prompt and the seed.
    """
    requests: dict[str, GenerationRequest] = {}
    keys_of: dict[str, list[str]] = {}
    for label, prompt in prompts.items():
        keys_of[label] = []
        for index in range(images_per_prompt):
            request = GenerationRequest(prompt, image_seed(run_seed, prompt, index))
            key = content_key({"generator": generator, "prompt": request.prompt, "seed": request.seed})
            requests[key] = request
            keys_of[label].append(key)
    return requests, keys_of


def generate_missing(
    store: ImageStore,
    backends: Backends,
    requests: dict[str, GenerationRequest],
    batch_size: int,
    description: str,
) -> tuple[int, int]:
    """Generate the ``requests`` whose key ``store`` lacks, ``batch_size`` at a time, storing each batch as it
    returns (a killed run keeps every finished batch); return ``(images generated, generator calls)``.

    Batches may mix prompts. The generator is built only if an image is missing.
    """
    missing = [key for key in requests if not store.has(key)]
    batches = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]
    if batches:
        generator = backends.generator
        for batch in track(batches, description):
            images = generator.generate([requests[key] for key in batch])
            if len(images) != len(batch):
                raise RuntimeError(
                    f"generator {generator.name} returned {len(images)} images for {len(batch)} requests"
                )
            for key, image in zip(batch, images, strict=True):
                store.put(key, image)
    return len(missing), len(batches)


def run(ctx: StageContext, jobs: list[StageJob]) -> None:
    """Generate (or reuse) the images of every candidate concept of ``job.neurons`` and write each layer's artifact."""
    template = parse_template(ctx.prompt_text(PROMPT_FILE))
    for job in jobs:
        _synthesize_layer(ctx, job, template)


def _synthesize_layer(ctx: StageContext, job: StageJob, template: str) -> None:
    """Read the job's concepts, make sure each has its Q images in the store and write its :class:`Generations`."""
    started = time.perf_counter()
    config = ctx.config.synthesize
    name = ctx.backends.generator_name()
    store = image_store(ctx)
    # 1. Each neuron's candidate concepts; neurons that failed upstream are carried over as failed.
    usable, failed = split_upstream(job, "summarize", Concepts, lambda entry: entry.concepts, "no candidate concepts")
    results = {neuron: NeuronGenerations(neuron=neuron, failed=reason) for neuron, reason in failed.items()}
    concepts: dict[int, list[str]] = {neuron: entry.concepts for neuron, entry in usable.items()}
    # 2. Q requests per distinct concept of the layer, each under the key of everything that makes its pixels.
    distinct = dict.fromkeys(concept for labels in concepts.values() for concept in labels)
    prompts = {concept: template.format(concept=concept) for concept in distinct}
    requests, image_ids = plan_images(prompts, config.images_per_concept, ctx.config.seed, name)
    # 3-4. Images already in the store (any neuron, layer or run) are reused; the rest are generated and stored.
    generated, calls = generate_missing(store, ctx.backends, requests, config.batch_size, f"synthesize {job.layer}")
    # 5. Per neuron: each of its concepts with the prompt and the ids of its images.
    for neuron, labels in concepts.items():
        entries = [ConceptImages(concept=c, prompt=prompts[c], image_ids=image_ids[c]) for c in labels]
        results[neuron] = NeuronGenerations(neuron=neuron, concepts=entries)
    # 6. Write the layer's artifact (merged with earlier neurons) and what this run generated.
    artifact = Generations(layer=job.layer, generator=name, neurons=[results[n] for n in sorted(results)])
    counts = {
        "unique_concepts": len(prompts),
        "images_requested": len(requests),
        "images_generated": generated,
        "cache_hits": len(requests) - generated,
        "generator_calls": calls,
    }
    ctx.write_per_neuron(job, artifact, time.perf_counter() - started, counts)


def _extra_inputs(ctx: StageContext) -> dict[str, object]:
    return {"seed": ctx.config.seed}  # the image seeds depend on it


SPEC = StageSpec(
    name="synthesize",
    version=1,
    needs=("summarize",),
    config_sections=("synthesize",),
    run=run,
    artifact=Generations,
    prompts=(PROMPT_FILE,),
    extra_inputs=_extra_inputs,
    per_neuron=True,
)
