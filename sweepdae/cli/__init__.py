"""The `sweepdae` command line: thin Typer commands over the library; SweepdaeError -> one red line, exit code."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sweepdae import __version__
from sweepdae.errors import GridError, StoreNotFound, SweepdaeError, printable


class _Usage:
    """What the group and every command share: flags shown as flags, usage errors that name their command."""

    def get_params(self, ctx: Any) -> list[Any]:
        """Help lists a boolean flag (and --help) bare, where newer typer would print `--fail-fast <bool>`: an
        empty metavar shows as nothing on every typer since 0.12, and parsing never reads a flag's metavar."""
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """The option parser raises some usage errors (`--out` without its value) without a context, so Click
        would print no usage line for them: attach this command's, as Click does for the others."""
        try:
            rest: list[str] = super().parse_args(ctx, args)  # type: ignore[misc]
            return rest
        except Exception as e:
            if isinstance(e, _click_exceptions()) and getattr(e, "ctx", "") is None:
                e.ctx, e.cmd = ctx, ctx.command  # type: ignore[attr-defined]
            raise


class _Group(_Usage, typer.core.TyperGroup):
    pass


class _Command(_Usage, typer.core.TyperCommand):
    pass


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Declarative ablation sweeps of l-DAE: plan, run, watch and report grids of cells.")
# log files and CI get 120 columns instead of Rich's 80, so tables of cell labels do not wrap
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
out = Console(width=None if sys.stdout.isatty() else 120)

StoreOpt = Annotated[str | None, typer.Option("--store", help="Store URL: journal:PATH, sqlite:///PATH or "
                                              "postgresql://...; default $SWEEPDAE_STORE or journal:sweepdae.journal")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="Profile of the grid (paper, demo, smoke, "
                                                "...); default: the grid's default_profile")]
RunsOpt = Annotated[str | None, typer.Option("--runs-dir", help="Where cell folders go (default $SWEEPDAE_RUNS or "
                                             "./runs)")]


TrackerOpt = Annotated[str | None, typer.Option("--tracker", help="Where training curves go: tensorboard (default: "
                                               "runs/_tensorboard), wandb, mlflow, aim or none (env "
                                               "SWEEPDAE_TRACKER)")]


def _set_tracker(tracker: str | None) -> None:
    """The cells read SWEEPDAE_TRACKER (SLURM jobs inherit it from the submitting shell)."""
    import os

    from sweepdae.cell import TRACKERS

    if tracker is None:
        return
    if tracker.lower() not in (*TRACKERS, "none"):
        raise SweepdaeError(f"--tracker: expected one of {', '.join([*TRACKERS, 'none'])}, got {tracker!r}")
    os.environ["SWEEPDAE_TRACKER"] = tracker.lower()


ProcsOpt = Annotated[int, typer.Option("--procs-per-cell", min=1, help="CPU cells: run each as N processes through "
                                       "`accelerate launch --multi_gpu` (gloo), the code path of N GPUs")]


def _set_procs(procs: int, gpus: str, executor: str = "local") -> None:
    """The coordinator's cells read SWEEPDAE_PROCS_PER_CELL (`sweepdae.runner.slots.cell_procs`)."""
    import os

    from sweepdae.runner import parse_gpus
    from sweepdae.runner.slots import PROCS_ENV

    if procs == 1:
        return
    if executor != "local":
        raise SweepdaeError("--procs-per-cell: local runs only (a SLURM job's processes are its --gpus-per-cell)")
    if parse_gpus(gpus):
        raise SweepdaeError("--procs-per-cell: for CPU cells (add --gpus cpu); a GPU cell runs one process per GPU "
                            "(--gpus-per-cell)")
    os.environ[PROCS_ENV] = str(procs)


def _check_runs_dir(runs_dir: str | None) -> None:
    """A runs folder that is a file would fail the first cell after it was claimed: refuse it before."""
    from sweepdae.runner import runs_dir_for

    path = runs_dir_for(runs_dir)
    if path.exists() and not path.is_dir():
        raise SweepdaeError(f"--runs-dir: {printable(str(path))} is not a folder"
                            + ("" if runs_dir else " (from $SWEEPDAE_RUNS or ./runs)"))


