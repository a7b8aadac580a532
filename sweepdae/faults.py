"""Fault injection for tests: SWEEPDAE_FAULT="kind@where[,kind@where]" makes a cell fail on purpose.

kinds: oom (raises torch.OutOfMemoryError), nonfinite (loss becomes NaN), crash (RuntimeError), exit (os._exit 137),
sleep (sleeps SWEEPDAE_FAULT_SLEEP seconds, default 30), diskfull (OSError ENOSPC, e.g. at a checkpoint or file write).
where: step=N (global optimizer step), epoch=N (start of epoch), phase=NAME (tokenizer|train|probe|fid|figures),
checkpoint=N (saving the epoch-N checkpoint), write=FILENAME (any atomic write of that file, e.g. result.json).
`once` suffix (`oom@step=2:once`) fires only on the first attempt (SWEEPDAE_ATTEMPT == 1).
SWEEPDAE_FAULT_ONLY=REGEX limits the faults to cells whose label matches (the cell sets SWEEPDAE_CELL_LABEL).
"""

from __future__ import annotations

import errno
import os
import re
import time


def _spec() -> list[tuple[str, str, str, bool]]:
    raw = os.environ.get("SWEEPDAE_FAULT", "")
    only = os.environ.get("SWEEPDAE_FAULT_ONLY")
    if raw and only and not re.search(only, os.environ.get("SWEEPDAE_CELL_LABEL", "")):
        return []
    out = []
    for item in filter(None, (s.strip() for s in raw.split(","))):
        once = item.endswith(":once")
        item = item.removesuffix(":once")
        kind, _, where = item.partition("@")
        what, _, value = where.partition("=")
        out.append((kind, what, value, once))
    return out


def maybe_fault(what: str, value: int | str) -> None:
    """Raise or act when a fault is configured at this point (no-op in normal runs)."""
    for kind, w, v, once in _spec():
        if w != what or v != str(value):
            continue
        if once and os.environ.get("SWEEPDAE_ATTEMPT", "1") != "1":
            continue
        if kind == "oom":
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by SWEEPDAE_FAULT at {what}={value})")
        if kind == "crash":
            raise RuntimeError(f"injected crash at {what}={value}")
        if kind == "exit":
            os._exit(137)
        if kind == "sleep":
            time.sleep(float(os.environ.get("SWEEPDAE_FAULT_SLEEP", "30")))
        if kind == "diskfull":
            raise OSError(errno.ENOSPC, f"No space left on device (injected at {what}={value})")


def nonfinite_at(step: int) -> bool:
    return any(k == "nonfinite" and w == "step" and v == str(step)
               and not (once and os.environ.get("SWEEPDAE_ATTEMPT", "1") != "1")
               for k, w, v, once in _spec())
