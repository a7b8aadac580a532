"""The journal file backend: Optuna's `JournalFileBackend`, made safe against a torn last line.

A crash, a full disk or a lost node in the middle of an append leaves a partial last line. Optuna's reader skips it
without a word (a done cell reads as running), and its writer appends the next record onto it, so that one more
write later every reader fails on the glued line. Here the writer, under the journal's lock, first sets a torn end
aside (cut to the last newline, the cut bytes kept in `<journal>.torn-<time>`, one warning line), and rolls back
its own partial append when the write fails; a line it cannot read anywhere else is a `JournalDamaged` error
naming the line and how to repair it, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Generator
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

from sweepdae.errors import StoreError, printable

_TAIL_CHUNK = 1 << 16
# Seconds after which Optuna's journal writers take a lock over whose target has not changed: the default
# `grace_period=30` of JournalFileSymlinkLock / JournalFileOpenLock (optuna/storages/journal/_file.py, optuna 5.0).
LOCK_GRACE_S = 30.0


class JournalDamaged(StoreError):
    """A line inside the journal file is not a whole record (not a torn end, which the next write repairs)."""


def torn_end(path: str) -> int | None:
    """The offset just after the last newline of the file at `path` when its last line is partial, else None."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        pos = size
        while pos > 0:  # read backwards: a journal can be hundreds of MB, a torn line is one record
            start = max(0, pos - _TAIL_CHUNK)
            f.seek(start)
            chunk = f.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            pos = start
        return 0


class SafeJournalFileBackend(JournalFileBackend):
    """`JournalFileBackend` that repairs a torn end before it appends and names a damaged line when it reads."""

    def __init__(self, file_path: str, shown: str) -> None:
        super().__init__(file_path)
        self._shown = shown  # the store URL as messages print it
        self._warned_torn = False

    # ------------------------------------------------------------------ writing
    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        with get_lock_file(self._lock):
            self._repair_torn_end()
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND)
            try:
                before = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:  # a size limit or a full disk can write part of the data, then fail
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except BaseException:
                    # Our own partial append must not stay as a torn line: take it back (shrinking always works).
                    try:
                        os.ftruncate(fd, before)
                    except OSError:
                        pass  # the next writer sets it aside
                    raise
            finally:
                os.close(fd)

    def _repair_torn_end(self) -> None:
        """Under the lock: cut a partial last line off, keeping its bytes in a side file beside the journal."""
        cut = torn_end(self._file_path)
        if cut is None:
            return
        with open(self._file_path, "rb") as f:
            f.seek(cut)
            torn = f.read()
        side = f"{self._file_path}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        with open(side, "xb") as f:  # written (and synced) before the journal is cut: the bytes are never lost
            f.write(torn)
            f.flush()
            os.fsync(f.fileno())
        os.truncate(self._file_path, cut)
        sys.stderr.write(printable(
            f"sweepdae: warning: store {self._shown}: its last line was torn ({len(torn)} bytes of a write cut short "
            f"by a crash or a full disk); cut off and kept in {side}") + "\n")
        sys.stderr.flush()

    # ------------------------------------------------------------------ reading
    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """Optuna's reader, with a damaged line raised as JournalDamaged (its 1-based line number) and a torn end
        skipped with one warning (a write in progress also reads as one, so it is only a warning)."""
        with open(self._file_path, "rb") as f:
            remaining = os.fstat(f.fileno()).st_size
            start = 0
            if log_number_from in self._log_number_offset:
                f.seek(self._log_number_offset[log_number_from])
                start = log_number_from
                remaining -= self._log_number_offset[log_number_from]
            for number, line in enumerate(f, start=start):
                remaining -= len(line)
                if remaining < 0:
                    break  # appended after we looked: the next read gets it
                if not line.endswith(b"\n"):
                    self._warn_torn(number + 1)
                    break
                if number + 1 not in self._log_number_offset:
                    self._log_number_offset[number + 1] = self._log_number_offset[number] + len(line)
                if number < log_number_from:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:  # JSONDecodeError, UnicodeDecodeError
                    del self._log_number_offset[number + 1]
                    raise self._damaged(number + 1) from None
                if not isinstance(record, dict):
                    del self._log_number_offset[number + 1]
                    raise self._damaged(number + 1) from None
                yield record

    def _warn_torn(self, line: int) -> None:
        if self._warned_torn or self._lock_is_fresh():
            return  # said once; or a writer holds the lock, and the line is its write in progress
        self._warned_torn = True
        sys.stderr.write(printable(
            f"sweepdae: warning: store {self._shown}: line {line} (the last) is torn (a write cut short by a crash "
            "or a full disk) and is not read; the next write to the store sets it aside") + "\n")
        sys.stderr.flush()

    def _lock_is_fresh(self) -> bool:
        """A writer may hold the lock right now: the lock exists and it, or the journal it points at, changed less
        than Optuna's grace period ago. A writer killed mid-append leaves its lock behind; Optuna's next writer
        breaks a lock whose target has not changed for that long, so an older lock is a crash's, not a write in
        progress, and its torn line is reported."""
        lock = self._lock._lock_file  # type: ignore[attr-defined]
        try:
            changed = os.lstat(lock).st_mtime  # when the lock was taken (a symlink's own time)
        except OSError:
            return False  # no lock: nobody is writing
        try:
            changed = max(changed, os.stat(lock).st_mtime)  # the journal's last write (JournalFileSymlinkLock)
        except OSError:
            pass  # a dangling link
        grace = getattr(self._lock, "grace_period", None) or LOCK_GRACE_S
        return time.time() - changed < grace

    def _damaged(self, line: int) -> JournalDamaged:
        return JournalDamaged(
            f"store {self._shown}: line {line} of the journal {self._file_path!r} is not a whole record (damaged "
            f"inside the file, not at its end); to repair: copy the file, then delete line {line} (or, when it "
            "holds a torn record glued to a whole one, only the part before the last '{\"op_code\"'), and run again; "
            "the records after it are kept")
