"""The shipped reproductions (reports/examples/cpu/ and reports/examples/cpu_fair/) re-render their verdicts from their
own stores, on any checkout: the committed report data and a report built now from the committed store agree finding by
finding: verdict, seeds, interval, regime gate and the seeds at a sequential design's decision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sweepdae.report import build_report
from sweepdae.store import open_store

EXAMPLES = Path(__file__).resolve().parent.parent / "reports" / "examples"
# What each shipped reproduction covers: the cpu example all six findings grids, the fair CPU test the three grids its
# rules name (REPRODUCTION.md, "The fair CPU test: the reproduction").
SHIPPED = {
    "cpu": ("deconstruction", "tokenizer_dims", "noise_levels", "towards_dae", "model_size", "epochs"),
    "cpu_fair": ("tokenizer_dims", "noise_levels", "towards_dae"),
}
CASES = [(example, grid) for example, grids in SHIPPED.items() for grid in grids]


def _shipped(example: str, grid: str) -> dict[str, dict[str, Any]]:
    doc = json.loads((EXAMPLES / example / "data" / f"{grid}.json").read_text())
    (section,) = [s for s in doc["sections"] if s["profile"] == example]
    return {f["finding"]: f for f in section["findings"]}


def _approx(value: Any) -> Any:
    return None if value is None else pytest.approx(value)


@pytest.mark.parametrize("example", sorted(SHIPPED))
def test_each_shipped_example_holds_its_grids_data_report_and_store(example: str) -> None:
    folder = EXAMPLES / example
    assert (folder / "store.journal").is_file() and (folder / "report.html").is_file(), folder
    for grid in SHIPPED[example]:
        assert (folder / "data" / f"{grid}.json").is_file(), (example, grid)


@pytest.mark.parametrize(("example", "grid"), CASES, ids=[f"{e}/{g}" for e, g in CASES])
def test_verdicts_re_render_from_the_shipped_store(tmp_path: Path, example: str, grid: str) -> None:
    store_file = tmp_path / "store.journal"
    shutil.copy(EXAMPLES / example / "store.journal", store_file)  # a copy: reading never touches the committed file
    with open_store(f"journal:{store_file}", create=False) as store:
        report = build_report(store, [grid], runs_dir=EXAMPLES / example / "runs")
    (section,) = [s for s in report.sections if s.profile == example]
    now = {f["finding"]: f for f in section.findings}
    shipped = _shipped(example, grid)
    assert set(now) == set(shipped)
    for finding, f in now.items():
        s, where = shipped[finding], (example, grid, finding)
        assert (f["verdict"], f["seeds"]) == (s["verdict"], s["seeds"]), where
        assert f["interval"] == _approx(s["interval"]), where
        assert f.get("seeds_at_decision") == s.get("seeds_at_decision"), where
        assert f["design"] == s["design"], where
        gate, shipped_gate = f["gate"], s["gate"]
        assert (gate["passed"], gate["seeds"]) == (shipped_gate["passed"], shipped_gate["seeds"]), where
        assert gate["value"] == _approx(shipped_gate["value"]), where
        assert gate["interval"] == _approx(shipped_gate["interval"]), where
