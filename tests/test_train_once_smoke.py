"""The shipped probe_t grid, as a user runs it: one training for its ten cells (slow tier: about 2-5 minutes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_probe_t_smoke_trains_once(tmp_path: Path, sweepdae: Any) -> None:
    p = sweepdae(tmp_path, "run", "probe_t", "--profile", "smoke", timeout=1500)
    assert p.returncode == 0, p.stderr
    s = sweepdae(tmp_path, "status", "probe_t", "--profile", "smoke", "--json")
    assert s.returncode == 0, s.stderr
    rows = json.loads(s.stdout)["cells"]
    assert len(rows) == 10 and {r["status"] for r in rows} == {"done"}
    assert len({r["train_key"] for r in rows}) == 1
    assert sum(bool(r["reused_training"]) for r in rows) == 9
    assert len(list((tmp_path / "runs" / "_train").iterdir())) == 1
