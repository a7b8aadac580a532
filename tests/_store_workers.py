"""Bodies of the concurrent store workers that tests/test_store.py spawns (a module of its own so a spawned
process can import them by name)."""

from __future__ import annotations

import time
from typing import Any


def drain_queue(url: str, owner: str, cells: list[dict[str, Any]], barrier: Any, results: Any) -> None:
    """Body of one concurrent test worker (a spawned process): wait at `barrier`, enqueue `cells` (the same
    keys as the other workers, to provoke duplicate WAITING trials), then claim and complete until the queue is
    empty; put (owner, [completed keys]) on `results`."""
    from sweepdae.store import open_store

    store = open_store(url)
    barrier.wait(timeout=60)
    store.enqueue(cells)
    done: list[str] = []
    while (claim := store.claim(owner, lease_s=600)) is not None:
        if store.complete(claim, metrics={"objective": 1.0, "worker": float(len(done))}, info={"owner": owner}):
            done.append(claim.key)
    store.close()
    results.put((owner, done))


def chaos_worker(url: str, owner: str, seed: int, n_cells: int, barrier: Any, results: Any) -> None:
    """A worker that misbehaves on purpose (a spawned process): it enqueues all `n_cells` cells (racing the
    others), reaps stale trials before each claim, and per claim either completes (65%), fails asking for a
    retry while attempt < 3 (20%), or overruns its 0.3 s lease and completes late (15%; always for its first
    claim, and its second always fails). Stops after six empty polls in a row; puts (owner, counts of what
    happened) on `results`."""
    import random
    from collections import Counter

    from sweepdae.store import open_store

    rng = random.Random(seed)
    store = open_store(url)
    cells = [{"key": f"key{i:03d}", "label": f"cell {i}", "recipe": {"seed": i}, "grid": "g"} for i in range(n_cells)]
    rng.shuffle(cells)
    barrier.wait(timeout=60)
    store.enqueue(cells)
    seen: Counter[str] = Counter()
    idle = 0
    while idle < 6:
        store.reap_stale()
        claim = store.claim(owner, lease_s=0.3)
        if claim is None:
            idle += 1
            time.sleep(0.2)
            continue
        idle = 0
        # Each worker's first claim overruns its lease and its second fails: every run exercises both paths.
        roll = (0.0, 0.2)[seen.total()] if seen.total() < 2 else rng.random()
        if roll < 0.15:
            time.sleep(0.5)  # the lease runs out; another worker reaps us; we finish anyway
            kept = store.complete(claim, metrics={"objective": 1.0}, info={"owner": owner})
            seen[f"late-complete-{kept}"] += 1
        elif roll < 0.35:
            store.fail(claim, failure_class="oom", error="simulated", traceback_tail="", retry=claim.attempt < 3,
                       info={"recipe_overrides": {"micro_batch": 32}})
            seen["fail"] += 1
        else:
            store.heartbeat(claim)
            kept = store.complete(claim, metrics={"objective": 1.0}, info={"owner": owner})
            seen[f"complete-{kept}"] += 1
    store.close()
    results.put((owner, dict(seen)))
