"""Run every benchmark, print the results and write them to outputs/bench/results.json."""

from __future__ import annotations

import json
import platform
import time

import torch
from rich.console import Console
from rich.pretty import Pretty

from benchmarks import bench_describe, bench_record, bench_report
from benchmarks.common import ROOT

BENCHMARKS = {"record": bench_record.run, "describe": bench_describe.run, "report": bench_report.run}


def main() -> None:
    console = Console()
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for name, bench in BENCHMARKS.items():
        console.rule(name)
        results[name] = bench()
        console.print(Pretty(results[name]))
    out = ROOT / "outputs" / "bench" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    console.print(f"written: {out}")


if __name__ == "__main__":
    main()
