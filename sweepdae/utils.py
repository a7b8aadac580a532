"""Small shared helpers: atomic writes, JSON lines events, provenance, watching another process."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from sweepdae import __version__, faults


def plain(v: Any, *, strict: bool = False) -> Any:
    """`v` as JSON holds it: an Enum as its value, a 0-dim numpy or torch scalar as its Python number, dicts,
    lists and tuples element by element (tuples become lists); anything else as it is. The one conversion to plain
    values of the package (knob values, cache headers, the report's data files). `strict`: what
    `json.dumps(allow_nan=False)` takes: a missing value (NaN, +-inf, pandas' NA and NaT) becomes None (null) and
    every dict key a string."""
    if strict and (v is None or (isinstance(v, float) and not math.isfinite(v))
                   or type(v).__name__ in ("NAType", "NaTType")):
        return None
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, dict):
        return {(str(k) if strict else k): plain(x, strict=strict) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x, strict=strict) for x in v]
    if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        return plain(v.item(), strict=strict)
    return v


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim through ctypes, or None off glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn  # type: ignore[no-any-return]


_MALLOC_TRIM = _glibc_malloc_trim()


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc `malloc_trim(0)`; a no-op elsewhere). Called after
    each batch of a feature pass: glibc raises its mmap threshold as large blocks are freed, after which a pass's
    per-batch activations come from the heap and fragment it, so without this the peak RSS grows with the number of
    batches (BENCHMARKS.md section 17). True when memory was released."""
    return bool(_MALLOC_TRIM(0)) if _MALLOC_TRIM is not None else False


def alive(pid: int) -> bool:
    """Whether process `pid` still runs. A zombie (dead, not yet reaped by its parent) does not; a process of
    another user does (it exists, we may not signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:  # Linux; elsewhere a zombie reads as alive
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def exit_when_gone(pid: int, code: int, name: str) -> None:
    """Start a daemon thread (`name`) that ends this process with `os._exit(code)` once process `pid` is gone,
    checked every second. For a process whose owner can die without a chance to stop it (SIGKILL): a cell whose
    coordinator died, a loader worker whose cell died."""

    def watch() -> None:
        while alive(pid):
            time.sleep(1.0)
        os._exit(code)

    threading.Thread(target=watch, daemon=True, name=name).start()


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(f)` into a temp file in the same folder, fsync, rename, fsync the folder: readers see the old or the
    new file, never half of one, and the rename survives a crash. The one atomic writer of the project
    (checkpoints, features, results, tokenizer and FID caches)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            faults.maybe_fault("write", path.name)  # tests: a disk that fills up mid-write (SWEEPDAE_FAULT)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # torch.save on a full disk fails with a RuntimeError ("unexpected pos ...") rather than ENOSPC: name it
        full = isinstance(exc, Exception) and not isinstance(exc, OSError) and disk_full(path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            raise OSError(errno.ENOSPC, f"No space left on device while writing {path} "
                                        f"({type(exc).__name__}: {str(exc)[:200]})") from exc
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system of `folder` has less than `margin` bytes left for us to write."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
    return free * st.f_frsize < margin


def atomic_write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory `fcntl.flock` on `path` (created if missing) for the block: of several processes
    filling one cache entry (tokenizers, probe baselines), one computes and the others wait and read its file. Lock
    files are left in place (deleting them would race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class EventLog:
    """Progress events as JSON lines (the live view and the coordinator tail this file)."""

    def __init__(self, path: Path | None, echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.echo = echo
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **event: Any) -> None:
        event.setdefault("time", time.time())
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(event, default=str) + "\n")
        if self.echo is not None:
            self.echo(event)


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines from byte `offset`; returns them and the new offset (a partial last line waits)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    out = []
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out, offset + end


def git_info(cwd: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the sweepdae checkout (or the working dir), None when not a git repo."""
    where = cwd or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


_PROVENANCE: dict[str, Any] = {}


def provenance() -> dict[str, Any]:
    if not _PROVENANCE:
        import accelerate
        import timm
        import torch

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or "cpu")
        _PROVENANCE.update({"sweepdae": __version__, **{f"git_{k}": v for k, v in git_info().items()},
                            "torch": torch.__version__, "timm": timm.__version__,
                            "accelerate": accelerate.__version__, "python": platform.python_version(),
                            "host": socket.gethostname(), "device": dev})
    return dict(_PROVENANCE)
