"""Stage 5 — synthesize: ``synthesize.images_per_concept`` (Q) generated images for every candidate concept.

Per layer, the distinct candidate concepts of the requested neurons are each written into the prompt of
``prompts/synthesize.md`` once, however many neurons proposed them. Image ``i`` of a prompt is seeded by a hash of
(run seed, prompt, i), never by its place in a batch, and is kept in the image store (:mod:`dnd.image_store`) under
the content key of (generator name, prompt, seed); the generator name holds the model and every setting that changes
the pixels. Stored images are reused by other neurons, layers, later runs and ``--neurons`` subsets; the missing ones
are generated in batches that mix concepts, each batch stored as soon as it returns, so a killed run keeps every
finished batch. The generator is loaded only when an image is missing. In a job of several processes, each generates
its share of the images.
"""

from __future__ import annotations

from dnd.artifacts import ConceptImages, Generations, NeuronGenerations
from dnd.image_store import generate_missing, image_store, plan_images
from dnd.prompts import single_prompt
from dnd.stages.base import NeuronWork, Requirement, StageContext, StageSpec

PROMPT_FILE = "synthesize.md"


def compute(ctx: StageContext, work: NeuronWork) -> tuple[Generations, dict[str, int]]:
    """Make sure each candidate concept of ``work.neurons`` of one layer has its Q images in the image store (reused
    or generated); return the neurons' concepts with their image ids, and what this run generated."""
    template = single_prompt(PROMPT_FILE, ctx.prompt_text(PROMPT_FILE), "concept")
    config = ctx.config.synthesize
    name = ctx.backends.generator_identity()
    store = image_store(ctx.config.output_dir)
    # 1. Each neuron's candidate concepts (the kernel has carried neurons that failed upstream over as failed).
    concepts: dict[int, list[str]] = {neuron: entry.concepts for neuron, entry in work.entries["summarize"].items()}
    # 2. Q requests per distinct concept of the layer, each under the key of everything that makes its pixels.
    distinct = dict.fromkeys(concept for labels in concepts.values() for concept in labels)
    prompts = {concept: template.format(concept=concept) for concept in distinct}
    requests, image_ids = plan_images(prompts, config.images_per_concept, ctx.config.seed, name)
    # 3-4. Images already in the store (any neuron, layer or run) are reused; the rest are generated and stored, each
    #      process generating its share.
    shared = dict(ctx.ranks.share(list(requests.items())))
    generated, calls = generate_missing(store, ctx.backends, shared, config.batch_size, f"synthesize {work.layer}")
    ctx.ranks.barrier()
    # 5. Per neuron: each of its concepts with the prompt and the ids of its images (and how many it could not get).
    available = {c: [key for key in keys if not store.is_nothing(key)] for c, keys in image_ids.items()}
    neurons = [
        NeuronGenerations(
            neuron=neuron,
            concepts=[
                ConceptImages(
                    concept=c,
                    prompt=prompts[c],
                    image_ids=available[c],
                    missing_images=len(image_ids[c]) - len(available[c]),
                )
                for c in labels
            ],
        )
        for neuron, labels in concepts.items()
    ]
    counts = {
        "unique_concepts": len(prompts) if ctx.ranks.is_main else 0,  # counts are added up over the processes
        "images_requested": len(shared),
        "images_generated": generated,
        "cache_hits": len(shared) - generated,
        "generator_calls": calls,
        "images_unavailable": sum(store.is_nothing(key) for key in shared),
    }
    return Generations(layer=work.layer, generator=name, neurons=neurons), counts


def _extra_inputs(ctx: StageContext) -> dict[str, object]:
    # The image seeds depend on the run seed; the generator's name holds what its config section does not (for
    # retrieval: the pool's content and the captioner).
    return {"seed": ctx.config.seed, "generator": ctx.backends.generator_identity()}


SPEC = StageSpec(
    name="synthesize",
    version=1,
    needs=("summarize",),
    config_sections=("synthesize",),
    artifact=Generations,
    compute=compute,
    requires={"summarize": Requirement(lambda entry: entry.concepts, "no candidate concepts")},
    prompts=(PROMPT_FILE,),
    extra_inputs=_extra_inputs,
)