def _version(value: bool) -> None:
    if value:
        out.print(f"sweepdae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """sweepdae: reproduce and extend the l-DAE ablations, one TOML grid per table."""


def grid_path(name: str) -> Path:
    """A grid file path, or the name of a grid shipped with sweepdae (`quickstart`, `tokenizer_dims`, ...)."""
    p = Path(name)
    if p.exists() or p.suffix == ".toml" or "/" in name:
        return p
    from sweepdae.resources import resource_dir, shipped_grids

    shipped = resource_dir("grids") / f"{name}.toml"
    if shipped.exists():
        return shipped
    raise GridError(f"{name}: no such grid file, and no shipped grid of that name (shipped: "
                        + ", ".join(shipped_grids()) + ")")


def _plan(grid: str, profile: str | None) -> Any:
    from sweepdae.grid import expand, load_grid

    return expand(load_grid(grid_path(grid)), profile)


def _store(url: str | None, create: bool = True) -> Any:
    from sweepdae.store import open_store

    return open_store(url, create=create)


PLAN_COLUMNS = ("#", "cell", "key", "training", "status")
PLAIN_TABLE_ROWS = 2000  # larger plans print plain aligned columns instead of a Rich table


@app.command(cls=_Command)
def plan(grid: Annotated[str, typer.Argument(help="Grid TOML file (or the name of a shipped grid)")],
         profile: ProfileOpt = None, store: StoreOpt = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print the cells as JSON on stdout")] = False) -> None:
    """Expand a grid into cells: label, key, training, status in the store."""
    p = _plan(grid, profile)
    statuses = _statuses(store, [c.key for c in p.cells])
    train_keys = list(dict.fromkeys(c.train_key for c in p.cells))
    trained = sum(1 for v in _training_statuses(store, train_keys).values() if v == "done")
    sharing = f"{len(p.cells)} cells, {len(train_keys)} trainings ({trained} already trained)"
    if as_json:
        cells = [{"key": c.key, "train_key": c.train_key, "label": c.label, "status": statuses.get(c.key, "new"),
                  "coords": c.coords, **_facts(c.recipe), "recipe": c.recipe.to_dict()} for c in p.cells]
        sys.stdout.write(json.dumps({"grid": p.grid.name, "profile": p.profile, "summary": sharing,
                                     "trainings": {"total": len(train_keys), "trained": trained},
                                     "cells": cells}, indent=1) + "\n")
        return
    title = printable(f"{p.grid.name} ({p.profile or 'base'}): {p.grid.title}")
    rows = [(str(i), printable(c.label), c.key[:12], c.train_key[:12], statuses.get(c.key, "new"))
            for i, c in enumerate(p.cells)]
    if len(rows) > PLAIN_TABLE_ROWS:  # Rich lays a table out in ~0.5 ms a row: 10 s for 20,000 cells
        widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(PLAN_COLUMNS)]
        lines = [title, *("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
                          for r in [PLAN_COLUMNS, *rows])]
        out.file.write("\n".join(lines) + "\n")
    else:
        t = Table(title=Text(title), title_justify="left")
        for col in PLAN_COLUMNS:
            t.add_column(col)
        for r in rows:
            t.add_row(*(Text(x) for x in r))
        out.print(t)
    counts: dict[str, int] = {}
    for c in p.cells:
        s = statuses.get(c.key, "new")
        counts[s] = counts.get(s, 0) + 1
    out.print(f"{sharing}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


def _facts(r: Any) -> dict[str, Any]:
    """The recipe facts a reader checks against the paper first (resolved, not as written)."""
    from sweepdae.recipe import probe_t

    return {"schedule": r.noise.schedule.value, "latent_scale": r.tokenizer.latent_scale, "probe_t": probe_t(r),
            "upsampled": r.upsampled}


def _training_statuses(url: str | None, train_keys: list[str]) -> dict[str, str]:
    return _read_store(url, lambda s: s.training_status(train_keys))


def _statuses(url: str | None, keys: list[str]) -> dict[str, str]:
    return _read_store(url, lambda s: s.status(keys))


def _read_store(url: str | None, read: Any) -> dict[str, str]:
    """What `read(store)` returns, or {} when there is no store yet (a plan before the first run)."""
    try:
        s = _store(url, create=False)
    except StoreNotFound:
        return {}
    try:
        return dict(read(s))
    finally:
        s.close()


def _positive_seconds(value: float) -> float:
    """A number of seconds to sleep: positive and finite (-1 or nan would make `--watch` spin or crash)."""
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"expected a positive, finite number of seconds, got {value!r}")
    return value


@app.command(cls=_Command)
def status(grid: Annotated[str | None, typer.Argument(help="Grid file (default: every cell in the store)")] = None,
           profile: ProfileOpt = None, store: StoreOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
           watch: Annotated[bool, typer.Option("--watch", help="Refresh until every cell is done or failed")] = False,
           interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch",
                                                   callback=_positive_seconds)] = 2.0) -> None:
    """Cells of a grid (or of the whole store) with their status, attempts and probe accuracy."""
    from sweepdae.runner.status import show_status

    keys = [c.key for c in _plan(grid, profile).cells] if grid else None
    show_status(_store(store, create=False), keys, as_json=as_json, watch=watch, interval=interval, console=out)


@app.command(cls=_Command)
def run(grids: Annotated[list[str], typer.Argument(help="Grid TOML files (or names of shipped grids), run one after "
                                                   "the other against the same store")],
        profile: ProfileOpt = None, store: StoreOpt = None,
        gpus: Annotated[str, typer.Option(help="'auto', 'cpu' or GPU indices '0,1'")] = "auto",
        gpus_per_cell: Annotated[int | None, typer.Option(help="GPUs per cell (one process each); with --executor "
                                                   "slurm, the GPUs of each job, 0 for CPU jobs (default: 1)")
                                 ] = None,
        cells_per_gpu: Annotated[int, typer.Option(min=1, help="Cells packed on one GPU")] = 1,
        cpu_cells: Annotated[int, typer.Option(min=1, help="Concurrent cells without a GPU")] = 1,
        procs_per_cell: ProcsOpt = 1,
        max_retries: Annotated[int, typer.Option(min=0, help="Retries of a retryable failure (oom, crash, killed)")
                               ] = 1,
        fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first cell that fails")] = False,
        only: Annotated[str | None, typer.Option(help="Only cells whose label matches this regex")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show what would run, with an "
                                              "estimated time on the devices --gpus selects")] = False,
        rate: Annotated[float | None, typer.Option("--rate", help="FLOP rate per device (TFLOP/s) for the --dry-run "
                                                   "estimate; default: measured from the store's finished cells, "
                                                   "else the device kind's default")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="--dry-run: the estimate as one JSON object on stdout "
                                               "(per grid, per phase: seconds and bound)")] = False,
        until_decided: Annotated[bool, typer.Option("--until-decided", help="Add seeds in rounds to the grids whose "
                                                    "findings are undecided, under a group-sequential design fixed "
                                                    "before the first look (REPRODUCTION.md)")] = False,
        max_seeds: Annotated[int | None, typer.Option("--max-seeds", help="--until-decided: the seeds of the last "
                                                      "look (default 10)")] = None,
        launcher: Annotated[str, typer.Option(help="auto (fork on CPU, accelerate on GPU), accelerate or fork")
                            ] = "auto",
        plain: Annotated[bool | None, typer.Option("--plain/--live", help="Force line output / the live view")
                         ] = None,
        runs_dir: RunsOpt = None,
        report: Annotated[bool, typer.Option("--report/--no-report", help="Write the HTML report at the end")
                          ] = False,
        executor: Annotated[str, typer.Option(help="local (this machine's slots) or slurm (submit one job per "
                                              "training group through submitit, then return)")] = "local",
        wait: Annotated[bool, typer.Option("--wait", help="slurm: keep the live view until the sweep's jobs end")
                        ] = False,
        partition: Annotated[str | None, typer.Option(help="slurm: partition", rich_help_panel="SLURM")] = None,
        time_min: Annotated[int | None, typer.Option("--time", help="slurm: time limit of a job, minutes",
                                                     rich_help_panel="SLURM")] = None,
        account: Annotated[str | None, typer.Option(help="slurm: account", rich_help_panel="SLURM")] = None,
        qos: Annotated[str | None, typer.Option(help="slurm: quality of service", rich_help_panel="SLURM")] = None,
        constraint: Annotated[str | None, typer.Option(help="slurm: node features", rich_help_panel="SLURM")
                              ] = None,
        cpus: Annotated[int | None, typer.Option(help="slurm: CPUs per job", rich_help_panel="SLURM")] = None,
        mem_gb: Annotated[float | None, typer.Option(help="slurm: memory per job, GB", rich_help_panel="SLURM")
                          ] = None,
        tracker: TrackerOpt = None) -> None:
    """Run every cell of the grids that the store does not have yet, grid after grid; resumes killed sweeps.

    Trainings shared between the grids (one train_key) are made once and reused. With --executor slurm the cells
    run as SLURM jobs (one per training group); options come from the command line, then the grid's slurm
    table (per axis value first), then ~/.config/sweepdae/slurm.toml."""
    if launcher not in ("auto", "accelerate", "fork"):
        raise SweepdaeError(f"--launcher: expected auto, accelerate or fork, got {launcher!r}")
    if executor not in ("local", "slurm"):
        raise SweepdaeError(f"--executor: expected local or slurm, got {executor!r}")
    _set_tracker(tracker)
    if not dry_run:
        _set_procs(procs_per_cell, gpus, executor)
    _check_runs_dir(runs_dir)
    if wait and executor != "slurm":
        raise SweepdaeError("--wait: only with --executor slurm (a local run always waits)")
    if gpus_per_cell is not None and gpus_per_cell < (0 if executor == "slurm" else 1):
        raise SweepdaeError(f"--gpus-per-cell: expected an integer >= {0 if executor == 'slurm' else 1}, "
                            f"got {gpus_per_cell}")
    slurm_cli = {"partition": partition, "time": time_min, "account": account, "qos": qos, "constraint": constraint,
                 "cpus": cpus, "mem_gb": mem_gb}
    given = [k for k, v in slurm_cli.items() if v is not None]
    if given and executor != "slurm":
        raise SweepdaeError(f"--{given[0].replace('_', '-')}: a SLURM option; add --executor slurm")
    if executor == "slurm":
        from sweepdae.grid.schema import check_slurm_options  # types, ranges and the strings sbatch would misread

        check_slurm_options({k: v for k, v in slurm_cli.items() if v is not None}, "option",
                            lambda key, msg: SweepdaeError(f"--{key.split('.')[-1].replace('_', '-')}: {msg}"))
        slurm_cli["gpus"] = gpus_per_cell
    gpus_per_cell = 1 if gpus_per_cell is None else gpus_per_cell
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise SweepdaeError(f"--rate: expected a positive number of TFLOP/s, got {rate!r}")
    if json_out and not dry_run:
        raise SweepdaeError("--json: only with --dry-run")
    if max_seeds is not None and not until_decided:
        raise SweepdaeError("--max-seeds: only with --until-decided")
    if until_decided and (only or executor != "local" or json_out):
        raise SweepdaeError("--until-decided: every cell of the grids, on this machine (no --only, --executor slurm "
                            "or --json)")
    plans = [_plan(g, profile) for g in grids]  # every grid (and its profile) checked before anything runs
    from sweepdae.runner import make_slots, parse_gpus, run_plan, select

    ids = parse_gpus(gpus)
    chosen = [select(p, only, allow_empty=len(plans) > 1) for p in plans]
    if not any(chosen):
        raise SweepdaeError(f"--only {only!r} matches none of the cells of "
                            + ", ".join(p.grid.name for p in plans))
    if dry_run:
        slots = make_slots(ids, gpus_per_cell=max(1, gpus_per_cell), cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells)
        _dry_run(store, list(zip(plans, chosen, strict=True)), slots, rate, json_out=json_out, slurm_cli=slurm_cli,
                 executor=executor, gpus_per_cell=gpus_per_cell)
        if until_decided:
            from sweepdae.runner.until_decided import dry_run_from_cli

            dry_run_from_cli(store, plans, max_seeds=max_seeds or 10, rate_tflops=rate, slots=len(slots),
                             gpus=sorted({g for slot in slots for g in slot.gpus}), say=lambda m: err.print(
                                 Text(printable(m)), soft_wrap=True))
        return
    if executor == "slurm":
        _run_slurm(store, plans, chosen, cli=slurm_cli, gpus_per_cell=gpus_per_cell, max_retries=max_retries,
                   runs_dir=runs_dir, launcher=launcher, wait=wait, plain=plain)
        return
    if until_decided:
        from sweepdae.runner.until_decided import run_from_cli

        if not run_from_cli(store, plans, max_seeds=max_seeds or 10, runs_dir=runs_dir, gpus=gpus,
                            gpus_per_cell=gpus_per_cell, cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells,
                            max_retries=max_retries, fail_fast=fail_fast, launcher=launcher, plain=plain,
                            say=lambda m: err.print(Text(printable(m)), soft_wrap=True)):
            raise typer.Exit(1)
        return
    s = _store(store)
    statuses: dict[str, str] = {}  # every selected cell: as its grid's run left it, or as the store has it
    failed = False
    try:
        from sweepdae.runner import register_plan

        for p in plans:  # every grid of the sweep is in `status` and `report` from the start, pending cells too
            register_plan(s, p)
        stopped = False
        for p, cells in zip(plans, chosen, strict=True):
            if (fail_fast and failed) or stopped:  # the grids after a failure or Ctrl-C are not started; their
                # cells count as they are
                statuses.update({k: v for k, v in s.status([c.key for c in cells]).items() if k not in statuses})
                continue
            if not cells:
                continue
            summary = run_plan(s, p, only=only, gpus=gpus, gpus_per_cell=gpus_per_cell, cells_per_gpu=cells_per_gpu,
                               cpu_cells=cpu_cells, max_retries=max_retries, fail_fast=fail_fast, runs_dir=runs_dir,
                               launcher=launcher, plain=plain)
            statuses.update(summary.statuses)
            failed = failed or not summary.ok
            stopped = summary.interrupted
        from sweepdae.runner.status import summary_table

        keys = sorted({c.key for cells in chosen for c in cells})
        err.print(summary_table(s, keys))
        if report:
            from sweepdae.report import write_reports
            from sweepdae.runner import runs_dir_for

            paths = write_reports(s, grids=list(dict.fromkeys(p.grid.name for p in plans)), out=Path("reports"),
                                  html=True, latex=False, csv=False, runs_dir=runs_dir_for(runs_dir))
            for path in paths:
                out.print(f"report: {path}")
    finally:
        s.close()
    if failed or any(v != "done" for v in statuses.values()):
        bad = sum(1 for v in statuses.values() if v != "done")
        err.print(f"[red]{bad} of {len(statuses)} cells not done[/red]")
        raise typer.Exit(1)


def _run_slurm(url: str | None, plans: list[Any], chosen: list[list[Any]], *, cli: dict[str, Any],
               gpus_per_cell: int, max_retries: int, runs_dir: str | None, launcher: str, wait: bool,
               plain: bool | None) -> None:
    """`run --executor slurm`: enqueue every grid, submit a job for each training group that no live job holds,
    print the jobs, and return (or, with --wait, watch until they end)."""
    from sweepdae.runner import enqueue_plan, register_plan, runs_dir_for
    from sweepdae.runner import slurm as sl

    config = sl.user_config()
    store_url = sl.job_store_url(url)
    s = _store(url)
    try:
        sl.check_store(s, lambda m: err.print(f"[yellow]warning:[/yellow] {m}", highlight=False))
        for p in plans:
            register_plan(s, p)
        runs = runs_dir_for(runs_dir)
        all_keys: list[str] = []
        for p, cells in zip(plans, chosen, strict=True):
            if not cells:
                continue
            all_keys += [c.key for c in cells]
            outcome = enqueue_plan(s, p, cells)
            cached = sum(1 for v in outcome.values() if v == "cached")
            groups, held = sl.plan_groups(s, cells, spec=p.slurm, cli=cli, config=config,
                                          gpus_per_cell=gpus_per_cell)
            jobs = sl.submit(groups, store=s, store_url=store_url, plan=p, runs_dir=runs, launcher=launcher,
                             max_retries=max_retries) if groups else []
            name = f"{p.grid.name} ({p.profile or 'base'})"
            err.print(f"{name}: {len(cells)} cells, {cached} done; submitted {len(jobs)} jobs "
                      f"({sum(len(j['keys']) for j in jobs)} cells); {len(set(held.values()))} jobs already hold "
                      f"{len(held)} cells", highlight=False)
            for j in jobs:
                o = j["options"]
                err.print(f"  job {j['job_id']}: {len(j['keys'])} cells ({printable(j['labels'][0])}"
                          f"{', ...' if len(j['keys']) > 1 else ''}), {o['time']} min, {o['cpus']} CPUs, "
                          f"{o.get('gpus') or 0} GPUs; log {j['log']}", highlight=False, markup=False)
        if not wait:
            err.print("jobs run on the cluster; watch them with `sweepdae status GRID --watch`", highlight=False)
            return
        try:
            st = sl.wait(s, sorted(set(all_keys)), console=err, plain=plain)
        except KeyboardInterrupt:
            err.print("stopped watching; the jobs go on", highlight=False)
            raise typer.Exit(130) from None
        from sweepdae.runner.status import summary_table

        err.print(summary_table(s, sorted(set(all_keys))))
    finally:
        s.close()
    bad = sum(1 for v in st.values() if v != "done")
    if bad:
        left = sum(1 for v in st.values() if v == "queued")
        err.print(f"[red]{bad} of {len(st)} cells not done[/red]"
                  + (f" ({left} queued with no job: run the command again to submit them)" if left else ""))
        raise typer.Exit(1)


def _dry_run(url: str | None, chosen: list[tuple[Any, list[Any]]], slots: list[Any], rate_tflops: float | None,
             *, json_out: bool = False, slurm_cli: dict[str, Any] | None = None, executor: str = "local",
             gpus_per_cell: int = 1, procs: int | None = None) -> None:
    """Each grid's cells, trainings, done and would-run counts and estimated time, phase by phase (compute or data
    bound), the SLURM requeues its jobs need, then the total (several grids) and where every rate comes from
    (stderr, one line each; the cells that would run on stdout). --json: one JSON object on stdout instead."""
    from sweepdae.runner import estimate as est
    from sweepdae.runner.slurm import resources, user_config

    gpus = sorted({g for slot in slots for g in slot.gpus})  # the GPUs the slots use (a leftover one stays idle)
    kind = "cuda" if gpus else "cpu"
    keys = [c.key for _, cells in chosen for c in cells]
    train_keys = list(dict.fromkeys(c.train_key for _, cells in chosen for c in cells))
    statuses: dict[str, str] = {}
    trained: set[str] = set()
    measured: est.Rate | None = None
    try:
        s = _store(url, create=False)
    except StoreNotFound:
        s = None
    if s is not None:
        try:
            statuses = s.status(keys)
            trained = {k for k, v in s.training_status(train_keys).items() if v == "done"}
            if rate_tflops is None:
                measured = est.calibrate(s.cells().to_dict("records"), kind)
        finally:
            s.close()
    base = est.default_rate(kind, est.detect_gpu_name() if gpus else None)
    rate = (est.Rate(rate_tflops * 1e12, base.fixed_s, kind, "rate given with --rate", measured=False)
            if rate_tflops is not None else measured or base)
    todo = [[c for c in cells if statuses.get(c.key, "new") != "done"] for _, cells in chosen]
    devices = max(1, len(gpus))
    procs = procs or max(1, len(slots[0].gpus) if slots else 1)
    # each grid's SLURM job: the command line, the grid's [slurm] table, the user config, the defaults
    config = user_config()
    jobs = [resources(cells, p.slurm, cli=slurm_cli or {}, config=config, gpus_per_cell=gpus_per_cell)
            for p, cells in chosen]
    cpus = [max(1, int(j["cpus"]) // max(1, int(j.get("gpus") or 1))) if executor == "slurm" else None
            for j in jobs]
    estimates = est.estimate_grids([(p.grid.name, p.profile, cells, t) for (p, cells), t in zip(chosen, todo,
                                                                                               strict=True)],
                                   trained=trained, rate=rate, devices=devices, slots=len(slots), procs_per_cell=procs,
                                   cpus_per_process=cpus)
    streamed = [c.recipe for t in todo for c in t if est.streamed(c.recipe)]
    where = (f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(f'cuda:{i}' for i in gpus)})" if gpus
             else "the CPU")
    per = "per GPU" if gpus else "on the CPU"
    here = _cpu_model()
    same = here == est.DECODE_CPU
    cores = sorted({est.decode_cores(r, c) for r, c in ((c.recipe, cpu) for t, cpu in zip(todo, cpus, strict=True)
                                                        for c in t) if est.streamed(r)})
    data_line = (f"data: streamed images decoded at {est.DECODE_RATES['center_crop']:g} images/s per core (center "
                 f"crop) and {est.DECODE_RATES['random_resized_crop']:g} (random-resized crop + flip), measured with "
                 f"`{est.DECODE_COMMAND}` on {est.DECODE_CPU} ("
                 + ("this machine's CPU model" if same else f"not this machine's {here}") + "); "
                 + f"{'/'.join(map(str, cores))} decoding cores per process ("
                 + ("data.num_workers, at most the SLURM job's cpus per process less one" if executor == "slurm"
                    else "data.num_workers, each assumed to have a core") + "); in-memory sets: free")
    rate_line = (f"estimated for {where}: {est.human_flops(rate.flops_per_s)}/s {per} + {rate.fixed_s:.3g} s per "
                 f"cell, {rate.source}")
    procs_line = (f"{procs} process{'es' if procs > 1 else ''} per cell, {len(slots)} "
                  f"cell{'s' if len(slots) > 1 else ''} side by side; sharded phases: "
                  + (", ".join(k for k, v in est.PHASES.items() if v[0]) or "none")
                  + "; the others run on one process")
    if json_out:
        doc = {"grids": [_estimate_json(e, j, cells) for e, j, cells in zip(estimates, jobs, todo, strict=True)],
               "total_seconds": sum(e.seconds for e in estimates), "total_flops": sum(e.flops for e in estimates),
               "devices": {"kind": kind, "gpus": gpus, "processes_per_cell": procs, "slots": len(slots)},
               "rates": {"compute": rate_line, "compute_measured": rate.measured, "data": data_line if streamed
                         else "no streamed sets: data time 0", "processes": procs_line}}
        typer.echo(json.dumps(doc, indent=1))
        return
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
        err.print(Text(printable("  " + _requeue_line(e, j))), soft_wrap=True)
        for c in cells:
            out.print(Text(printable(f"  {c.key[:12]}  {c.label}")))
    if len(estimates) > 1:
        err.print(f"total: {len(estimates)} grids, {sum(e.cells for e in estimates)} cells, "
                  f"{sum(e.trainings - e.shared for e in estimates)} trainings, {sum(e.done for e in estimates)} "
                  f"done, {sum(e.run for e in estimates)} would run; "
                  f"{est.human_flops(sum(e.flops for e in estimates))}, "
                  f"{est.human_seconds(sum(e.seconds for e in estimates))}", soft_wrap=True)
    err.print(Text(printable(rate_line)), soft_wrap=True)
    err.print(Text(printable(procs_line)), soft_wrap=True)
    if streamed:
        err.print(Text(printable(data_line)), soft_wrap=True)


def _requeue_line(e: Any, job: dict[str, Any]) -> str:
    """What a SLURM job of this grid needs at its time limit (--executor slurm: one job per training group)."""
    from sweepdae.runner import estimate as est

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


def _estimate_json(e: Any, job: dict[str, Any], cells: list[Any]) -> dict[str, Any]:
    from sweepdae.runner import estimate as est

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


def _cpu_model() -> str:
    """This machine's CPU model name (/proc/cpuinfo), as benchmarks/bench_decode.py records it."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@app.command(cls=_Command)
