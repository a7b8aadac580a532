"""Out of memory inside a phase: halve that phase's own batch and try again, in the same process.

A phase whose memory grows with a batch of its own (the conv VAE fit's micro-batch, FID's sampling and Inception
batches, a probe's feature batch) wraps each unit of work in `BatchSize.run(fn)`: `fn(b)` does the work at batch
`b`; on `torch.OutOfMemoryError` the frames that held the failed attempt's tensors are released, the allocator's
cache is emptied, `b` is halved and `fn` called again, down to 1, where `PhaseOutOfMemory` (failure class "oom")
stops the cell with the batch it reached. The batch that worked is kept for the following calls and reported by
the phase (`BatchSize.record()`), so a result says at which batch it was computed.

`fn` must be repeatable: it may be called again after a partial attempt, so it starts from the state before it
(e.g. zeroes the gradients it accumulates) and draws no random numbers a retry would draw differently.

Fault injection: `SWEEPDAE_FAULT="oom@NAME_batch=B"` raises the out-of-memory error each time the phase NAME
tries batch B (sweepdae/faults.py), so the halving is exercised on CPU.

The coordinator's own retry (a new process with `train.micro_batch_size` halved) stays the rule for the training
phase, whose micro-batch is a recipe knob; a phase that halves itself here is not retried that way
(sweepdae/runner/coordinator.py).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from sweepdae import faults
from sweepdae.errors import TrainingError

T = TypeVar("T")


class PhaseOutOfMemory(TrainingError):
    """A phase ran out of memory even at batch 1 (failure class "oom")."""

    def __init__(self, message: str) -> None:
        super().__init__(message, failure_class="oom")


def free_memory() -> None:
    """Drop unreachable tensors and hand the CUDA allocator's cached blocks back (a no-op without CUDA)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class BatchSize:
    """A phase's batch that halves on out-of-memory and remembers the size that worked."""

    def __init__(self, start: int, *, phase: str, what: str,
                 on_halve: Callable[[int, int], None] | None = None) -> None:
        if start < 1:
            raise ValueError(f"{what}: batch must be >= 1, got {start}")
        self.start = int(start)
        self.value = int(start)
        self.phase = phase  # fault-injection name: SWEEPDAE_FAULT="oom@{phase}_batch=B"
        self.what = what  # for messages
        self.halvings = 0
        self.on_halve = on_halve

    def run(self, fn: Callable[[int], T]) -> T:
        """fn(batch) with the current batch, halving it on out-of-memory until fn returns (or batch 1 fails)."""
        while True:
            failed: str | None = None
            try:
                faults.maybe_fault(f"{self.phase}_batch", self.value)
                return fn(self.value)
            except torch.OutOfMemoryError as e:
                failed = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            # out of the except block: the traceback, and the activations its frames held, are released now
            free_memory()
            if self.value <= 1:
                raise PhaseOutOfMemory(f"{self.what}: out of memory even at batch 1 (started at {self.start}; "
                                       f"{failed})")
            old, self.value = self.value, self.value // 2
            self.halvings += 1
            if self.on_halve is not None:
                self.on_halve(old, self.value)

    def record(self, prefix: str) -> dict[str, Any]:
        """{prefix}_batch (what worked), {prefix}_batch_start and {prefix}_oom_halvings, for a phase's result."""
        return {f"{prefix}_batch": self.value, f"{prefix}_batch_start": self.start,
                f"{prefix}_oom_halvings": self.halvings}
