"""The GPU benchmark: its extrapolation by hand, the cost model's use of a measured GPU file, and a whole run at the
smoke size on the CPU (every preset measured or skipped, rates and hours that follow from the counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_gpu, cost_model

RATES = {
    "record": 1000,
    "record_network": 500,
    "crop": 100,
    "caption": 50,
    "summarize": 8,
    "synthesize": 2,
    "score": 10,
}
PER_NEURON = {"crops": 5, "captions": 8, "llm_requests": 6, "generated_images": 40}


def test_work_items_and_stage_seconds_by_hand():
    items = cost_model.work_items({"layer3": 4, "fc": 2}, PER_NEURON, probe_images=100)
    # crop: only layer3 has maps, 4 x (K = 10 top images + 5 crops); score counts neurons
    assert items == {"record": 100, "crop": 60, "caption": 48, "summarize": 36, "synthesize": 240, "score": 6}
    seconds = cost_model.stage_seconds(
        items, {"record": 50, "crop": 30, "caption": 12, "summarize": 9, "synthesize": 2, "score": 3}
    )
    assert seconds == pytest.approx(
        {"record": 2, "crop": 2, "caption": 4, "summarize": 4, "synthesize": 120, "score": 2}
    )
    summary = cost_model.hours(seconds)
    assert summary["minutes_per_stage_on_1_gpu"]["synthesize"] == 2.0
    assert summary["total_1_gpu"] == round(134 / 3600, 2) and summary["total_8_gpus"] == round(134 / 8 / 3600, 2)
    assert cost_model.hours(seconds, splits_over_gpus=False)["total_8_gpus"] is None


def test_layer_and_network_extrapolated_by_hand():
    result = bench_gpu.extrapolate(RATES, PER_NEURON, released=False)
    # layer3, 1,024 neurons over 50,000 images: 50 + 153.6 + 163.84 + 768 + 20,480 + 102.4 s
    assert result["layer"]["total_1_gpu"] == round(21717.84 / 3600, 2)
    assert result["layer"]["total_8_gpus"] == round(21717.84 / 8 / 3600, 2)
    assert result["layer"]["minutes_per_stage_on_1_gpu"]["synthesize"] == round(20480 / 60, 1)
    # layer1-4 + fc: 4,840 neurons, 3,840 with maps; one pass at the network's record rate (50,000 / 500 s)
    network = 100 + 3840 * 15 / 100 + 4840 * 8 / 50 + 4840 * 6 / 8 + 4840 * 40 / 2 + 4840 / 10
    assert result["network"]["total_1_gpu"] == round(network / 3600, 2)
    assert result["network"]["minutes_per_stage_on_1_gpu"]["record"] == round(100 / 60, 1)
    assert bench_gpu.extrapolate(RATES, PER_NEURON, released=True)["layer"]["total_8_gpus"] is None


WORK = {"crops_per_neuron": 6.0, "unique_exemplar_images_per_neuron": 7.0}
CPU = {"decode_and_preprocess_s": 0.004, "attention_boxes_s": 0.0002, "crop_and_tensorize_s": 0.001}


def test_the_cost_model_says_its_gpu_figures_are_assumed_without_a_measured_file(tmp_path: Path):
    model = cost_model.estimate(WORK, CPU, measured_gpu=tmp_path / "none.json")
    assert "gpu_figures_measured" not in model and "A100" in model["job"]
    text = "\n".join(cost_model.lines(model))
    assert "assumed: A100 throughputs" in text and "no measured GPU run" in text


def test_the_cost_model_uses_a_measured_gpu_file(tmp_path: Path):
    layer = {
        "minutes_per_stage_on_1_gpu": {"record": 0.5, "synthesize": 300.0},
        "total_1_gpu": 5.01,
        "total_8_gpus": 0.63,
    }
    measured = {
        "device": "NVIDIA H200",
        "when": "2026-12-03T12:00:00+0000",
        "assumed": "stage 4's LLM at 1 s per request",
        "presets": {"mixed precision (default)": {"rates": RATES, "layer": layer}},
    }
    path = tmp_path / "gpu-real-cuda.json"
    path.write_text(json.dumps(measured))
    model = cost_model.estimate(WORK, CPU, measured_gpu=path)
    assert model["hours"] == {"mixed precision (default)": layer}
    assert model["gpu_figures_measured"]["device"] == "NVIDIA H200"
    assert "released code (one at a time)" in model["hours_from_assumed_figures"]  # the assumed ones beside
    assert "NVIDIA H200" in model["job"]
    text = "\n".join(cost_model.lines(model))
    assert "measured on NVIDIA H200" in text and "mixed precision (default): 5.01 h on 1 GPU, 0.63 h on 8" in text
    assert "with the assumed A100 figures instead" in text


def test_a_smoke_run_measures_every_preset_the_cpu_can_run(tmp_path: Path):
    results = bench_gpu.run(size="smoke", out_dir=tmp_path)
    assert json.loads((tmp_path / "gpu-smoke-cpu.json").read_text()) == results
    spec, presets = bench_gpu.SIZES["smoke"], results["presets"]
    assert set(presets) == set(bench_gpu.PRESETS)
    assert {name for name, preset in presets.items() if "skipped" in preset} == {"bfloat16 target", "compiled target"}
    assert all(model["parameters"] > 0 for model in results["models"].values())

    default, released = presets[bench_gpu.DEFAULT_PRESET], presets[bench_gpu.RELEASED]
    assert set(default["stages"]) == {*bench_gpu.STAGES, "record_network"}
    assert default["stages"]["record"]["items"] == spec.probe_images
    assert released["stages"]["record"]["items"] == spec.released_probe_images
    # one concept shared by every neuron: Q images generated once
    assert default["stages"]["synthesize"]["counts"]["images_generated"] == spec.images_per_concept
    assert default["stages"]["score"]["items"] == spec.neurons and released["stages"]["score"]["items"] == 1
    for stage in default["stages"].values():
        rounding = 5e-4 / stage["seconds"]  # seconds are kept to the millisecond
        assert stage["per_s"] == pytest.approx(stage["items"] / stage["seconds"], rel=max(rounding, 1e-3))
        assert stage["peak_memory_mb"] > 0

    # the presets change only their own stages; the generator presets generate with their own settings
    fast, turbo = presets["fast: DPM-Solver 20 steps (configs/fast.yaml)"], presets["SD-Turbo, 1 step"]
    assert set(fast["stages"]) == set(turbo["stages"]) == {"synthesize"}
    assert fast["config"] == "fast.yaml" and turbo["settings"] == list(bench_gpu.TURBO_SETTINGS)
    assert fast["rates"]["record"] == default["rates"]["record"]
    assert fast["rates"]["synthesize"] == fast["stages"]["synthesize"]["per_s"] != default["rates"]["synthesize"]
    exact = presets["exact (float32 target)"]
    assert set(exact["stages"]) == {"record", "record_network", "crop", "score"}
    assert exact["rates"]["synthesize"] == default["rates"]["synthesize"]
    assert released["rates"]["summarize"] == 1 / cost_model.LLM_SECONDS_PER_REQUEST
    assert default["rates"]["summarize"] == cost_model.LLM_CONCURRENCY / cost_model.LLM_SECONDS_PER_REQUEST

    # the hours follow from the rates and the work per neuron
    ours = results["per_neuron"]["ours"]
    assert ours["captions"] == default["stages"]["caption"]["counts"]["captioned"] / spec.neurons
    assert results["per_neuron"][bench_gpu.RELEASED]["generated_images"] == cost_model.GENERATED_PER_NEURON
    assert default["layer"] == bench_gpu.extrapolate(default["rates"], ours, released=False)["layer"]
    assert released["layer"]["total_8_gpus"] is None

    lines = bench_gpu.table(results)
    assert len(lines) == 3 + len(bench_gpu.PRESETS) + 1
    row = next(line for line in lines if line.startswith(bench_gpu.DEFAULT_PRESET))
    assert f"{default['layer']['total_1_gpu']:.2f}" in row and f"{default['network']['total_1_gpu']:.2f}" in row
    assert any(line.startswith("compiled target") and "skipped: CUDA only" in line for line in lines)
