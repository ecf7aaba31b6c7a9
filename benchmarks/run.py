"""Run every benchmark, print the results and write them to outputs/bench/results.json."""

from __future__ import annotations

import json
import platform
import sys
import time
from typing import Any

import torch
from rich.console import Console
from rich.pretty import Pretty

from benchmarks import (
    bench_cpu,
    bench_describe,
    bench_final_layer,
    bench_record,
    bench_report,
    bench_scale,
    bench_summarize,
    cost_model,
)
from benchmarks.common import ROOT

BENCHMARKS = {
    "cpu": bench_cpu.run,
    "record": bench_record.run,
    "describe": bench_describe.run,
    "summarize": bench_summarize.run,
    "final_layer": bench_final_layer.run,
    "report": bench_report.run,
    "scale": bench_scale.run,
}


def main() -> None:
    console = Console()
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    only = sys.argv[1:] or list(BENCHMARKS)  # e.g. python -m benchmarks.run cpu final_layer scale
    unknown = [name for name in only if name not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    for name in only:
        console.rule(name)
        started = time.perf_counter()
        results[name] = BENCHMARKS[name]()
        console.print(Pretty(results[name]))
        console.print(f"{name}: {time.perf_counter() - started:.0f} s")
    _print_headlines(console, results)
    if "scale" in results:  # the scaling table, the work per neuron and the cost model, short
        console.rule("scale, in short")
        for line in bench_scale.table(results["scale"]):
            console.print(line, highlight=False, soft_wrap=True)
        if "cost_model" in results["scale"]:
            for line in cost_model.lines(results["scale"]["cost_model"]):
                console.print(line, highlight=False, soft_wrap=True)
    out = ROOT / "outputs" / "bench" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    console.print(f"written: {out}")


def _print_headlines(console: Console, results: dict[str, Any]) -> None:
    """The numbers the issues ask for, one line each."""
    cpu, describe, final = (results.get(name, {}) for name in ("cpu", "describe", "final_layer"))
    if "tuned_over_untuned" in cpu:
        console.print(
            f"CPU forward (EfficientNet-Lite0, batch {cpu['batch']}): untuned {cpu['untuned']['images_per_s']} img/s, "
            f"malloc {cpu['malloc']['images_per_s']}, tuned {cpu['tuned']['images_per_s']}: "
            f"tuned/untuned = {cpu['tuned_over_untuned']}x"
        )
    if "wall_seconds_total" in describe:
        console.print(
            f"offline describe, {describe['neurons']} neurons of {describe['layer']}: "
            f"{describe['wall_seconds_total'] / 60:.1f} min ({describe['wall_seconds_per_stage']}), "
            f"{describe['llm_requests_per_neuron']} LLM requests/neuron, "
            f"{describe['captions_per_unique_image']} captions/unique image"
        )
    if "final_layer_minilm_cosine" in final:
        table = final["final_layer_minilm_cosine"]
        console.print(
            f"CIFAR-10 ResNet-20 fc, mean MiniLM cos(Label 1, class): ours {table['ours_label_1']}, "
            f"constant 'images' {table['constant_images']}, most frequent caption {table['most_frequent_caption']}"
        )


if __name__ == "__main__":
    main()
