"""`sweepdae run --dry-run`: each grid's cells, trainings, done and would-run counts and estimated time, phase by
phase (compute or data bound), the SLURM requeues its jobs need, the total, and where every rate comes from."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.text import Text

from sweepdae.errors import StoreNotFound, printable
from sweepdae.grid import Plan
from sweepdae.runner import estimate as est
from sweepdae.runner.options import SlurmOptions
from sweepdae.runner.slots import Slot
from sweepdae.runner.slurm import resources, user_config
from sweepdae.store import open_store


@dataclass
class _Known:
    """What the store knows of the cells of a dry run (nothing when there is no store yet)."""

    statuses: dict[str, str]
    trained: set[str]
    measured: est.Rate | None


def _read_store(url: str | None, chosen: list[tuple[Plan, list[Any]]], kind: str, measure: bool) -> _Known:
    keys = [c.key for _, cells in chosen for c in cells]
    train_keys = list(dict.fromkeys(c.train_key for _, cells in chosen for c in cells))
    known = _Known({}, set(), None)
    try:
        s = open_store(url, create=False)
    except StoreNotFound:
        return known
    try:
        known.statuses = s.status(keys)
        known.trained = {k for k, v in s.training_status(train_keys).items() if v == "done"}
        if measure:
            known.measured = est.calibrate(s.cells().to_dict("records"), kind)
    finally:
        s.close()
    return known


def dry_run(url: str | None, chosen: list[tuple[Plan, list[Any]]], slots: list[Slot], rate_tflops: float | None,
            *, json_out: bool = False, slurm: SlurmOptions | None = None, executor: str = "local",
            gpus_per_cell: int = 1, procs: int | None = None, err: Console, out: Console) -> None:
    """Each grid's estimate on the slots' devices (stderr, one line each; the cells that would run on stdout), then
    the total (several grids) and where every rate comes from. --json: one JSON object on stdout instead."""
    gpus = sorted({g for slot in slots for g in slot.gpus})  # the GPUs the slots use (a leftover one stays idle)
    kind = "cuda" if gpus else "cpu"
    known = _read_store(url, chosen, kind, measure=rate_tflops is None)
    base = est.default_rate(kind, est.detect_gpu_name() if gpus else None)
    rate = (est.Rate(rate_tflops * 1e12, base.fixed_s, kind, "rate given with --rate", measured=False)
            if rate_tflops is not None else known.measured or base)
    todo = [[c for c in cells if known.statuses.get(c.key, "new") != "done"] for _, cells in chosen]
    procs = procs or max(1, len(slots[0].gpus) if slots else 1)
    # each grid's SLURM job: the command line, the grid's [slurm] table, the user config, the defaults
    config = user_config()
    jobs = [resources(cells, p.slurm, cli=slurm.given() if slurm else {}, config=config, gpus_per_cell=gpus_per_cell)
            for p, cells in chosen]
    cpus = [max(1, int(j["cpus"]) // max(1, int(j.get("gpus") or 1))) if executor == "slurm" else None
            for j in jobs]
    estimates = est.estimate_grids([(p.grid.name, p.profile, cells, t) for (p, cells), t in zip(chosen, todo,
                                                                                               strict=True)],
                                   trained=known.trained, rate=rate, devices=max(1, len(gpus)), slots=len(slots),
                                   procs_per_cell=procs, cpus_per_process=cpus)
    streamed = [c.recipe for t in todo for c in t if est.streamed(c.recipe)]
    data_line = _data_line(todo, cpus, executor)
    rate_line = _rate_line(rate, gpus)
    procs_line = (f"{procs} process{'es' if procs > 1 else ''} per cell, {len(slots)} "
                  f"cell{'s' if len(slots) > 1 else ''} side by side; sharded phases: "
                  + (", ".join(k for k, v in est.PHASES.items() if v[0]) or "none")
                  + "; the others run on one process")
    if json_out:
        doc = {"grids": [estimate_json(e, j, cells) for e, j, cells in zip(estimates, jobs, todo, strict=True)],
               "total_seconds": sum(e.seconds for e in estimates), "total_flops": sum(e.flops for e in estimates),
               "devices": {"kind": kind, "gpus": gpus, "processes_per_cell": procs, "slots": len(slots)},
               "rates": {"compute": rate_line, "compute_measured": rate.measured, "data": data_line if streamed
                         else "no streamed sets: data time 0", "processes": procs_line}}
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        sys.stdout.flush()
        return
    _print_estimates(estimates, jobs, todo, err=err, out=out)
    for line in (rate_line, procs_line, *([data_line] if streamed else [])):
        err.print(Text(printable(line)), soft_wrap=True)


def _rate_line(rate: est.Rate, gpus: list[int]) -> str:
    where = (f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(f'cuda:{i}' for i in gpus)})" if gpus
             else "the CPU")
    per = "per GPU" if gpus else "on the CPU"
    return (f"estimated for {where}: {est.human_flops(rate.flops_per_s)}/s {per} + {rate.fixed_s:.3g} s per "
            f"cell, {rate.source}")


def _data_line(todo: list[list[Any]], cpus: list[int | None], executor: str) -> str:
    """Where the decoding rates come from, and the decoding cores of a process."""
    here = cpu_model()
    same = here == est.DECODE_CPU
    cores = sorted({est.decode_cores(r, c) for r, c in ((c.recipe, cpu) for t, cpu in zip(todo, cpus, strict=True)
                                                        for c in t) if est.streamed(r)})
    return (f"data: streamed images decoded at {est.DECODE_RATES['center_crop']:g} images/s per core (center "
            f"crop) and {est.DECODE_RATES['random_resized_crop']:g} (random-resized crop + flip), measured with "
            f"`{est.DECODE_COMMAND}` on {est.DECODE_CPU} ("
            + ("this machine's CPU model" if same else f"not this machine's {here}") + "); "
            + f"{'/'.join(map(str, cores))} decoding cores per process ("
            + ("data.num_workers, at most the SLURM job's cpus per process less one" if executor == "slurm"
               else "data.num_workers, each assumed to have a core") + "); in-memory sets: free")


def _print_estimates(estimates: list[est.GridEstimate], jobs: list[dict[str, Any]], todo: list[list[Any]], *,
                     err: Console, out: Console) -> None:
    """Each grid's line, its phases and its SLURM requeues (stderr), its cells that would run (stdout), and the
    total of several grids."""
    for e, j, cells in zip(estimates, jobs, todo, strict=True):
        shared = f" ({e.shared} made by an earlier grid)" if e.shared else ""
        notes = "".join(f"; {n}" for n in e.notes)
        err.print(Text(printable(f"{e.name} ({e.profile or 'base'}): {e.cells} cells, {e.trainings} trainings"
                                 f"{shared}, {e.done} done, {e.run} would run; {est.human_flops(e.flops)}, "
                                 f"{est.human_seconds(e.seconds)}{notes}")), soft_wrap=True)
        for name, ph in e.phases.items():
            if ph.seconds <= 0:
                continue
            decoded = f", {ph.decoded:,.0f} images decoded" if ph.decoded else ""
            err.print(Text(printable(f"  {name:<14} {est.human_seconds(ph.seconds):<18} {ph.bound}-bound (compute "
                                     f"{est.human_seconds(ph.compute_seconds)}, data "
                                     f"{est.human_seconds(ph.data_seconds)}{decoded})")), soft_wrap=True)
        err.print(Text(printable("  " + requeue_line(e, j))), soft_wrap=True)
        for c in cells:
            out.print(Text(printable(f"  {c.key[:12]}  {c.label}")))
    if len(estimates) > 1:
        err.print(f"total: {len(estimates)} grids, {sum(e.cells for e in estimates)} cells, "
                  f"{sum(e.trainings - e.shared for e in estimates)} trainings, {sum(e.done for e in estimates)} "
                  f"done, {sum(e.run for e in estimates)} would run; "
                  f"{est.human_flops(sum(e.flops for e in estimates))}, "
                  f"{est.human_seconds(sum(e.seconds for e in estimates))}", soft_wrap=True)


def requeue_line(e: est.GridEstimate, job: dict[str, Any]) -> str:
    """What a SLURM job of this grid needs at its time limit (--executor slurm: one job per training group)."""
    if not e.jobs:
        return "slurm: no job to run"
    longest, limit, allowed = max(e.jobs), float(job["time"]), int(job["max_requeues"])
    need = est.requeues(longest, limit)

    def times(n: int) -> str:
        return f"{n} requeue{'s' if n != 1 else ''}" if n else "no requeue"

    per_gpu = f" ({job['cpus_per_gpu']} per GPU)" if job.get("cpus_per_gpu") else ""
    line = (f"slurm: time = {limit:g} min, cpus = {job['cpus']}{per_gpu}"
            + (f", mem_gb = {job['mem_gb']:g}" if job.get("mem_gb") else "")
            + (f": the longest training takes {est.human_seconds(e.longest_training_seconds)}, "
               f"{times(est.requeues(e.longest_training_seconds, limit))}" if e.longest_training_seconds else ":")
            + f"; the longest job (a training and its cells' evaluations) {est.human_seconds(longest)}, {times(need)}")
    line += f" (max_requeues = {allowed}{': too few' if need > allowed else ''})"
    if e.longest_eval_seconds > limit * 60:
        line += (f"; one cell's evaluation takes {est.human_seconds(e.longest_eval_seconds)}, over the time limit: "
                 "a requeue restarts it, so it never ends")
    return line


def estimate_json(e: est.GridEstimate, job: dict[str, Any], cells: list[Any]) -> dict[str, Any]:
    """One grid's estimate and its SLURM job's sizing, as `--dry-run --json` prints it."""
    longest = max(e.jobs, default=0.0)
    return {"name": e.name, "profile": e.profile, "cells": e.cells, "trainings": e.trainings, "shared": e.shared,
            "done": e.done, "run": e.run, "flops": e.flops, "total_seconds": e.seconds,
            "critical_seconds": e.critical_seconds, "notes": e.notes,
            "phases": {k: {"seconds": p.seconds, "bound": p.bound, "compute_seconds": p.compute_seconds,
                           "data_seconds": p.data_seconds, "flops": p.flops, "decoded": p.decoded}
                       for k, p in e.phases.items()},
            "slurm": {"time_min": job["time"], "cpus": job["cpus"], "mem_gb": job.get("mem_gb"),
                      "max_requeues": job["max_requeues"], "longest_job_seconds": longest,
                      "requeues": est.requeues(longest, float(job["time"])) if e.jobs else 0,
                      "longest_training_seconds": e.longest_training_seconds,
                      "training_requeues": est.requeues(e.longest_training_seconds, float(job["time"])),
                      "longest_eval_seconds": e.longest_eval_seconds},
            "would_run": [c.key for c in cells]}


def cpu_model() -> str:
    """This machine's CPU model name (/proc/cpuinfo), as benchmarks/bench_decode.py records it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
