"""A dataset whose items take a module-level lock, for tests/test_data.py's fork test: a worker forked while another
thread of the parent holds the lock inherits it held, and waits on it forever."""

from __future__ import annotations

import threading

import torch
from torch.utils.data import Dataset

LOCK = threading.Lock()


class LockedItems(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        with LOCK:
            return torch.tensor([i])


def take_lock() -> None:
    """A child's body: exit 0 when it gets LOCK within half a second, else 3."""
    raise SystemExit(0 if LOCK.acquire(timeout=0.5) else 3)
