"""The grid file as text: size limits checked before tomllib sees it, and `_Ctx`, which names the file, key and
line in every error. The table and string readers below are the first step of parsing any section."""

from __future__ import annotations

import re
import sys
from typing import Any

from sweepdae.errors import GridError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["MAX_GRID_BYTES", "MAX_KEY_CHARS", "MAX_KEY_PARTS", "tomllib"]

# Limits checked by a cheap linear scan before the text reaches tomllib, whose cost grows faster than the text in a
# key of many dotted parts (a 40 KB dotted key: 21 s and 2.3 GB) and with the file's size (50 MB: 45 s). The largest
# shipped grid is under 8 KB, with keys of at most 5 parts (profiles.cpu.axes.tokenizer.latent_dim) and 40 characters.
MAX_GRID_BYTES = 1 << 20
MAX_KEY_CHARS = 1000
MAX_KEY_PARTS = 16
_PART = r'(?:[A-Za-z0-9_\-]+|"[^"\n]*"|' + r"'[^'\n]*')"
# a run of `.part` (the part before its first dot not included): starts only at a dot, and never backtracks far
_DOT_RUN = re.compile(r"\.[ \t]*" + _PART + r"(?:[ \t]*\.[ \t]*" + _PART + ")*")
_DOT_PART = re.compile(r"\.[ \t]*" + _PART)
_KEY_SHAPE = re.compile(_PART + r"(?:[ \t]*\.[ \t]*" + _PART + ")*")
# a key where it can stand: at a line's start (after [ or [[), or after { or , of an inline table; then = or ]
_KEY_AT = re.compile(r"(?:^|[{,])[ \t]*\[*[ \t]*(" + _PART + r"(?:[ \t]*\.[ \t]*" + _PART + r")*)[ \t]*[=\]]")
_PART_TEXT = re.compile(r'"([^"\n]*)"|' + r"'([^'\n]*)'|([A-Za-z0-9_\-]+)")
_HEAD = re.compile(r"[ \t]*(\[\[?)([^\]\n]*)\]")


def _check_size(text: str, path: str) -> None:
    """Refuse, in one pass over the text, what would make tomllib (or the error-line lookup) slow: a file over
    MAX_GRID_BYTES, a dotted key of more than MAX_KEY_PARTS parts, a key longer than MAX_KEY_CHARS."""
    if len(text) > MAX_GRID_BYTES:  # characters; load_grid checks the bytes before decoding
        raise GridError(f"{path}: the grid file is {len(text):,} characters, more than {MAX_GRID_BYTES:,} "
                        f"({MAX_GRID_BYTES >> 20} MiB); a grid file is a few KB")
    for m in _DOT_RUN.finditer(text):
        if m.group().count(".") >= MAX_KEY_PARTS and len(_DOT_PART.findall(m.group())) >= MAX_KEY_PARTS:
            line = text.count("\n", 0, m.start()) + 1
            raise GridError(f"{path}:{line}: a dotted key of more than {MAX_KEY_PARTS} parts; grid keys have a few "
                            "(profiles.NAME.axes.tokenizer.latent_dim)")
    for i, ln in enumerate(text.splitlines()):
        head = ln.strip()
        head = head.lstrip("[").split("]", 1)[0] if head.startswith("[") else head.split("=", 1)[0]
        head = head.strip()
        if len(head) > MAX_KEY_CHARS and _KEY_SHAPE.fullmatch(head):
            raise GridError(f"{path}:{i + 1}: a key of {len(head):,} characters, more than {MAX_KEY_CHARS}")


def _parts(dotted: str) -> list[str]:
    """The parts of a dotted key as written (`a."b.c"` -> a, b.c), quotes removed."""
    return [q1 or q2 or bare for q1, q2, bare in _PART_TEXT.findall(dotted)]


def _shorten(key: str) -> str:
    """A key as an error line shows it: a hostile 900-character key is cut to its ends."""
    return key if len(key) <= 120 else f"{key[:60]}...{key[-40:]} ({len(key)} characters)"


