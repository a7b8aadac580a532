"""`sweepdae status`: the cells of a grid (or the store) with status, attempts and results; --watch refreshes;
`run --executor slurm --wait` watches the jobs."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pandas as pd
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sweepdae.errors import printable
from sweepdae.runner.slurm import DeadJobOwner, is_live, job_of_cells
from sweepdae.store import Store


def cell_jobs(store: Store, keys: list[str] | None) -> dict[str, dict[str, Any]]:
    """key -> the SLURM job that runs (or ran) it, with its state; {} when the store never submitted one."""
    return job_of_cells(store, keys)


def status_table(store: Store, keys: list[str] | None, jobs: dict[str, dict[str, Any]] | None = None
                 ) -> tuple[Table, dict[str, int]]:
    """The cells table and the count per status; `jobs` (from `cell_jobs`) when the caller has them already."""
    df = store.cells(keys)
    jobs = cell_jobs(store, keys) if jobs is None else jobs
    t = Table(title="cells", title_justify="left")
    for col in ("cell", "key", "status", "attempts", "probe top-1", "kNN top-1", "FID", "failure"):
        t.add_column(col)
    if jobs:  # beside each queued or running cell: its SLURM job, the job's state and its log
        t.add_column("slurm job")
        t.add_column("log", overflow="fold")
    counts: dict[str, int] = {}
    for _, row in df.iterrows():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        # a label is grid input: shown as plain text (no Rich markup), escaped like every echoed input
        cols: list[Any] = [Text(printable(str(row["label"]))), str(row["key"])[:12], str(row["status"]),
                           str(row.get("attempts", "")), _num(row.get("metric.probe_top1")),
                           _num(row.get("metric.knn_top1")), _num(row.get("metric.fid")),
                           str(row.get("failure_class") or "")]
        if jobs:
            job = jobs.get(str(row["key"])) if row["status"] in ("queued", "running") else None
            log = str(job.get("log", "")) if job else ""
            cols += [f"{job['job_id']} {job['state']}" if job else "",
                     Text(log, style=f"link file://{log}") if log else ""]
        t.add_row(*cols)
    if keys is not None:
        missing = len(set(keys)) - len(df)
        if missing > 0:
            counts["new"] = counts.get("new", 0) + missing
    t.caption = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    return t, counts


def summary_table(store: Store, keys: list[str]) -> Table:
    return status_table(store, keys)[0]


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return "-" if f != f else f"{f:.2f}"


def phases_of(row: dict[str, Any]) -> dict[str, Any]:
    """A done cell's `world_size` and `phases` ({name: {seconds, decoded, decoded_per_rank, peak_rss_mb,
    peak_gpu_mb}}, as the cell measured them: `sweepdae.cell.Phases`); {} for other cells and for cells recorded
    before phases were measured."""
    info = row.get("info")
    prov = info.get("provenance") if isinstance(info, dict) else None
    if row.get("status") != "done" or not isinstance(prov, dict) or not isinstance(prov.get("phases"), dict):
        return {}
    return {"world_size": prov.get("world_size", prov.get("num_processes")), "phases": prov["phases"]}


def show_status(store: Store, keys: list[str] | None, *, as_json: bool, watch: bool, interval: float,
                console: Console) -> None:
    try:
        if as_json:
            df = store.cells(keys)
            frame = df.drop(columns=[c for c in ("recipe",) if c in df.columns])
            for c in frame.select_dtypes(include=["datetime", "datetimetz"]).columns:  # epoch milliseconds
                frame[c] = [None if pd.isna(t) else t.value // 1_000_000 for t in frame[c]]
            rows = json.loads(frame.to_json(orient="records"))
            jobs = cell_jobs(store, keys)
            for row in rows:
                row.update(phases_of(row))
                job = jobs.get(row["key"])
                if job:
                    row["slurm_job"] = {"job_id": job["job_id"], "state": job["state"], "log": job.get("log")}
            counts = status_table(store, keys, jobs)[1]
            sys.stdout.write(json.dumps({"cells": rows, "counts": counts}, indent=1) + "\n")
            return
        if not watch:
            console.print(status_table(store, keys)[0])
            return
        with Live(status_table(store, keys)[0], console=console, refresh_per_second=2) as live:
            while True:
                table, counts = status_table(store, keys)
                live.update(table)
                if not counts.get("queued") and not counts.get("running") and not counts.get("new"):
                    return
                time.sleep(interval)
    finally:
        store.close()


# -- run --executor slurm --wait ---------------------------------------------------------------------------------------
def wait(store: Store, keys: list[str], *, console: Any, plain: bool | None = None, interval: float = 2.0
         ) -> dict[str, str]:
    """The live view of `--wait`: until every cell is done or failed, or no live job holds the cells left (they
    wait queued for the next submission). Trials of jobs that died are reaped as it goes. Returns key -> status."""
    dead = DeadJobOwner()

    def settled() -> tuple[bool, dict[str, str]]:
        store.reap_stale(dead_owner=dead)
        store.reap_stale_trainings(dead_owner=dead)
        st = store.status(keys)
        open_keys = [k for k in keys if st.get(k) in ("queued", "running")]
        if not open_keys:
            return True, st
        held = [k for k, j in job_of_cells(store, open_keys).items() if is_live(j["state"])]
        return not held, st

    if plain is None:
        plain = not sys.stderr.isatty()
    done, st = settled()
    if plain:
        last = ""
        while True:
            counts = _counts(st)
            if counts != last:
                console.print(f"[{time.strftime('%H:%M:%S')}] {counts}", markup=False, highlight=False)
                last = counts
            if done:
                return st
            time.sleep(interval)
            done, st = settled()
    with Live(status_table(store, keys)[0], console=console, refresh_per_second=1) as live:
        while not done:
            time.sleep(interval)
            done, st = settled()
            live.update(status_table(store, keys)[0])
    return st


def _counts(st: dict[str, str]) -> str:
    c: dict[str, int] = {}
    for v in st.values():
        c[v] = c.get(v, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
