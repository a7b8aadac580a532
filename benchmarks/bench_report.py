"""Time `build_report` and `write_reports` (HTML + LaTeX + CSV) on a synthetic store of 5,000 cells.

    .venv/bin/python benchmarks/bench_report.py [--cells 5000] [--repeat 3]

Prints seconds per phase (best of --repeat). The store is in memory, so this measures the report alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the synthetic store of the tests

from _synthetic import synthetic_grids  # noqa: E402

from sweepdae.report import build_report, write_reports  # noqa: E402


class MemoryStore:
    """The two store calls a report makes, over in-memory records."""

    def __init__(self, grids: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        self._grids = grids
        self._frame = pd.DataFrame(rows)

    def grids(self) -> list[dict[str, Any]]:
        return self._grids

    def cells(self, keys: list[str] | None = None) -> pd.DataFrame:
        if keys is None:
            return self._frame
        return self._frame[self._frame["key"].isin(keys)].reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    grids, rows = synthetic_grids(args.cells)
    store = MemoryStore(grids, rows)
    n = sum(len(g["cells"]) for g in grids)
    build_s, write_s = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        build_report(store)
        build_s.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            paths = write_reports(store, grids=None, out=Path(tmp), html=True, latex=True, csv=True)
            write_s.append(time.perf_counter() - t)
    print(f"cells: {n} in {len(grids)} grids ({len(rows)} in the store frame), {len(paths)} files written")
    print(f"build_report: {min(build_s):.2f} s (best of {args.repeat})")
    print(f"write_reports (html + latex + csv, includes build_report and figures): {min(write_s):.2f} s "
          f"(best of {args.repeat})")


if __name__ == "__main__":
    main()
