"""Where outputs live."""

from __future__ import annotations

from pathlib import Path

from dnd import layout


def test_the_output_tree():
    out = Path("outputs")
    run = layout.run_dir(out, "offline")
    assert run == Path("outputs/offline")
    assert layout.stage_dir(run, "blocks.10", "crop", "0123") == Path("outputs/offline/blocks.10/crop-0123")
    assert layout.partial_dir(run, "blocks.10", "record", "ab") == Path("outputs/offline/blocks.10/.record-ab.partial")
    assert layout.staging_dir(run) == Path("outputs/offline/.tmp")
    assert layout.export_paths(layout.layer_dir(run, "fc")) == (
        Path("outputs/offline/fc/descriptions.csv"),
        Path("outputs/offline/fc/final_results.csv"),
    )
    assert (layout.cache_dir(out), layout.images_dir(out)) == (Path("outputs/cache"), Path("outputs/images"))
    assert Path("outputs/offline/fc/crop-0123").match(layout.stage_pattern("crop"))
