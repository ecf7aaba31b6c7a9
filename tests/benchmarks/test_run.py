"""The benchmark runner: the default set, named extras, a failing benchmark that does not stop the others, and
results added to the earlier ones in outputs/bench/results.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import run


@pytest.fixture
def fake_suite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Replaces the benchmarks with three fakes (``fine`` and ``broken`` by default, ``extra`` by name); returns the
    names in the order they ran."""
    ran: list[str] = []

    def fine() -> dict[str, int]:
        ran.append("fine")
        return {"value": 1}

    def broken() -> dict[str, int]:
        ran.append("broken")
        raise RuntimeError("out of disk")

    def extra() -> dict[str, int]:
        ran.append("extra")
        return {"value": 2}

    monkeypatch.setattr(run, "ROOT", tmp_path)
    monkeypatch.setattr(run, "DEFAULT", {"broken": broken, "fine": fine})
    monkeypatch.setattr(run, "BENCHMARKS", {"broken": broken, "fine": fine, "extra": extra})
    return ran


def results_of(root: Path) -> dict:
    return json.loads((root / "outputs" / "bench" / "results.json").read_text())


def test_a_failing_benchmark_is_reported_and_the_others_still_run(fake_suite, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "argv", ["run"])
    with pytest.raises(SystemExit, match="failed: broken"):
        run.main()
    assert fake_suite == ["broken", "fine"]
    results = results_of(tmp_path)
    assert results["fine"] == {"value": 1}
    assert "out of disk" in results["broken"]["failed"]
    assert set(results["seconds"]) == {"broken", "fine"}


def test_named_extras_run_alone_and_keep_earlier_results(fake_suite, monkeypatch, tmp_path) -> None:
    out = tmp_path / "outputs" / "bench" / "results.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"fine": {"value": 0}, "seconds": {"fine": 3.0}}))
    monkeypatch.setattr(sys, "argv", ["run", "extra"])
    run.main()
    assert fake_suite == ["extra"]
    results = results_of(tmp_path)
    assert results["extra"] == {"value": 2} and results["fine"] == {"value": 0}
    assert results["seconds"]["fine"] == 3.0 and "extra" in results["seconds"]


def test_an_unknown_name_lists_the_benchmarks(fake_suite, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["run", "speed"])
    with pytest.raises(
        SystemExit, match=r"unknown benchmark\(s\) \['speed'\]; choose from \['broken', 'fine', 'extra'\]"
    ):
        run.main()
    assert fake_suite == []


def test_the_default_set_leaves_the_extras_out() -> None:
    assert not set(run.DEFAULT) & set(run.EXTRA)
    assert set(run.BENCHMARKS) == set(run.DEFAULT) | set(run.EXTRA)