class _Ctx:
    """Carries the file name and text so every error names the file, the key path and the line."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self._heads: list[tuple[int, str, bool]] | None = None

    def error(self, key: str, message: str) -> GridError:
        line = self.line_of(key)
        where = f"{self.path}:{line}" if line else self.path
        return GridError(f"{where}: {_shorten(key)}: {message}" if key else f"{where}: {message}")

    def line_of(self, key: str) -> int | None:
        """Best-effort line number of a dotted key path (tomllib reports lines only for syntax errors): searched
        first inside the key's own table (`[profiles.demo]`, the i-th `[[include]]`), then in the whole file.
        Linear in the file and the key: each line's keys are read once and compared with the key's tails."""
        start, end, rest = self._section(key)
        found = self._search(rest, start, end) if start is not None and rest else None
        if found is None and (start is None or rest):
            found = self._search(key, 0, len(self.lines))
        return found if found is not None or start is None else start + 1

    def _table_heads(self) -> list[tuple[int, str, bool]]:
        """(line index, dotted name with quotes removed, is an array of tables) of every [table] header."""
        if self._heads is None:
            self._heads = []
            for i, ln in enumerate(self.lines):
                m = _HEAD.match(ln)
                if m and "=" not in m.group(2):
                    self._heads.append((i, ".".join(_parts(m.group(2))), m.group(1) == "[["))
        return self._heads

    def _section(self, key: str) -> tuple[int | None, int, str]:
        """(index of the header line of the table holding `key`, end of that table, the key inside it)."""
        heads = self._table_heads()
        m = re.match(r"([\w\-]+)\[(\d+)\]\.?", key)
        start: int | None = None
        rest = key
        if m:  # an array of tables: the key sits under its (i+1)-th [[name]] header
            tables = [i for i, name, array in heads if array and name == m.group(1)]
            if int(m.group(2)) < len(tables):
                start, rest = tables[int(m.group(2))], key[m.end():]
        else:  # the table of the longest header that is a prefix of the key (first such line)
            best = -1
            for i, name, array in heads:
                if not array and len(name) > best and (key == name or key.startswith(name + ".")):
                    start, best = i, len(name)
            if start is not None:
                rest = key[best + 1:]
        end = next((i for i, _, _ in heads if start is not None and i > start), len(self.lines))
        return start, end, rest

    def _search(self, key: str, start: int, end: int) -> int | None:
        parts = [p for p in re.split(r"\.|\[\d+\]", key) if p]
        if not parts:
            return None
        # the first line that sets the longest tail of the key (`model.size =`, `{ model.size =`, `[axes.d]`) ...
        best: tuple[int, int] | None = None  # (-length of the tail, line)
        words: dict[str, int] = {}  # ... else the first line whose keys hold the key's last part, or else an earlier
        wanted = set(parts)
        for i in range(start, end):
            for m in _KEY_AT.finditer(self.lines[i]):
                got = _parts(m.group(1))
                if len(got) <= len(parts) and parts[len(parts) - len(got):] == got:
                    if best is None or (-len(got), i) < best:
                        best = (-len(got), i)
                for w in got:
                    if w in wanted:
                        words.setdefault(w, i)
        if best is not None:
            return best[1] + 1
        for leaf in reversed(parts):
            if leaf in words:
                return words[leaf] + 1
        return None


def _table(v: Any, key: str, ctx: _Ctx, required: bool = False) -> dict[str, Any]:
    if v is None:
        if required:
            raise ctx.error(key, f"missing [{key}] table")
        return {}
    if not isinstance(v, dict):
        raise ctx.error(key, f"must be a table, got {_tname(v)}")
    return v


def _str(v: Any, key: str, ctx: _Ctx, required: bool = False) -> str:
    if v is None and required:
        raise ctx.error(key, "missing (a string)")
    if not isinstance(v, str):
        raise ctx.error(key, f"must be a string, got {_tname(v)}")
    return v


def _tname(v: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(v), type(v).__name__)
