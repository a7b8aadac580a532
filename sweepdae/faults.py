"""Fault injection: SWEEPDAE_FAULT="kind@where[:once][ for REGEX][,...]" makes a cell fail on purpose, so the
recovery paths (retries, resume, disk full, a killed coordinator) can be tried on real runs.

kinds: oom (raises torch.OutOfMemoryError), crash (RuntimeError), exit (os._exit 137), sleep (sleeps
SWEEPDAE_FAULT_SLEEP seconds, default 30), diskfull (OSError ENOSPC, e.g. at a checkpoint or file write).
where: step=N (global optimizer step), epoch=N (start of epoch), phase=NAME (data|tokenizer|train|probe|fid|figures),
checkpoint=N (saving the epoch-N checkpoint), write=FILENAME (any atomic write of that file, e.g. result.json),
PHASE_batch=N (a phase that halves its own batch on out-of-memory, sweepdae/memory.py, each time it tries batch N:
tokenizer_batch=N for the conv VAE fit's micro-batch, fid_batch=N for FID's sampling / Inception batches).
`:once` (`oom@step=2:once`) fires only on the first attempt (SWEEPDAE_ATTEMPT == 1).
` for REGEX` (`crash@phase=probe for d=4`) fires only in cells whose label matches REGEX.
Faults fire at phase boundaries, epoch and step starts, batch tries and file writes, never inside the computation.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import time

_cell_label = ""


def set_cell(label: str) -> None:
    """The label of the cell this process runs (what ` for REGEX` is matched against)."""
    global _cell_label
    _cell_label = label


def _spec() -> tuple[tuple[str, str, str, bool], ...]:
    raw = os.environ.get("SWEEPDAE_FAULT", "")
    return _parse(raw, _cell_label) if raw else ()


@functools.lru_cache(maxsize=8)
def _parse(raw: str, label: str) -> tuple[tuple[str, str, str, bool], ...]:
    out = []
    for item in filter(None, (s.strip() for s in raw.split(","))):
        item, _, only = item.partition(" for ")
        if only and not re.search(only.strip(), label):
            continue
        once = item.endswith(":once")
        item = item.removesuffix(":once")
        kind, _, where = item.partition("@")
        what, _, value = where.partition("=")
        out.append((kind, what, value, once))
    return tuple(out)


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
