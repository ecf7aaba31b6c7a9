"""Screenshots of a report for the README: ``make report-screenshot`` (or ``python -m tests.report.screenshot``).

Describes the neurons with the config (reusing whatever is cached, so a second call costs only the screenshots),
renders the layer's report and saves PNGs of its index and of one neuron page from headless Chromium, reduced to a
256-colour palette so they stay small enough to commit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from dnd.config import load_config
from dnd.neurons import parse_neurons
from dnd.pipeline import Pipeline
from dnd.report.render import write_report
from tests.report import browser

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/offline.yaml")
    parser.add_argument("--layer", help="default: the config's first layer")
    parser.add_argument("--neurons", default="0-15", help="neurons to describe and show (default 0-15)")
    parser.add_argument("--page", type=int, help="the neuron whose page is shot (default: the first labelled one)")
    parser.add_argument("--set", action="append", default=[], help="config override, as for dnd describe")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    reason = browser.missing()
    if reason is not None:
        parser.exit(2, f"cannot take screenshots: {reason}\n")

    config = load_config(args.config, args.set)
    layer = args.layer or config.layers[0]
    neurons = parse_neurons(args.neurons)
    pipeline = Pipeline(config)
    pipeline.describe([layer], neurons)
    result = write_report(pipeline, layer, neurons)
    page = args.page if args.page is not None else _first_labelled(result.index.parent, neurons or [0])
    shots = {
        args.out / "report-index.png": result.index,
        args.out / "report-neuron.png": result.index.parent / "neurons" / f"{page}.html",
    }
    with browser.chromium() as driver:
        for png, html in shots.items():
            browser.screenshot(driver, html.resolve().as_uri(), png, max_height=1300)
            Image.open(png).convert("RGB").quantize(256).save(png, optimize=True)
            print(f"{png} ({png.stat().st_size // 1024} kB) from {html}")


def _first_labelled(report: Path, neurons: list[int]) -> int:
    """The first neuron whose page shows labels (else the first neuron)."""
    for neuron in neurons:
        if 'class="status status-ok"' in (report / "neurons" / f"{neuron}.html").read_text():
            return neuron
    return neurons[0]


if __name__ == "__main__":
    main()
