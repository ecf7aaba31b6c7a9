"""The hidden-layer quality table: every label set's numbers, and ours minus each with its interval."""

from __future__ import annotations

from benchmarks.bench_quality import _versus_ours, table
from dnd.evaluate.metrics import PairedDifference


def test_the_table_shows_ours_minus_each_baseline_with_its_interval():
    versus = _versus_ours(PairedDifference(items=64, mean=-0.02704, low=-0.06161, high=0.00773))
    assert versus == {"ours_minus_this": -0.027, "ours_minus_this_95": [-0.0616, 0.0077]}
    assert _versus_ours(None) == {}
    results = {
        "cifar_resnet20 layer3": {
            "simulation": {
                "ours (Label 1)": {"pearson": 0.202, "share_above_0.1": 0.77},
                "most frequent caption": {"pearson": 0.2291, "share_above_0.1": 0.81, **versus},
            },
            "ablation": {
                "ours (Label 1)": {"score": 0.0973},
                "random neurons": {"score": -0.0052, "ours_minus_this": 0.1025, "ours_minus_this_95": [0.05, 0.16]},
            },
        }
    }

    lines = table(results)

    assert lines[0].split() == [
        *("network", "labels", "simulation", "r", ">", "0.1", "ours", "−", "this", "[95", "%]"),
        *("ablation", "ours", "−", "this", "[95", "%]"),
    ]
    rows = {" ".join(line.split()[2:4]): line.split()[4:] for line in lines[1:]}
    assert rows["ours (Label"] == ["1)", "0.2020", "77%", "0.0973"]
    assert rows["most frequent"] == ["caption", "0.2291", "81%", "-0.0270", "[-0.0616,", "+0.0077]"]
    assert rows["random neurons"] == ["-0.0052", "+0.1025", "[+0.0500,", "+0.1600]"]
    assert table({"skipped": "no data"}) == ["quality: skipped (no data)"]
