"""GPU slots: which devices each concurrently running cell gets, and a bind-tested free port per launch."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sweepdae.errors import SweepdaeError


@dataclass(frozen=True)
class Slot:
    """A place a cell can run: a set of GPU indices (empty = CPU) shared by at most `capacity` cells."""

    index: int
    gpus: tuple[int, ...]

    @property
    def label(self) -> str:
        return "cpu" if not self.gpus else "cuda:" + ",".join(map(str, self.gpus))


def detect_gpus() -> list[int]:
    """Visible CUDA devices (respects CUDA_VISIBLE_DEVICES); [] on a machine without a GPU."""
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:
        return []


def parse_gpus(spec: str, available: list[int] | None = None) -> list[int]:
    """'auto' -> every visible GPU; 'cpu' or 'none' -> []; '0,2' -> those indices (checked when known)."""
    s = spec.strip().lower()
    if s == "auto":
        return detect_gpus() if available is None else list(available)
    if s in ("cpu", "none", ""):
        return []
    try:
        ids = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise SweepdaeError(f"--gpus: expected 'auto', 'cpu' or a comma-separated list of indices, got {spec!r}"
                            ) from None
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise SweepdaeError(f"--gpus: indices must be distinct and non-negative, got {spec!r}")
    if available is not None:
        bad = [i for i in ids if i not in available]
        if bad:
            raise SweepdaeError(f"--gpus: no GPU {bad[0]} on this machine (visible: {available or 'none'})")
    return ids


def make_slots(gpus: list[int], *, gpus_per_cell: int = 1, cells_per_gpu: int = 1, cpu_cells: int = 1
               ) -> list[Slot]:
    """Slots for a device list: K GPUs per cell (disjoint groups), or N cells packed on each GPU.

    Without GPUs, `cpu_cells` concurrent CPU cells (default 1: two cells on 2 cores only slow each other down).
    """
    if gpus_per_cell < 1 or cells_per_gpu < 1 or cpu_cells < 1:
        raise SweepdaeError("--gpus-per-cell, --cells-per-gpu and --cpu-cells must be >= 1")
    if gpus_per_cell > 1 and cells_per_gpu > 1:
        raise SweepdaeError("--gpus-per-cell > 1 and --cells-per-gpu > 1 cannot be combined")
    if not gpus:
        return [Slot(i, ()) for i in range(cpu_cells)]
    if gpus_per_cell > len(gpus):
        raise SweepdaeError(f"--gpus-per-cell {gpus_per_cell} but only {len(gpus)} GPU(s) selected")
    groups = [tuple(gpus[i:i + gpus_per_cell]) for i in range(0, len(gpus) - gpus_per_cell + 1, gpus_per_cell)]
    slots: list[Slot] = []
    for g in groups:
        for _ in range(cells_per_gpu):
            slots.append(Slot(len(slots), g))
    return slots


def free_port(taken: set[int] | None = None, start: int | None = None) -> int:
    """A TCP port that binds right now on all interfaces and is not already handed to another running cell."""
    taken = taken or set()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0 if start is None else start))
            port = s.getsockname()[1]
        if port not in taken:
            return port
        start = None
    raise SweepdaeError("no free TCP port found for --main_process_port")


# `sweepdae run/worker/tune --procs-per-cell N` (the CLI sets it; the coordinator passes its environment to the cells):
# each CPU cell runs as N processes through the same `accelerate launch --multi_gpu` as N GPUs (gloo on CPU)
PROCS_ENV = "SWEEPDAE_PROCS_PER_CELL"


def cell_procs(slot: Slot, env: dict[str, str] | None = None) -> int:
    """Processes of a cell in `slot`: one per GPU; on CPU, $SWEEPDAE_PROCS_PER_CELL (default 1)."""
    if slot.gpus:
        return len(slot.gpus)
    value = (os.environ if env is None else env).get(PROCS_ENV, "") or "1"
    try:
        n = int(value)
    except ValueError:
        raise SweepdaeError(f"{PROCS_ENV}={value!r}: expected a whole number >= 1") from None
    if n < 1:
        raise SweepdaeError(f"{PROCS_ENV}={value!r}: expected a whole number >= 1")
    return n


def cell_env(slot: Slot, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a cell process: pinned CUDA_VISIBLE_DEVICES (or none for CPU cells)."""
    env = dict(os.environ if base is None else base)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot.gpus)) if slot.gpus else ""
    return env
