"""Run the benchmarks, print the results and add them to outputs/bench/results.json.

``python -m benchmarks.run`` runs the default set (``make bench``, about 12 minutes on 2 CPU cores);
``python -m benchmarks.run naive summarize`` runs the named ones, the extra ones included. A benchmark that fails is
reported and the others still run; the exit status says whether any failed.
"""

from __future__ import annotations

import functools
import json
import platform
import sys
import time
import traceback
from typing import Any

import torch
from rich.console import Console
from rich.pretty import Pretty

from benchmarks import (
    bench_cpu,
    bench_describe,
    bench_final_layer,
    bench_gpu,
    bench_quality,
    bench_record,
    bench_report,
    bench_scale,
    bench_summarize,
    cost_model,
)
from benchmarks.common import ROOT

#: ``make bench``: the numbers the README states, each from its own benchmark.
DEFAULT = {
    "cpu": bench_cpu.run,
    "record": bench_record.run,
    "describe": bench_describe.run,
    "final_layer": bench_final_layer.run,
    "quality": bench_quality.run,
    "report": bench_report.run,
    "scale": bench_scale.run,
}
#: Run by name only: the naive way's time (the scale benchmark counts its work per neuron in every default run),
#: stage 4 alone across three layers, the tool for editing prompts/ (also ``python -m benchmarks.bench_summarize``),
#: and the paper's setting at real size on a GPU (a small smoke run on a CPU; also ``python -m benchmarks.bench_gpu``).
EXTRA = {"naive": bench_describe.run_naive, "summarize": bench_summarize.run, "gpu": bench_gpu.run}
BENCHMARKS = {**DEFAULT, **EXTRA}


def main() -> None:
    console = Console()
    only = sys.argv[1:] or list(DEFAULT)  # e.g. python -m benchmarks.run cpu final_layer naive
    unknown = [name for name in only if name not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    out = ROOT / "outputs" / "bench" / "results.json"
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}  # earlier runs of the others
    threads = torch.get_num_threads()
    results["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "cpus": threads}
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    seconds, failed = results.setdefault("seconds", {}), []
    for name in only:
        console.rule(name)
        started = time.perf_counter()
        try:
            results[name] = BENCHMARKS[name]()
        except Exception:  # the others still run; the traceback is printed and the exit status says so
            failed.append(name)
            results[name] = {"failed": traceback.format_exc(limit=-3)}
            console.print_exception()
        else:
            console.print(Pretty(results[name]))
        seconds[name] = round(time.perf_counter() - started, 1)
        console.print(f"{name}: {seconds[name]:.0f} s")
    console.rule("in short")
    _print_headlines(console, {name: results[name] for name in only})
    if "scale" in only and "failed" not in results["scale"]:  # the scaling table, work per neuron, cost model
        console.rule("scale, in short")
        for line in bench_scale.table(results["scale"]):
            console.print(line, highlight=False, soft_wrap=True)
        if "cost_model" in results["scale"]:
            for line in cost_model.lines(results["scale"]["cost_model"]):
                console.print(line, highlight=False, soft_wrap=True)
    if "quality" in only and "failed" not in results["quality"]:  # hidden-layer label quality, per network
        console.rule("hidden-layer label quality, in short")
        for line in bench_quality.table(results["quality"]):
            console.print(line, highlight=False, soft_wrap=True)
    if "gpu" in only and "failed" not in results["gpu"]:  # measured rates and hours per preset
        console.rule("GPU cost, in short")
        for line in bench_gpu.table(results["gpu"]):
            console.print(line, highlight=False, soft_wrap=True)
    console.print(f"{len(only)} benchmarks in {sum(seconds[name] for name in only) / 60:.1f} min")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    console.print(f"written: {out}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (tracebacks above)")


def _print_headlines(console: Console, results: dict[str, Any]) -> None:
    """The numbers the issues ask for, one line each (unwrapped, so that a line can be copied whole)."""
    say = functools.partial(console.print, highlight=False, soft_wrap=True)
    cpu, describe, final, naive = (results.get(name, {}) for name in ("cpu", "describe", "final_layer", "naive"))
    if "tuned_over_untuned" in cpu:
        say(
            f"CPU forward (EfficientNet-Lite0, batch {cpu['batch']}): untuned {cpu['untuned']['images_per_s']} img/s, "
            f"malloc {cpu['malloc']['images_per_s']}, tuned {cpu['tuned']['images_per_s']}: "
            f"tuned/untuned = {cpu['tuned_over_untuned']}x"
        )
    if "wall_seconds_total" in describe:
        say(
            f"offline describe, {describe['neurons']} neurons of {describe['layer']}: "
            f"{describe['wall_seconds_total'] / 60:.1f} min ({describe['wall_seconds_per_stage']}), "
            f"{describe['llm_requests_per_neuron']} LLM requests/neuron, "
            f"{describe['captions_per_unique_image']} captions/unique image"
        )
    if "naive_over_ours" in naive:
        say(
            f"stages 2-6 for {naive['neurons']} neurons one at a time, nothing shared: {naive['naive_over_ours']}x "
            f"the time of describing them together ({naive['naive_seconds_stages_2_to_6']} s against "
            f"{naive['ours_seconds_stages_2_to_6']} s)"
        )
    if "final_layer_minilm_cosine" in final:
        table = final["final_layer_minilm_cosine"]
        say(
            f"CIFAR-10 ResNet-20 fc, mean MiniLM cos(Label 1, class): ours {table['ours_label_1']}, "
            f"constant 'images' {table['constant_images']}, most frequent caption {table['most_frequent_caption']}"
        )


if __name__ == "__main__":
    main()
