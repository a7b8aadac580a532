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

import sweepdae.runner.status  # show_status: looked up where callers may replace it
from sweepdae import __version__
from sweepdae.errors import GridError, StoreNotFound, SweepdaeError, printable
from sweepdae.grid import load_grid
from sweepdae.recipe import probe_t
from sweepdae.runner import select
from sweepdae.runner.cleanup import collect_garbage, forget_cells, forget_missing_trainings
from sweepdae.runner.options import Resources, SlurmOptions
from sweepdae.runner.slurm import cancel as cancel_jobs
from sweepdae.runner.sweep import Sweep, grid_path, load_plan, run_sweep, tune_grid, work
from sweepdae.store import open_store


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
# the options of run, worker and tune: the fields of runner.options.Resources
GpusOpt = Annotated[str, typer.Option(help="'auto', 'cpu' or GPU indices '0,1'")]
GpusPerCellOpt = Annotated[int, typer.Option(min=1, help="GPUs per cell (one process each)")]
CellsPerGpuOpt = Annotated[int, typer.Option(min=1, help="Cells packed on one GPU")]
CpuCellsOpt = Annotated[int, typer.Option(min=1, help="Concurrent cells without a GPU")]
ProcsOpt = Annotated[int, typer.Option("--procs-per-cell", min=1, help="CPU cells: run each as N processes through "
                                       "`accelerate launch --multi_gpu` (gloo), the code path of N GPUs")]
RetriesOpt = Annotated[int, typer.Option(min=0, help="Retries of a retryable failure (oom, crash, killed)")]
LauncherOpt = Annotated[str, typer.Option(help="auto (fork on CPU, accelerate on GPU), accelerate or fork")]
PlainOpt = Annotated[bool | None, typer.Option("--plain/--live", help="Force line output / the live view")]
TrackerOpt = Annotated[str | None, typer.Option("--tracker", help="Where training curves go: tensorboard (default: "
                                               "runs/_tensorboard), wandb, mlflow, aim or none (env "
                                               "SWEEPDAE_TRACKER)")]
OnlyOpt = Annotated[str | None, typer.Option(help="Only cells whose label matches this regex")]
GridArg = Annotated[str, typer.Argument(help="Grid TOML file (or the name of a shipped grid)")]


