"""The registry: the method's stages in order, each from its own module, named as the config names them."""

from __future__ import annotations

import typing

from dnd.config import RunConfig
from dnd.stages.registry import STAGE_NAMES, STAGES


def test_the_six_stages_in_method_order_each_after_the_stages_it_needs():
    assert STAGE_NAMES == ("record", "crop", "caption", "summarize", "synthesize", "score")
    for position, spec in enumerate(STAGES):
        assert set(spec.needs) <= set(STAGE_NAMES[:position]), spec.name
        assert (spec.compute or spec.run).__module__ == f"dnd.stages.{spec.name}"
    assert [spec.per_neuron for spec in STAGES] == [False, True, True, True, True, True]


def test_stop_after_accepts_exactly_the_stage_names():
    (literal, _none) = typing.get_args(RunConfig.model_fields["stop_after"].annotation)
    assert typing.get_args(literal) == STAGE_NAMES
