"""Where outputs live: the one module that knows the folder and file names under ``output_dir``.

::

    <output_dir>/
      <run name>/                          one run (``RunConfig.name``): its stage store
        <layer>/
          <stage>-<key>/                   a finished stage: artifact.json, manifest.json
            activation-shards/             record: the float16 activation matrix in shards, as recorded...
            activations.safetensors        ...assembled into one file when a later step first needs it
          .<stage>-<key>.partial/          resumable work of an unfinished stage (record's shards, crop's batches,
                                           score's activations on generated images)
          descriptions.csv                 exports of the layer's labels, rewritten by every run that ends at score
          final_results.csv
          clip-dissect.csv                 `dnd clip-dissect`'s default output
          report/index.html                the layer's HTML report (`dnd report`; inside it, see dnd.report.render)
        .tmp/                              stage folders being written, renamed into place when complete
        .lock                              held by the run writing this folder (its pid, host and command)
      cache/<namespace>/<key[:2]>/<key>.json   per-item results shared by every run (captions, LLM replies, embeddings)
      images/<key[:2]>/<key>.png           generated images shared by every run, keyed by what made them

Everything here is a plain function of paths and names; nothing is created on disk.
"""

from __future__ import annotations

from pathlib import Path

#: A finished stage's output (a pydantic model of :mod:`dnd.artifacts`).
ARTIFACT_FILE = "artifact.json"
#: How a stage output was made: key inputs, versions, time, backend-call counts.
MANIFEST_FILE = "manifest.json"
#: Stage 1's activation matrix (safetensors), beside its artifact once assembled from the shards.
ACTIVATIONS_FILE = "activations.safetensors"
#: Stage 1's activation matrix as recorded: one safetensors file per shard of the probing set.
ACTIVATION_SHARDS_FOLDER = "activation-shards"
#: CLIP-Dissect's format of a layer's labels (``layer,unit,description,similarity``).
DESCRIPTIONS_FILE = "descriptions.csv"
#: The DnD authors' format of a layer's labels (``Neuron ID,Label 1,Label 2,Label 3``).
FINAL_RESULTS_FILE = "final_results.csv"
#: `dnd clip-dissect`'s labels when no ``--out`` is given.
CLIP_DISSECT_FILE = "clip-dissect.csv"
#: A layer's HTML report: a folder beside its stage outputs, opened at its index page.
REPORT_FOLDER = "report"
REPORT_INDEX_FILE = "index.html"
CACHE_FOLDER = "cache"
IMAGES_FOLDER = "images"
STAGING_FOLDER = ".tmp"
LOCK_FILE = ".lock"


def run_dir(output_dir: Path, run: str) -> Path:
    """The stage store of run ``run``."""
    return Path(output_dir) / run


def layer_dir(run_root: Path, layer: str) -> Path:
    """A layer's stage folders and exports inside a run."""
    return Path(run_root) / layer


def stage_dir(run_root: Path, layer: str, stage: str, key: str) -> Path:
    """The folder of ``stage``'s output for ``layer`` under cache key ``key``."""
    return layer_dir(run_root, layer) / f"{stage}-{key}"


def stage_pattern(stage: str) -> str:
    """A glob matching the folders of ``stage`` under any key, inside a layer folder."""
    return f"{stage}-*"


def partial_dir(run_root: Path, layer: str, stage: str, key: str) -> Path:
    """Where an unfinished stage keeps work that a later run resumes."""
    return layer_dir(run_root, layer) / f".{stage}-{key}.partial"


def staging_dir(run_root: Path) -> Path:
    """Where stage folders are written before they are renamed into place."""
    return Path(run_root) / STAGING_FOLDER


def lock_path(run_root: Path) -> Path:
    """The lock file of a run's folder: held while a run writes there."""
    return Path(run_root) / LOCK_FILE


def export_paths(layer_folder: Path) -> tuple[Path, Path]:
    """``(descriptions.csv, final_results.csv)`` of a layer folder."""
    return layer_folder / DESCRIPTIONS_FILE, layer_folder / FINAL_RESULTS_FILE


def report_dir(layer_folder: Path) -> Path:
    """The HTML report of a layer folder."""
    return layer_folder / REPORT_FOLDER


def cache_dir(output_dir: Path) -> Path:
    """The per-item caches shared by every run under ``output_dir``."""
    return Path(output_dir) / CACHE_FOLDER


def images_dir(output_dir: Path) -> Path:
    """The generated images shared by every run under ``output_dir``."""
    return Path(output_dir) / IMAGES_FOLDER
