"""Distribution plots of a layer's report, drawn by matplotlib as small SVG files.

Text stays text (``svg.fonttype: none``: the browser's sans-serif font, no embedded glyph outlines) and the files
carry no date and fixed element ids, so the same numbers give the same bytes and a re-render leaves them unchanged.
"""

from __future__ import annotations

import io
import math
import statistics

#: Figure size in inches at 72 dpi (360 × 216 px), the colour of the bars and the number of bins.
FIGURE_SIZE = (5.0, 3.0)
BAR_COLOUR = "#3b6ea8"
BINS = 20


def histogram_svg(values: list[float], title: str, xlabel: str, value_range: tuple[float, float] | None = None) -> str:
    """An SVG histogram of ``values`` (finite ones; at least one), with the median marked."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        raise ValueError("histogram_svg needs at least one finite value")
    median = statistics.median(finite)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dnd-report", "font.size": 9}):
        figure = Figure(figsize=FIGURE_SIZE, dpi=72)
        figure.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.16)
        axes = figure.add_subplot()
        axes.hist(finite, bins=BINS, range=value_range, color=BAR_COLOUR, edgecolor="white", linewidth=0.5)
        axes.axvline(median, color="#c0392b", linestyle="--", linewidth=1, label=f"median {median:.3g}")
        axes.set_title(f"{title} (n = {len(finite)})")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("neurons")
        axes.legend(frameon=False, loc="upper left")
        axes.spines[["top", "right"]].set_visible(False)
        axes.ticklabel_format(axis="x", useOffset=False)  # values as they are, not as offsets from a constant
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # neurons are counted
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()
