"""Launch one cell: `accelerate launch` in its own process group, or a fork of the coordinator on CPU.

A cell runs as one process per GPU of its slot. On CPU it runs as one forked process, or, with
`--procs-per-cell N` ($SWEEPDAE_PROCS_PER_CELL), as N processes through the same `accelerate launch --multi_gpu
--num_processes N` as N GPUs: with no GPU visible (CUDA_VISIBLE_DEVICES empty) Accelerate's `MULTI_CPU` mode joins
them with gloo, so a laptop runs the distributed code paths (per-rank data shards, gathers, all-rank evaluation)
that a GPU node runs. (`--cpu` cannot be combined with `--multi_gpu`: Accelerate refuses it.)

A fresh `accelerate launch` pays Python + torch + timm imports every time (~6-10 s on a 2-core CPU);
the fork launcher reuses the coordinator's already-imported modules, so a CPU cell starts in well under a second
(BENCHMARKS.md). Both write the cell's stdout/stderr to runs/<key>/cell.log and report through files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sweepdae.cell import LOG
from sweepdae.runner.slots import Slot, cell_env, cell_procs, free_port


class Launcher(StrEnum):
    """How a cell's processes start."""

    AUTO = "auto"  # fork on the CPU, accelerate on GPUs
    ACCELERATE = "accelerate"  # `accelerate launch`, one process per GPU (or --procs-per-cell CPU processes)
    FORK = "fork"  # a fork of the coordinator (CPU, one process)


class Handle(Protocol):
    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def signal(self, sig: int) -> None: ...


@dataclass
class ProcHandle:
    proc: subprocess.Popen[bytes]
    port: int | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


def accelerate_command(run_dir: Path, slot: Slot, port: int, procs: int | None = None) -> list[str]:
    """The exact command line of a cell (unit-tested): one process per GPU (or `procs` CPU processes, default
    `cell_procs(slot)`), a free rendezvous port."""
    n = procs if procs is not None else cell_procs(slot)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--main_process_port", str(port), "--dynamo_backend", "no", "--mixed_precision", "no"]
    if n > 1:  # N GPUs, or N CPU processes joined by gloo (DistributedType.MULTI_CPU)
        cmd.append("--multi_gpu")
    elif not slot.gpus:
        cmd.append("--cpu")
    return cmd + ["-m", "sweepdae.cell", str(run_dir)]


def launch_accelerate(run_dir: Path, slot: Slot, *, env: dict[str, str], ports_in_use: set[int]) -> ProcHandle:
    port = free_port(ports_in_use)
    procs = cell_procs(slot, env)
    cmd = accelerate_command(run_dir, slot, port, procs)
    log = open(run_dir / LOG, "ab")
    log.write(("$ " + " ".join(cmd) + "\n").encode())
    log.flush()
    full_env = cell_env(slot, env)
    if slot.gpus:
        full_env.setdefault("OMP_NUM_THREADS", "4")
    else:  # the slot's cores shared by the cell's processes
        threads = int(env.get("SWEEPDAE_CPU_THREADS") or 0) or (os.cpu_count() or 1)
        full_env.setdefault("OMP_NUM_THREADS", str(max(1, threads // procs)))
    # the launcher ignores SIGTERM / SIGUSR2 (SLURM signals every process of a job): it waits for the cell, which
    # installs its own handlers, checkpoints and exits (the ignore is inherited through exec until replaced)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True,
                            preexec_fn=_ignore_stop_signals)
    log.close()
    return ProcHandle(proc, port)


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclass
class ForkHandle:
    pid: int
    _rc: int | None = None

    def poll(self) -> int | None:
        if self._rc is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self._rc = -1
                return self._rc
            if pid == 0:
                return None
            self._rc = os.waitstatus_to_exitcode(status)
        return self._rc

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


def launch_fork(run_dir: Path, slot: Slot, *, env: dict[str, str]) -> ForkHandle | ProcHandle:
    """Fork the coordinator and run the cell in the child (CPU only; torch must not have started threads).

    A cell of several CPU processes (`--procs-per-cell`) cannot be one fork: it goes through `accelerate launch`."""
    if cell_procs(slot, env) > 1:
        return launch_accelerate(run_dir, slot, env=env, ports_in_use=set())
    from sweepdae.cell.run import main  # why: torch and the cell's code, loaded once here, not by each forked cell

    log_fd = os.open(run_dir / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.setsid()
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.environ.clear()
            os.environ.update(cell_env(slot, env))
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            threads = int(os.environ.get("SWEEPDAE_CPU_THREADS", "0") or 0)
            if threads:  # OpenMP threads spin: more threads than cores makes concurrent CPU cells crawl
                import torch

                torch.set_num_threads(threads)
            code = main([str(run_dir)])
        except BaseException:
            traceback.print_exc()
        finally:  # the child must never return into the coordinator's code, even if flushing fails (disk full)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:  # noqa: S110
                    pass
            os._exit(code)
    os.close(log_fd)
    return ForkHandle(pid)
