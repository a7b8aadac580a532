"""The shipped CPU reproduction (reports/examples/cpu/) re-renders its verdicts from its own store, on any checkout:
the committed report data and a report built now from the committed store agree finding by finding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sweepdae.report import build_report
from sweepdae.store import open_store

EXAMPLE = Path(__file__).resolve().parent.parent / "reports" / "examples" / "cpu"
SIX = ("deconstruction", "tokenizer_dims", "noise_levels", "towards_dae", "model_size", "epochs")


def _shipped(name: str) -> dict[str, dict[str, object]]:
    doc = json.loads((EXAMPLE / "data" / f"{name}.json").read_text())
    (section,) = [s for s in doc["sections"] if s["profile"] == "cpu"]
    return {f["finding"]: f for f in section["findings"]}


def test_the_shipped_example_holds_the_six_findings_grids_and_its_store() -> None:
    assert (EXAMPLE / "store.journal").is_file() and (EXAMPLE / "report.html").is_file()
    for name in SIX:
        assert (EXAMPLE / "data" / f"{name}.json").is_file(), name


@pytest.mark.parametrize("name", SIX)
def test_verdicts_re_render_from_the_shipped_store(tmp_path: Path, name: str) -> None:
    store_file = tmp_path / "store.journal"
    shutil.copy(EXAMPLE / "store.journal", store_file)  # a copy: reading never touches the committed file
    with open_store(f"journal:{store_file}", create=False) as store:
        report = build_report(store, [name], runs_dir=EXAMPLE / "runs")
    (section,) = [s for s in report.sections if s.profile == "cpu"]
    now = {f["finding"]: f for f in section.findings}
    shipped = _shipped(name)
    assert set(now) == set(shipped)
    for finding, f in now.items():
        s = shipped[finding]
        assert (f["verdict"], f["seeds"]) == (s["verdict"], s["seeds"]), (name, finding)
        assert f["interval"] == pytest.approx(s["interval"]) if s["interval"] else f["interval"] is None
