"""`sweepdae forget` and `sweepdae gc`: remove cells' results, lost trainings, and trainings no cell uses."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from sweepdae.cell import TRAIN_DIR, TRAINED
from sweepdae.errors import SweepdaeError, printable
from sweepdae.grid import Plan
from sweepdae.runner import runs_dir_for
from sweepdae.runner.coordinator import LEGACY_MARK, STORES_DIR, training_stores
from sweepdae.store import Store, open_store


def forget_missing_trainings(store_url: str | None, plan: Plan, cells: list[Any], *, runs_dir: str | None,
                             err: Console) -> None:
    """Forget the finished trainings of `cells` whose folder is not under the runs folder, so the next run trains
    them again; the cells keep their results."""
    tks = sorted({c.train_key for c in cells})
    s = open_store(store_url, create=False)
    try:
        runs = _runs_dir(runs_dir, s)
        status = s.training_status(tks)
        lost = [tk for tk in tks if status.get(tk) == "done" and not (runs / TRAIN_DIR / tk / TRAINED).exists()]
        gone = s.forget_trainings(lost)
    finally:
        s.close()
    err.print(f"forgot {len(gone)} of {len(tks)} trainings of {printable(plan.grid.name)} (finished, with no "
              f"folder under {printable(str(runs))}); the next run trains them again")


def forget_cells(store_url: str | None, plan: Plan, cells: list[Any], *, runs_dir: str | None,
                 err: Console) -> None:
    """Remove the cells' results (store and cell folders) so the next run evaluates them again."""
    s = open_store(store_url, create=False)
    try:
        runs = _runs_dir(runs_dir, s)
        # All or nothing, in this order: every key is checked (none queued or running) before anything changes;
        # then the folders go; the store's marks come last. A folder not found here (another runs folder, another
        # machine) keeps its result.json, which the next run does not record again: the store keeps when each key
        # was forgotten and the coordinator sets an older result aside.
        keys = s.forgettable([c.key for c in cells])
        missing: list[str] = []
        for key in keys:
            try:
                shutil.rmtree(runs / key)
            except FileNotFoundError:
                missing.append(key)
            except OSError as e:
                raise SweepdaeError(f"forget: cannot remove {printable(str(runs / key))}: {printable(str(e))}; "
                                    "the store still holds its result") from None
        gone = s.forget(keys)
    finally:
        s.close()
    if missing:
        err.print(Text(printable(
            f"warning: {len(missing)} of {len(keys)} cell folders not found under {runs} (e.g. {missing[0][:12]}): "
            "forgotten in the store all the same, and a run records none of their old results; --runs-dir names "
            "where they are")), soft_wrap=True)
    err.print(f"forgot {len(gone)} of {len(cells)} cells of {printable(plan.grid.name)} (their trainings are kept: "
              "`sweepdae gc` removes trainings no cell uses)")


def collect_garbage(store_url: str | None, *, runs_dir: str | None, dry_run: bool, unmarked: bool, err: Console,
                    out: Console) -> None:
    """Remove this store's trainings (runs/_train/<train_key>) that no cell of it uses any more; one that another
    store uses keeps its folder and loses only this store's mark."""
    s = open_store(store_url, create=False)
    try:
        used = s.used_train_keys()
        me = s.identity(create=False)
    finally:
        s.close()
    folder = runs_dir_for(runs_dir) / TRAIN_DIR
    unused = sorted(d for d in folder.iterdir() if d.is_dir() and d.name not in used) if folder.is_dir() else []
    removed, others, legacy = 0, 0, 0
    for d in unused:
        stores = training_stores(d)
        ours = stores is not None and me is not None and me in stores
        if (stores or set()) - {me, LEGACY_MARK}:  # another store uses it: drop only our mark
            others += 1
            if ours and not dry_run:
                _unmark(d, me)
            continue
        # No store or only the `legacy` mark (made before sweepdae recorded stores, maybe by another store that
        # shares runs/, and reused by this one since): kept unless --include-unmarked; an empty folder holds
        # nothing to lose.
        if (stores is None or LEGACY_MARK in stores) and not unmarked and any(
                p.name != STORES_DIR for p in d.iterdir()):
            legacy += 1
            if ours and not dry_run:
                _unmark(d, me)
            continue
        out.print(Text(printable(f"{'would remove' if dry_run else 'removed'} {d}")))
        removed += 1
        if not dry_run:
            shutil.rmtree(d)
    kept = "".join([f"; {others} kept: another store uses them" if others else "",
                    f"; {legacy} kept: they record no store (--include-unmarked removes them)" if legacy else ""])
    err.print(f"{removed} unused trainings{' (dry run)' if dry_run else ' removed'}; {len(used)} in use{kept}",
              markup=False, highlight=False)


def _unmark(training: Path, store_id: Any) -> None:
    (training / STORES_DIR / str(store_id)).unlink(missing_ok=True)


def _runs_dir(runs_dir: str | None, store: Store) -> Path:
    """The cells' folder as `report` finds it: also runs/ beside the store."""
    from sweepdae.report import default_runs_dir  # why: pandas, scipy: ~2 s to import

    return runs_dir_for(runs_dir or default_runs_dir(store))
