"""The options of `run`, `worker` and `tune`, declared once: the `Resources` their cells run on (checked in one
place), the closed sets of choices, and `run --executor slurm`'s options for every job."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from sweepdae.cell import TRACKERS
from sweepdae.errors import SweepdaeError, printable
from sweepdae.runner import parse_gpus, runs_dir_for
from sweepdae.runner.launch import Launcher
from sweepdae.runner.slots import PROCS_ENV

E = TypeVar("E", bound=StrEnum)


class Executor(StrEnum):
    """Where `sweepdae run` runs the cells."""

    LOCAL = "local"  # this machine's slots
    SLURM = "slurm"  # one SLURM job per training group, submitted through submitit


def choice(kind: type[E], value: str, option: str) -> E:
    """`value` as a member of the closed set `kind`, or an error naming the option and the valid values."""
    try:
        return kind(value)
    except ValueError:
        names = [str(m.value) for m in kind]
        raise SweepdaeError(f"{option}: expected {', '.join(names[:-1])} or {names[-1]}, got {value!r}") from None


@dataclass(frozen=True)
class Resources:
    """What the cells of `run`, `worker` and `tune` run on and how; the launcher and executor are checked here, the
    rest by `apply`."""

    gpus: str = "auto"  # 'auto', 'cpu' or GPU indices '0,1'
    gpus_per_cell: int | None = None  # None: 1, or with --executor slurm what the grid's [slurm] table says
    cells_per_gpu: int = 1
    cpu_cells: int = 1  # concurrent cells without a GPU
    procs_per_cell: int = 1  # CPU cells: processes of each (gloo), the code path of as many GPUs
    max_retries: int = 1  # retries of a retryable failure (oom, crash, killed)
    launcher: str = Launcher.AUTO
    plain: bool | None = None  # line output (True), the live view (False), or as the terminal allows (None)
    runs_dir: str | None = None  # None: $SWEEPDAE_RUNS or ./runs
    tracker: str | None = None  # None: $SWEEPDAE_TRACKER or tensorboard
    executor: str = Executor.LOCAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "launcher", choice(Launcher, self.launcher, "--launcher"))
        object.__setattr__(self, "executor", choice(Executor, self.executor, "--executor"))

    @property
    def slurm(self) -> bool:
        return self.executor == Executor.SLURM

    @property
    def cell_gpus(self) -> int:
        """GPUs per cell on this machine's slots."""
        return 1 if self.gpus_per_cell is None else self.gpus_per_cell

    def apply(self, *, dry_run: bool = False) -> None:
        """Check the tracker, --procs-per-cell (not for a dry run), the runs folder and --gpus-per-cell, and export
        what the cells read from the environment (SWEEPDAE_TRACKER, SWEEPDAE_PROCS_PER_CELL; SLURM jobs inherit
        it from the submitting shell)."""
        _set_tracker(self.tracker)
        if not dry_run:
            _set_procs(self.procs_per_cell, self.gpus, self.executor)
        _check_runs_dir(self.runs_dir)
        if self.gpus_per_cell is not None and self.gpus_per_cell < (0 if self.slurm else 1):
            raise SweepdaeError(f"--gpus-per-cell: expected an integer >= {0 if self.slurm else 1}, "
                                f"got {self.gpus_per_cell}")


@dataclass(frozen=True)
class SlurmOptions:
    """`run --executor slurm`'s options for every job; None: from the grid's [slurm] table, the user config or the
    defaults (`runner.slurm.resources`)."""

    partition: str | None = None
    time: int | None = None  # minutes
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    cpus: int | None = None
    mem_gb: float | None = None
    gpus: int | None = None  # --gpus-per-cell with --executor slurm: the GPUs of each job

    def given(self) -> dict[str, Any]:
        """The options given, by name, as `runner.slurm.resources` reads them."""
        options = {"partition": self.partition, "time": self.time, "account": self.account, "qos": self.qos,
                   "constraint": self.constraint, "cpus": self.cpus, "mem_gb": self.mem_gb, "gpus": self.gpus}
        return {k: v for k, v in options.items() if v is not None}


def _set_tracker(tracker: str | None) -> None:
    if tracker is None:
        return
    if tracker.lower() not in (*TRACKERS, "none"):
        raise SweepdaeError(f"--tracker: expected one of {', '.join([*TRACKERS, 'none'])}, got {tracker!r}")
    os.environ["SWEEPDAE_TRACKER"] = tracker.lower()


def _set_procs(procs: int, gpus: str, executor: str) -> None:
    """The coordinator's cells read SWEEPDAE_PROCS_PER_CELL (`sweepdae.runner.slots.cell_procs`)."""
    if procs == 1:
        return
    if executor != Executor.LOCAL:
        raise SweepdaeError("--procs-per-cell: local runs only (a SLURM job's processes are its --gpus-per-cell)")
    if parse_gpus(gpus):
        raise SweepdaeError("--procs-per-cell: for CPU cells (add --gpus cpu); a GPU cell runs one process per GPU "
                            "(--gpus-per-cell)")
    os.environ[PROCS_ENV] = str(procs)


def _check_runs_dir(runs_dir: str | None) -> None:
    """A runs folder that is a file would fail the first cell after it was claimed: refuse it before."""
    path = runs_dir_for(runs_dir)
    if path.exists() and not path.is_dir():
        raise SweepdaeError(f"--runs-dir: {printable(str(path))} is not a folder"
                            + ("" if runs_dir else " (from $SWEEPDAE_RUNS or ./runs)"))
