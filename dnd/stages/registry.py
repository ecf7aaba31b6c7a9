"""The stages of Describe-and-Dissect, in the order they run: the one list the pipeline reads by default."""

from __future__ import annotations

from dnd.stages import caption, crop, record, score, summarize, synthesize
from dnd.stages.base import StageSpec

STAGES: tuple[StageSpec, ...] = (record.SPEC, crop.SPEC, caption.SPEC, summarize.SPEC, synthesize.SPEC, score.SPEC)
#: Their names, in order (``stop_after`` in :mod:`dnd.config` lists the same names; a test checks that they agree).
STAGE_NAMES: tuple[str, ...] = tuple(spec.name for spec in STAGES)
