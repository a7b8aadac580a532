"""Progress of a sweep: a Rich live view on a terminal, plain lines otherwise (CI, log files). Both on stderr."""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sweepdae.errors import printable


@dataclass
class CellView:
    key: str
    label: str
    device: str
    attempt: int
    started: float
    phase: str = "starting"
    epoch: str = ""
    loss: float | None = None
    ips: float | None = None
    eta_s: float | None = None
    step_frac: float = 0.0


@dataclass
class View:
    """Collects events; subclasses render them. Counts are for the cells this run is responsible for."""

    total: int = 0
    cached: int = 0
    done: int = 0
    failed: int = 0
    running: dict[str, CellView] = field(default_factory=dict)
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (label, what it waits for)
    finished: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=6))
    durations: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def cell_waiting(self, key: str, label: str, why: str) -> None:
        """A claimed cell that waits for its training (trained by another cell, here or elsewhere)."""
        self.waiting[key] = (label, why)
        self._line(f"wait   {label}: {why}")

    def cell_unwaiting(self, key: str) -> None:
        self.waiting.pop(key, None)

    def cell_started(self, key: str, label: str, device: str, attempt: int) -> None:
        self.waiting.pop(key, None)
        self.running[key] = CellView(key, label, device, attempt, time.time())
        self._line(f"start  {label} on {device}" + (f" (attempt {attempt})" if attempt > 1 else ""))

    def cell_event(self, key: str, e: dict[str, Any]) -> None:
        c = self.running.get(key)
        if c is None:
            return
        c.phase = e.get("phase", c.phase)
        if "epoch" in e and "epochs" in e:
            c.epoch = f"{e['epoch']}/{e['epochs']}"
        if "loss" in e:
            c.loss = float(e["loss"])
        if "images_per_s" in e:
            c.ips = float(e["images_per_s"])
        if "step" in e and "steps" in e and e["steps"]:
            frac = float(e["step"]) / float(e["steps"])
            el = time.time() - c.started
            c.step_frac = frac
            c.eta_s = el * (1 - frac) / frac if frac > 0 else None
        if "warning" in e:
            self._line(f"warn   {c.label}: {e['warning']}")
        if c.phase == "train" and "loss" in e and e.get("epoch") is not None:
            self._progress_line(c)

    def cell_finished(self, key: str, status: str, metrics: dict[str, float], error: str = "") -> None:
        c = self.running.pop(key, None)
        label = c.label if c else key[:10]
        if c is not None and status.startswith("done"):
            self.durations.append(time.time() - c.started)
        if status.startswith("done"):
            self.done += 1
        elif status == "failed":
            self.failed += 1
        acc = metrics.get("probe_top1")
        summary = f"probe {acc:.1f}%" if acc is not None else (error[:80] if error else "")
        self.finished.appendleft((label, status, summary))
        self._line(f"{status:<6} {label}  {summary}")

    def eta(self) -> float | None:
        left = self.total - self.cached - self.done - self.failed
        if not self.durations or left <= 0:
            return None
        per = sum(self.durations) / len(self.durations)
        return per * max(0, left - len(self.running)) + sum(max(0.0, per - (time.time() - c.started))
                                                            for c in self.running.values())

    def message(self, text: str) -> None:
        self._line(text)

    # rendering hooks
    def _line(self, text: str) -> None: ...

    def _progress_line(self, c: CellView) -> None: ...

    def refresh(self) -> None: ...

    def close(self) -> None: ...


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class PlainView(View):
    """Line-oriented progress for non-terminals: one line per start/finish, one per epoch at most every 5 s."""

    def __init__(self, stream: TextIO | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.stream = stream or sys.stderr
        self._last: dict[str, float] = {}

    def _line(self, text: str) -> None:
        n = self.cached + self.done + self.failed
        # labels and errors are the user's text: escaped as `plan`, `status` and `--dry-run` print them
        self.stream.write(f"[{_fmt_s(time.time() - self.started)} {n}/{self.total}] {printable(text)}\n")
        self.stream.flush()

    def _progress_line(self, c: CellView) -> None:
        now = time.time()
        if now - self._last.get(c.key, 0) < 5.0:
            return
        self._last[c.key] = now
        ips = f"{c.ips:.0f} img/s" if c.ips else ""
        self._line(f"train  {c.label} epoch {c.epoch} loss {c.loss:.4f} {ips} eta {_fmt_s(c.eta_s)}")


def _text(value: str) -> Text:
    return Text(printable(str(value)))


class RichView(View):
    """Live terminal view: overall bar, running cells, last finished cells."""

    def __init__(self, console: Console | None = None, title: str = "sweep", **kw: Any) -> None:
        super().__init__(**kw)
        self.console = console or Console(stderr=True)
        self.title = title
        # the title names the grid (the user's text): shown as it is, never read as Rich markup
        self.progress = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                 TextColumn("ETA {task.fields[eta]}"), console=self.console)
        self.task = self.progress.add_task(printable(title), total=max(self.total, 1), counts="", eta="-")
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def _line(self, text: str) -> None:
        if text.startswith(("start", "train")):
            return
        self.live.console.print(Text(printable(text)), highlight=False)

    def _render(self) -> Group:
        n = self.cached + self.done + self.failed
        self.progress.update(self.task, completed=n, total=max(self.total, 1),
                             counts=f"{self.done} done, {self.cached} cached, {self.failed} failed of {self.total}",
                             eta=_fmt_s(self.eta()))
        run = Table(title="running", expand=True, title_justify="left")
        for col in ("cell", "device", "phase", "epoch", "loss", "img/s", "ETA"):
            run.add_column(col, no_wrap=True)
        # a cell's label, phase or error is the user's text: a Text is shown as it is, where a str would be read
        # as Rich markup ("[ours]" vanishes, "[/]" raises), as `status` already does
        for c in self.running.values():
            run.add_row(_text(c.label), _text(c.device), _text(c.phase), _text(c.epoch),
                        f"{c.loss:.4f}" if c.loss is not None else "-", f"{c.ips:.0f}" if c.ips else "-",
                        _fmt_s(c.eta_s))
        for label, why in self.waiting.values():
            run.add_row(_text(label), "-", _text(f"waiting: {why}"), "", "-", "-", "-")
        fin = Table(title="finished", expand=True, title_justify="left")
        for col in ("cell", "status", "result"):
            fin.add_column(col)
        for label, status, summary in self.finished:
            fin.add_row(_text(label), _text(status), _text(summary))
        return Group(self.progress, run, fin)

    def refresh(self) -> None:
        self.live.update(self._render())

    def close(self) -> None:
        self.refresh()
        self.live.stop()


def make_view(*, total: int, cached: int, title: str, plain: bool | None = None) -> View:
    """Rich when stderr is a terminal (or plain=False), plain lines otherwise."""
    if plain is None:
        plain = not sys.stderr.isatty()
    if plain:
        return PlainView(total=total, cached=cached)
    return RichView(total=total, cached=cached, title=title)