def tune(grid: Annotated[str, typer.Argument(help="Grid TOML file (or the name of a shipped grid)")],
         trials: Annotated[int, typer.Option("--trials", help="Complete trials wanted in the study, in all")],
         profile: ProfileOpt = None, store: StoreOpt = None,
         metric: Annotated[str | None, typer.Option(help="What to optimise, a cell metric (default: the grid's "
                                                    "tune.metric, else probe_top1)")] = None,
         direction: Annotated[str | None, typer.Option(help="maximize or minimize (default: from the metric: FID "
                                                       "and losses minimise, accuracies maximise)")] = None,
         sampler: Annotated[str, typer.Option(help="tpe, random or grid")] = "tpe",
         seed: Annotated[int | None, typer.Option("--seed", help="The sampler's seed (the cells' seeds are the "
                                                  "grid's)")] = None,
         gpus: Annotated[str, typer.Option(help="'auto', 'cpu' or GPU indices '0,1'")] = "auto",
         gpus_per_cell: Annotated[int, typer.Option(min=1, help="GPUs per cell (one process each)")] = 1,
         cells_per_gpu: Annotated[int, typer.Option(min=1, help="Cells packed on one GPU")] = 1,
         cpu_cells: Annotated[int, typer.Option(min=1, help="Concurrent cells without a GPU")] = 1,
         procs_per_cell: ProcsOpt = 1,
         max_retries: Annotated[int, typer.Option(min=0, help="Retries of a retryable failure")] = 1,
         launcher: Annotated[str, typer.Option(help="auto, accelerate or fork")] = "auto",
         plain: Annotated[bool | None, typer.Option("--plain/--live", help="Line output / live view")] = None,
         runs_dir: RunsOpt = None, tracker: TrackerOpt = None) -> None:
    """Adaptive search (Optuna) over the grid's axes, or the ranges of its tune.params table: each trial runs the
    grid's seeds and scores their mean. Cells are the ones `run` makes: a recipe already done is reused, never
    trained again."""
    from sweepdae.grid import load_grid
    from sweepdae.metrics import METRICS
    from sweepdae.runner import run_cells
    from sweepdae.runner import tune as tn

    if trials < 1:
        raise SweepdaeError(f"--trials: expected an integer >= 1, got {trials}")
    if launcher not in ("auto", "accelerate", "fork"):
        raise SweepdaeError(f"--launcher: expected auto, accelerate or fork, got {launcher!r}")
    if sampler not in tn.SAMPLERS:
        raise SweepdaeError(f"--sampler: expected one of {', '.join(tn.SAMPLERS)}, got {sampler!r}")
    _set_tracker(tracker)
    _set_procs(procs_per_cell, gpus)
    _check_runs_dir(runs_dir)
    g = load_grid(grid_path(grid))
    space = tn.search_space(g, profile)
    metric = metric or g.tune.metric or "probe_top1"
    if metric not in METRICS:
        raise SweepdaeError(f"--metric: unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    direction = direction or g.tune.direction or tn.default_direction(metric)
    if direction not in ("maximize", "minimize"):
        raise SweepdaeError(f"--direction: expected maximize or minimize, got {direction!r}")
    s = _store(store)
    n = 0

    def run(cells: list[Any]) -> Any:
        nonlocal n
        n += 1
        return run_cells(s, cells, grid=g.name, profile=space.profile, title=f"{g.name} tune trial {n}", gpus=gpus,
                         gpus_per_cell=gpus_per_cell, cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells,
                         max_retries=max_retries, runs_dir=runs_dir, launcher=launcher, plain=plain)

    try:
        summary = tn.tune(s, space, trials=trials, metric=metric, direction=direction, sampler=sampler, seed=seed,
                          run_cells=run, say=lambda m: err.print(m, markup=False, highlight=False))
    finally:
        s.close()
    best = (f"best {metric} {summary.best_value:.2f} at "
            + " ".join(f"{k}={v}" for k, v in summary.best_params.items())) if summary.best_value is not None else \
        "no complete trial yet"
    err.print(f"{summary.study}: {summary.completed} complete, {summary.pruned} pruned, {summary.failed} failed; "
              f"{best}", markup=False, highlight=False)
    if summary.stopped:
        raise typer.Exit(130)


@app.command(cls=_Command)
def worker(store: StoreOpt = None,
           gpus: Annotated[str, typer.Option(help="'auto', 'cpu' or GPU indices '0,1'")] = "auto",
           gpus_per_cell: Annotated[int, typer.Option(min=1, help="GPUs per cell")] = 1,
           cells_per_gpu: Annotated[int, typer.Option(min=1, help="Cells packed on one GPU")] = 1,
           cpu_cells: Annotated[int, typer.Option(min=1, help="Concurrent cells without a GPU")] = 1,
           procs_per_cell: ProcsOpt = 1,
           max_retries: Annotated[int, typer.Option(min=0, help="Retries of a retryable failure")] = 1,
           forever: Annotated[bool, typer.Option("--forever", help="Keep waiting for new cells")] = False,
           launcher: Annotated[str, typer.Option(help="auto, accelerate or fork")] = "auto",
           plain: Annotated[bool | None, typer.Option("--plain/--live", help="Line output / live view")] = None,
           runs_dir: RunsOpt = None, tracker: TrackerOpt = None) -> None:
    """Take queued cells of any grid from a shared store and run them here."""
    from sweepdae.runner import run_worker

    _set_tracker(tracker)
    _set_procs(procs_per_cell, gpus)
    _check_runs_dir(runs_dir)
    s = _store(store, create=False)
    try:
        summary = run_worker(s, gpus=gpus, gpus_per_cell=gpus_per_cell, cells_per_gpu=cells_per_gpu,
                             cpu_cells=cpu_cells, max_retries=max_retries, forever=forever, runs_dir=runs_dir,
                             launcher=launcher, plain=plain)
    finally:
        s.close()
    err.print(f"worker: {len(summary.done)} done, {len(summary.failed)} failed")
    if summary.failed:
        raise typer.Exit(1)


@app.command(cls=_Command)
def report(grids: Annotated[list[str] | None, typer.Argument(help="Grid names or files (default: all in store)")
                            ] = None,
           store: StoreOpt = None,
           html: Annotated[bool, typer.Option("--html", help="Self-contained HTML page")] = False,
           latex: Annotated[bool, typer.Option("--latex", help="booktabs LaTeX tables and figures")] = False,
           csv: Annotated[bool, typer.Option("--csv", help="Tidy CSV/JSON data behind every table")] = False,
           out_dir: Annotated[Path, typer.Option("--out", help="Output folder")] = Path("reports"),
           runs_dir: Annotated[str | None, typer.Option("--runs-dir", help="Where the cell folders are (default "
                                                        "$SWEEPDAE_RUNS, ./runs, or runs/ beside the store file)")
                               ] = None) -> None:
    """Render the paper's tables and figures from the store, with the paper's numbers beside ours."""
    from sweepdae.report import write_reports

    if not (html or latex or csv):
        html = True
    if out_dir.exists() and not out_dir.is_dir():
        raise SweepdaeError(f"--out {printable(str(out_dir))}: is a file; expected a folder (created if missing)")
    s = _store(store, create=False)
    try:
        names: list[str] | None = None
        if grids:  # a name the store holds is reported as it is: the grid need not be shipped nor a file here
            registered = {str(g.get("name")) for g in s.grids()}
            names = []
            for g in grids:
                try:
                    names.append(g if g in registered else _grid_name(g))
                except GridError:  # neither: write_reports names the grids the store does hold
                    names.append(g)
        paths = write_reports(s, grids=names, out=out_dir, html=html, latex=latex, csv=csv,
                              runs_dir=Path(runs_dir) if runs_dir else None)
    finally:
        s.close()
    for p in paths:
        out.print(str(p))


@app.command(cls=_Command)
def forget(grid: Annotated[str, typer.Argument(help="Grid TOML file (or the name of a shipped grid)")],
           profile: ProfileOpt = None, store: StoreOpt = None, runs_dir: RunsOpt = None,
           only: Annotated[str | None, typer.Option(help="Only cells whose label matches this regex")] = None,
           missing_trainings: Annotated[bool, typer.Option(
               "--missing-trainings", help="Instead: forget the finished trainings of these cells whose folder is "
               "not under --runs-dir (the machine that made them is gone), so the next run trains them again; "
               "cells keep their results")] = False) -> None:
    """Remove cells' results (store and cell folders) so the next run evaluates them again; their trainings stay."""
    import shutil

    from sweepdae.report import default_runs_dir
    from sweepdae.runner import runs_dir_for, select

    p = _plan(grid, profile)
    cells = select(p, only)
    if missing_trainings:
        from sweepdae.cell import TRAIN_DIR
        from sweepdae.cell.train import TRAINED

        tks = sorted({c.train_key for c in cells})
        s = _store(store, create=False)
        try:
            runs = runs_dir_for(runs_dir or default_runs_dir(s))  # as `report` finds it: also runs/ beside the store
            status = s.training_status(tks)
            lost = [tk for tk in tks if status.get(tk) == "done" and not (runs / TRAIN_DIR / tk / TRAINED).exists()]
            gone = s.forget_trainings(lost)
        finally:
            s.close()
        err.print(f"forgot {len(gone)} of {len(tks)} trainings of {printable(p.grid.name)} (finished, with no "
                  f"folder under {printable(str(runs))}); the next run trains them again")
        return
    s = _store(store, create=False)
    try:
        runs = runs_dir_for(runs_dir or default_runs_dir(s))  # as `report` finds it: also runs/ beside the store
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
    err.print(f"forgot {len(gone)} of {len(cells)} cells of {printable(p.grid.name)} (their trainings are kept: "
              "`sweepdae gc` removes trainings no cell uses)")


@app.command(cls=_Command)
def cancel(grid: Annotated[str, typer.Argument(help="Grid TOML file (or the name of a shipped grid)")],
           profile: ProfileOpt = None, store: StoreOpt = None,
           only: Annotated[str | None, typer.Option(help="Only cells whose label matches this regex")] = None) -> None:
    """Cancel the grid's SLURM jobs (scancel); their unfinished cells stay queued and resume from their
    checkpoints when `sweepdae run GRID --executor slurm` submits them again."""
    from sweepdae.runner import select
    from sweepdae.runner import slurm as sl

    keys = {c.key for c in select(_plan(grid, profile), only)}
    s = _store(store, create=False)
    try:
        jobs, queued = sl.cancel(s, keys)
    finally:
        s.close()
    err.print(f"cancelled {len(jobs)} jobs" + (f" ({', '.join(jobs)})" if jobs else "")
              + f"; {len(queued)} of their cells queued again", highlight=False)


@app.command(cls=_Command)
def gc(store: StoreOpt = None, runs_dir: RunsOpt = None,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed")] = False,
       unmarked: Annotated[bool, typer.Option("--include-unmarked", help="Also remove unused trainings that record "
                                             "no store (made before sweepdae recorded one); only when no other "
                                             "store shares the runs folder")] = False) -> None:
    """Remove this store's trainings (runs/_train/<train_key>) that no cell of it uses any more.

    A training records the stores whose cells use it (runs/_train/<train_key>/stores/<store id>): one another
    store uses is never removed, only this store's mark on it."""
    import shutil

    from sweepdae.cell import TRAIN_DIR
    from sweepdae.runner import runs_dir_for
    from sweepdae.runner.coordinator import LEGACY_MARK, STORES_DIR, training_stores

    s = _store(store, create=False)
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
                (d / STORES_DIR / str(me)).unlink(missing_ok=True)
            continue
        # No store or only the `legacy` mark (made before sweepdae recorded stores, maybe by another store that
        # shares runs/, and reused by this one since): kept unless --include-unmarked; an empty folder holds
        # nothing to lose.
        if (stores is None or LEGACY_MARK in stores) and not unmarked and any(
                p.name != STORES_DIR for p in d.iterdir()):
            legacy += 1
            if ours and not dry_run:
                (d / STORES_DIR / str(me)).unlink(missing_ok=True)
            continue
        out.print(Text(printable(f"{'would remove' if dry_run else 'removed'} {d}")))
        removed += 1
        if not dry_run:
            shutil.rmtree(d)
    kept = "".join([f"; {others} kept: another store uses them" if others else "",
                    f"; {legacy} kept: they record no store (--include-unmarked removes them)" if legacy else ""])
    err.print(f"{removed} unused trainings{' (dry run)' if dry_run else ' removed'}; {len(used)} in use{kept}",
              markup=False, highlight=False)


def _grid_name(g: str) -> str:
    p = grid_path(g)
    if p.exists():
        from sweepdae.grid import load_grid

        return load_grid(p).name
    return g


def _click_exceptions() -> tuple[type[Exception], ...]:
    """ClickException as the installed typer raises it: typer < 0.2x uses the click package, newer typer its own
    bundled copy (typer._click), whose classes are not click's. Both are looked up, so either is caught."""
    found = {c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"}
    try:
        import click

        found.add(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(found)


def _show_usage_error(e: Any) -> None:
    """Click's own text (usage line, help hint, `Error: ...`), with the user's input in it made printable."""
    buf = io.StringIO()
    e.show(file=buf)
    lines = buf.getvalue().rstrip("\n").split("\n")  # not splitlines(): it would also split at \x1e, \x85, ...
    sys.stderr.write("".join(printable(line) + "\n" for line in lines))
    sys.stderr.flush()


def main() -> None:
    """Console entry point: library errors become one red line on stderr and a non-zero exit, no traceback;
    usage errors are Click's usage line and error, exit status 2."""
    try:
        rc = app(standalone_mode=False)
    except SweepdaeError as e:
        message = printable(str(e).replace("\n", " "))  # input echoed in any error cannot drive the terminal
        err.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("[red]aborted[/red]")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:
        if isinstance(e, _click_exceptions()):  # usage errors (exit 2) and Click's other user-facing errors
            _show_usage_error(e)
            sys.exit(getattr(e, "exit_code", 2))
        if not isinstance(e, (OSError, ValueError, OverflowError)):  # a bug: its traceback is what gets it fixed
            raise
        # Last resort: a full disk, a file that vanished, a number too large for some library. The user gets one
        # line; SWEEPDAE_DEBUG=1 shows the traceback for a bug report.
        if os.environ.get("SWEEPDAE_DEBUG") == "1":
            traceback.print_exc()
        message = printable(f"{type(e).__name__}: {e}".replace("\n", " "))
        hint = "" if os.environ.get("SWEEPDAE_DEBUG") == "1" else " (SWEEPDAE_DEBUG=1 shows the traceback)"
        err.print(Text("error: ", style="red") + Text(message[:2000] + hint), highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
