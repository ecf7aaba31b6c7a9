"""The HTML report of a 1,024-neuron layer: time to render it (first, and again with every thumbnail cached) and the
weight of its index page (the HTML with everything it loads: stylesheet, script, plots and thumbnails).

The run is synthetic but made by the pipeline: all six stage modules over 512 probing images of 64 × 64 pixels
(a square of a random colour on each) on a 1 × 1-convolution network with 1,024 channels (random colour mixtures,
a 16 × 16 map each), with the stand-in backends of the report tests
(``tests/report/small_run.py``) and the method's defaults for what a page shows (top-10 images, 10 exemplars,
5 summaries, 10 images per concept). Its stand-in LLM varies its concepts, so the layer has many distinct ones, as
a real one does.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from dnd.backends.llms import ChatRequest
from dnd.report.render import write_report
from tests.report.small_run import LAYER, ReportLLM, small_run

NEURONS = 1024
IMAGES = 512
SIZE = 64
#: Words the stand-in LLM picks a second word of each concept from.
WORDS = ("stripes", "dots", "fur", "leaves", "waves", "grid", "sky", "stones", "petals", "scales", "sand", "glass")


class VariedLLM(ReportLLM):
    """The report tests' LLM, but each summary names its colour and a word picked by a hash of the question, so
    neurons whose captions are shuffled differently propose different concepts."""

    def _answer(self, request: ChatRequest) -> str:
        answer = super()._answer(request)
        if "," in answer or answer.endswith("shapes"):
            return answer  # kept: shortened captions, and the answers that must fail
        digest = hashlib.sha256(repr(request.messages).encode() + bytes([request.sample])).digest()
        return f"{re.sub(r'[^a-z ]', '', answer).split()[0] or 'red'} {WORDS[digest[0] % len(WORDS)]}"


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        overrides = ("record.top_k=10", "crop.exemplars=10", "summarize.n_summaries=5")
        overrides += ("synthesize.images_per_concept=10",)
        layer_run = small_run(
            Path(tmp), *overrides, channels=NEURONS, images=IMAGES, size=SIZE, varied=True, llm=VariedLLM()
        )
        made = time.perf_counter() - started
        first = write_report(layer_run.pipeline, LAYER)
        again = write_report(layer_run.pipeline, LAYER)
        report = first.index.parent
        index_bytes = _page_weight(first.index)
        return {
            "neurons": first.neurons,
            "seconds_to_make_the_run": round(made, 1),
            "seconds_first_render": round(first.seconds, 1),
            "seconds_render_again_all_cached": round(again.seconds, 1),
            "thumbnails_written_first": first.thumbnails.written,
            "thumbnails_reused_again": again.thumbnails.reused,
            "heat_map_forward_batches": first.thumbnails.forward_batches,
            "index_mb_with_everything_it_loads": round(index_bytes / 1e6, 2),
            "index_html_mb": round(first.index.stat().st_size / 1e6, 2),
            "report_folder_mb": round(sum(p.stat().st_size for p in report.rglob("*") if p.is_file()) / 1e6, 1),
            "under_one_minute": first.seconds < 60,
            "index_under_5_mb": index_bytes < 5e6,
        }


def _page_weight(page: Path) -> int:
    """Bytes of ``page`` and of every file it refers to (src / href of images, stylesheet, script)."""
    text = page.read_text()
    references = set(re.findall(r'(?:src|href)="([^"#]+)"', text))
    files = {page.parent / ref for ref in references if not ref.endswith(".html")}
    return page.stat().st_size + sum(path.stat().st_size for path in files if path.is_file())