def _version(value: bool) -> None:
    if value:
        out.print(f"sweepdae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """sweepdae: reproduce and extend the l-DAE ablations, one TOML grid per table."""


def _store(url: str | None, create: bool = True) -> Any:
    return open_store(url, create=create)


PLAN_COLUMNS = ("#", "cell", "key", "training", "status")
PLAIN_TABLE_ROWS = 2000  # larger plans print plain aligned columns instead of a Rich table


@app.command(cls=_Command)
def plan(grid: GridArg,
         profile: ProfileOpt = None, store: StoreOpt = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print the cells as JSON on stdout")] = False) -> None:
    """Expand a grid into cells: label, key, training, status in the store."""
    p = load_plan(grid, profile)
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
    keys = [c.key for c in load_plan(grid, profile).cells] if grid else None
    sweepdae.runner.status.show_status(_store(store, create=False), keys, as_json=as_json, watch=watch,
                                       interval=interval, console=out)


@app.command(cls=_Command)
def run(grids: Annotated[list[str], typer.Argument(help="Grid TOML files (or names of shipped grids), run one after "
                                                   "the other against the same store")],
        profile: ProfileOpt = None, store: StoreOpt = None, gpus: GpusOpt = "auto",
        gpus_per_cell: Annotated[int | None, typer.Option(help="GPUs per cell (one process each); with --executor "
                                                   "slurm, the GPUs of each job, 0 for CPU jobs (default: 1)")
                                 ] = None,
        cells_per_gpu: CellsPerGpuOpt = 1, cpu_cells: CpuCellsOpt = 1, procs_per_cell: ProcsOpt = 1,
        max_retries: RetriesOpt = 1,
        fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first cell that fails")] = False,
        only: OnlyOpt = None,
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
        launcher: LauncherOpt = "auto", plain: PlainOpt = None, runs_dir: RunsOpt = None,
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
    res = Resources(gpus=gpus, gpus_per_cell=gpus_per_cell, cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells,
                    procs_per_cell=procs_per_cell, max_retries=max_retries, launcher=launcher, plain=plain,
                    runs_dir=runs_dir, tracker=tracker, executor=executor)
    slurm = SlurmOptions(partition=partition, time=time_min, account=account, qos=qos, constraint=constraint,
                         cpus=cpus, mem_gb=mem_gb)
    todo = Sweep(only=only, fail_fast=fail_fast, dry_run=dry_run, rate=rate, json_out=json_out,
                 until_decided=until_decided, max_seeds=max_seeds, report=report, wait=wait)
    _exit(run_sweep(grids, profile=profile, store_url=store, res=res, slurm=slurm, sweep=todo, err=err, out=out))


@app.command(cls=_Command)
def tune(grid: GridArg,
         trials: Annotated[int, typer.Option("--trials", help="Complete trials wanted in the study, in all")],
         profile: ProfileOpt = None, store: StoreOpt = None,
         metric: Annotated[str | None, typer.Option(help="What to optimise, a cell metric (default: the grid's "
                                                    "tune.metric, else probe_top1)")] = None,
         direction: Annotated[str | None, typer.Option(help="maximize or minimize (default: from the metric: FID "
                                                       "and losses minimise, accuracies maximise)")] = None,
         sampler: Annotated[str, typer.Option(help="tpe, random or grid")] = "tpe",
         seed: Annotated[int | None, typer.Option("--seed", help="The sampler's seed (the cells' seeds are the "
                                                  "grid's)")] = None,
         gpus: GpusOpt = "auto", gpus_per_cell: GpusPerCellOpt = 1, cells_per_gpu: CellsPerGpuOpt = 1,
         cpu_cells: CpuCellsOpt = 1, procs_per_cell: ProcsOpt = 1, max_retries: RetriesOpt = 1,
         launcher: LauncherOpt = "auto", plain: PlainOpt = None, runs_dir: RunsOpt = None,
         tracker: TrackerOpt = None) -> None:
    """Adaptive search (Optuna) over the grid's axes, or the ranges of its tune.params table: each trial runs the
    grid's seeds and scores their mean. Cells are the ones `run` makes: a recipe already done is reused, never
    trained again."""
    if trials < 1:
        raise SweepdaeError(f"--trials: expected an integer >= 1, got {trials}")
    res = Resources(gpus=gpus, gpus_per_cell=gpus_per_cell, cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells,
                    procs_per_cell=procs_per_cell, max_retries=max_retries, launcher=launcher, plain=plain,
                    runs_dir=runs_dir, tracker=tracker)
    _exit(tune_grid(grid, profile=profile, store_url=store, trials=trials, metric=metric, direction=direction,
                    sampler=sampler, seed=seed, res=res, err=err))


@app.command(cls=_Command)
def worker(store: StoreOpt = None, gpus: GpusOpt = "auto", gpus_per_cell: GpusPerCellOpt = 1,
           cells_per_gpu: CellsPerGpuOpt = 1, cpu_cells: CpuCellsOpt = 1, procs_per_cell: ProcsOpt = 1,
           max_retries: RetriesOpt = 1,
           forever: Annotated[bool, typer.Option("--forever", help="Keep waiting for new cells")] = False,
           launcher: LauncherOpt = "auto", plain: PlainOpt = None, runs_dir: RunsOpt = None,
           tracker: TrackerOpt = None) -> None:
    """Take queued cells of any grid from a shared store and run them here."""
    res = Resources(gpus=gpus, gpus_per_cell=gpus_per_cell, cells_per_gpu=cells_per_gpu, cpu_cells=cpu_cells,
                    procs_per_cell=procs_per_cell, max_retries=max_retries, launcher=launcher, plain=plain,
                    runs_dir=runs_dir, tracker=tracker)
    _exit(work(store, res=res, forever=forever, err=err))


def _exit(code: int) -> None:
    """A library call's exit status, as the command's."""
    if code:
        raise typer.Exit(code)


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
    from sweepdae.report import write_reports  # why: pandas, scipy: ~2 s to import

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
def forget(grid: GridArg, profile: ProfileOpt = None, store: StoreOpt = None, runs_dir: RunsOpt = None,
           only: OnlyOpt = None,
           missing_trainings: Annotated[bool, typer.Option(
               "--missing-trainings", help="Instead: forget the finished trainings of these cells whose folder is "
               "not under --runs-dir (the machine that made them is gone), so the next run trains them again; "
               "cells keep their results")] = False) -> None:
    """Remove cells' results (store and cell folders) so the next run evaluates them again; their trainings stay."""
    p = load_plan(grid, profile)
    cells = select(p, only)
    if missing_trainings:
        forget_missing_trainings(store, p, cells, runs_dir=runs_dir, err=err)
    else:
        forget_cells(store, p, cells, runs_dir=runs_dir, err=err)


@app.command(cls=_Command)
def cancel(grid: GridArg, profile: ProfileOpt = None, store: StoreOpt = None, only: OnlyOpt = None) -> None:
    """Cancel the grid's SLURM jobs (scancel); their unfinished cells stay queued and resume from their
    checkpoints when `sweepdae run GRID --executor slurm` submits them again."""
    keys = {c.key for c in select(load_plan(grid, profile), only)}
    s = _store(store, create=False)
    try:
        jobs, queued = cancel_jobs(s, keys)
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
    collect_garbage(store, runs_dir=runs_dir, dry_run=dry_run, unmarked=unmarked, err=err, out=out)


def _grid_name(g: str) -> str:
    p = grid_path(g)
    if p.exists():
        return load_grid(p).name
    return g


def _click_exceptions() -> tuple[type[Exception], ...]:
    """ClickException as the installed typer raises it: typer < 0.2x uses the click package, newer typer its own
    bundled copy (typer._click), whose classes are not click's. Both are looked up, so either is caught."""
    found = {c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"}
    try:
        import click  # why: optional; newer typer bundles its own copy

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
