"""Paths as the store keeps them: relative to the runs folder (or the store's own folder), and source files in a
traceback relative to their package, never one machine's absolute paths. A journal store is shared and shipped
(reports/examples/cpu/store.journal): it must not carry where it was made."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

_FRAME = re.compile(r'File "(/[^"\n]+)"')
_MARKERS = ("/site-packages/", "/dist-packages/")


def portable_frame(path: str) -> str:
    """`/venv/lib/python3.12/site-packages/torch/nn/x.py` -> `site-packages/torch/nn/x.py`; `/any/checkout/sweepdae/
    cell/train.py` -> `sweepdae/cell/train.py`; `/usr/lib/python3.12/x.py` -> `python3.12/x.py`; else unchanged."""
    for marker in _MARKERS:
        if marker in path:
            return path[path.rindex(marker) + 1:]
    if "/sweepdae/" in path:
        return path[path.rindex("/sweepdae/") + 1:]
    m = re.search(r"/(python3[^/]*/.*)$", path)
    return m.group(1) if m else path


def portable_text(text: str, runs_dir: Path | str | None = None) -> str:
    """A traceback tail or an error message with its source frames made relative (`portable_frame`) and the runs
    folder's absolute path dropped (paths under it become relative to it)."""
    text = _FRAME.sub(lambda m: f'File "{portable_frame(m.group(1))}"', text)
    if runs_dir:
        root = str(runs_dir).rstrip("/")
        text = re.sub(re.escape(root) + r"(/|(?![\w.-]))", lambda m: "" if m.group(1) else ".", text)
    return text


def portable(value: Any, runs_dir: Path | str) -> Any:
    """`value` (JSON data) with every string that is a path under `runs_dir` made relative to it (posix), and every
    traceback in it made relative to its package."""
    root = str(runs_dir).rstrip("/")
    if isinstance(value, dict):
        return {k: portable(v, runs_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, runs_dir) for v in value]
    if isinstance(value, str):
        if value == root:
            return "."
        if value.startswith(root + "/"):
            return value[len(root) + 1:]
        if 'File "/' in value or root in value:
            return portable_text(value, runs_dir)
    return value


def stored_runs_dir(runs_dir: Path, store_folder: Path | None) -> str:
    """The runs folder as a training's record keeps it: relative to the store's folder when it lies beneath it (a
    journal or SQLite file beside its runs/), else absolute (a database shared by machines: it says where)."""
    if store_folder is not None:
        try:
            return runs_dir.resolve().relative_to(store_folder.resolve()).as_posix() or "."
        except ValueError:
            pass
    return str(runs_dir.absolute())


def resolve_runs_dir(stored: str, store_folder: Path | None) -> str:
    """The absolute runs folder of a training's record (`stored_runs_dir` undone)."""
    if os.path.isabs(stored) or store_folder is None:
        return stored
    return str(store_folder.resolve() / stored)


def relativize_journal(journal: Path, runs_dir: str, *, runs_as: str) -> int:
    """Rewrite the records of a journal file made with its runs folder at `runs_dir` so that they hold no absolute
    path: `runs_dir` itself becomes `runs_as` (where the runs folder is now, relative to the journal's folder),
    paths under it become relative to it, and traceback frames relative to their package. Lines that change are
    re-encoded as Optuna writes them; the others are kept byte for byte. Returns the number of lines changed.
    (A one-off for journals made before sweepdae kept paths relative, e.g. reports/examples/cpu/store.journal.)"""
    root = runs_dir.rstrip("/")

    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, str):
            return runs_as if value == root else portable(value, root)
        return value

    out, changed = [], 0
    for line in journal.read_bytes().splitlines(keepends=True):
        record = json.loads(line)
        new = fix(record)
        if new != record:
            line = (json.dumps(new, separators=(",", ":")) + "\n").encode("utf-8")
            changed += 1
        out.append(line)
    tmp = journal.with_name(journal.name + ".rewrite")
    tmp.write_bytes(b"".join(out))
    os.replace(tmp, journal)
    return changed
