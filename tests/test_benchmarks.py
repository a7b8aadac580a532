"""The prepared GPU benchmark runs its code paths on the CPU (--smoke), so it works the day a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    figures = json.loads(out.read_text())
    assert len(figures["runs"]) == 3 and all(r["images_per_s"] > 0 for r in figures["runs"])
    assert [r["cells"] for r in figures["packing"]] == [1, 2, 4]
