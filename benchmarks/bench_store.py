"""Store throughput: enqueue and claim + complete rates on the journal file, SQLite and PostgreSQL backends.

    .venv/bin/python benchmarks/bench_store.py [--cells 1000 --small 100 --backends journal,sqlite,postgresql
                                                --budget-s 120]

Each backend gets a fresh store per study size. One `enqueue` call queues every cell (as `sweepdae run` does for a
grid), then one process claims and completes until the queue is empty, with `keys` = the grid's keys as the
coordinator passes them. Cells carry a real resolved recipe (~1.6 kB of JSON). Claim cost per call is measured at
two study sizes (--small and --cells) to show how it grows with the study. PostgreSQL runs on a throwaway local
server (tests/_pg.py; fsync off); it is skipped with the reason when the server binaries are missing.
A drain longer than --budget-s is stopped and its row marked partial (rates are then over the cells done).
"""

from __future__ import annotations

import argparse
import functools
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test PostgreSQL launcher

import _pg as pg_testing  # noqa: E402

from sweepdae.recipe import recipe_from_flat  # noqa: E402
from sweepdae.store import open_store  # noqa: E402


@dataclass
class Result:
    n: int
    enqueue_s: float
    claim_ms: list[float]
    complete_ms: list[float]
    drain_s: float  # claim + complete of every cell (or of those done within --budget-s), wall

    @property
    def done(self) -> int:
        return len(self.complete_ms)

    @property
    def rate(self) -> float:
        """Cells claimed and completed per second."""
        return self.done / self.drain_s

    def first_claims_ms(self, k: int = 20) -> float:
        return statistics.mean(self.claim_ms[:k])


def make_cells(n: int) -> list[dict[str, Any]]:
    """n cells of one grid, each with a distinct fully resolved recipe (what `enqueue_plan` sends)."""
    cells = []
    for i in range(n):
        r = recipe_from_flat({"data.name": "fashion-mnist", "tokenizer.latent_dim": 1 + i % 16, "seed": i})
        cells.append({"key": r.key(), "label": f"cell {i}", "recipe": r.to_dict(), "grid": "bench"})
    return cells


def run_one(url: str, cells: list[dict[str, Any]], budget_s: float) -> Result:
    keys = {c["key"] for c in cells}
    with open_store(url) as store:
        t0 = time.perf_counter()
        outcome = store.enqueue(cells)
        enqueue_s = time.perf_counter() - t0
        assert sum(v == "queued" for v in outcome.values()) == len(cells), "fresh store expected"
        claim_ms, complete_ms = [], []
        t_drain = time.perf_counter()
        while time.perf_counter() - t_drain < budget_s:
            t = time.perf_counter()
            claim = store.claim("bench", lease_s=600, keys=keys)
            claim_ms.append(1e3 * (time.perf_counter() - t))
            if claim is None:
                claim_ms.pop()  # the empty-queue poll is not a claim
                break
            t = time.perf_counter()
            assert store.complete(claim, metrics={"objective": 1.0, "probe_top1": 50.0}, info={"timings": {}})
            complete_ms.append(1e3 * (time.perf_counter() - t))
        drain_s = time.perf_counter() - t_drain
    return Result(len(cells), enqueue_s, claim_ms, complete_ms, drain_s)


def fresh_schema(server_url: str) -> str:
    return pg_testing.create_schema(server_url, f"b_{uuid.uuid4().hex[:12]}")


def backend_urls(names: list[str], tmp: Path) -> tuple[dict[str, Callable[[], str]], list[Callable[[], None]]]:
    """backend -> a factory of fresh store URLs; plus the cleanup calls (the PostgreSQL server's stop)."""
    factories: dict[str, Callable[[], str]] = {}
    stops: list[Callable[[], None]] = []
    for name in names:
        if name == "journal":
            factories[name] = lambda: f"journal:{tmp / uuid.uuid4().hex}.journal"
        elif name == "sqlite":
            factories[name] = lambda: f"sqlite:///{tmp / uuid.uuid4().hex}.db"
        elif name == "postgresql":
            reason = pg_testing.postgres_unavailable_reason()
            if reason:
                print(f"postgresql skipped: {reason}")
                continue
            server = pg_testing.start_postgres_server(tmp / "pg")
            stops.append(server.stop)
            factories[name] = functools.partial(fresh_schema, server.url)
        else:
            raise SystemExit(f"unknown backend {name!r}; valid: journal, sqlite, postgresql")
    return factories, stops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--small", type=int, default=100, help="the smaller study size claim cost is compared with")
    ap.add_argument("--backends", default="journal,sqlite,postgresql")
    ap.add_argument("--budget-s", type=float, default=120.0, help="stop a drain after this long (marked partial)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the PostgreSQL server
    sizes = sorted({a.small, a.cells})
    cells = make_cells(max(sizes))
    with tempfile.TemporaryDirectory() as tmp:
        factories, stops = backend_urls(a.backends.split(","), Path(tmp))
        try:
            res = {(b, n): run_one(f(), cells[:n], a.budget_s) for b, f in factories.items() for n in sizes}
        finally:
            for stop in stops:
                stop()
    print(f"one process, {len(repr(cells[0]['recipe']))}-char recipes; claim with keys = the grid's keys; "
          f"ms are means per call")
    print(f"{'backend':<11}{'cells':>6}{'enqueue c/s':>13}{'claim ms':>10}{'first 20':>10}{'last 20':>9}"
          f"{'complete ms':>13}{'claim+compl c/s':>17}{'drain s':>9}")
    for (b, n), r in res.items():
        partial = "" if r.done == n else f"  (partial: {r.done} of {n} within --budget-s {a.budget_s:.0f})"
        print(f"{b:<11}{n:>6}{n / r.enqueue_s:>13.0f}{statistics.mean(r.claim_ms):>10.1f}{r.first_claims_ms():>10.1f}"
              f"{statistics.mean(r.claim_ms[-20:]):>9.1f}{statistics.mean(r.complete_ms):>13.1f}"
              f"{r.rate:>17.1f}{r.drain_s:>9.1f}{partial}")
    for b in factories:
        if len(sizes) == 2:
            lo, hi = res[(b, sizes[0])], res[(b, sizes[1])]
            growth = hi.first_claims_ms() / lo.first_claims_ms()
            print(f"{b}: first-20 claim cost at {hi.n} vs {lo.n} cells: {growth:.1f}x; claim+complete rate "
                  f"{hi.rate / lo.rate:.2f}x the small study's")


if __name__ == "__main__":
    main()
