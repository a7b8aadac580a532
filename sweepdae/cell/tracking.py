"""The experiment tracker of a cell's training (TensorBoard by default): which one, its run's name, and a wrapper
that starts it on the first point and switches it off, warned, when it fails."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

__all__ = ["TRACKERS", "Track", "run_name", "tracker_options"]

TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
            "aim": ("aim",)}


def tracker_options(name: str, runs_dir: Path) -> tuple[dict[str, Any], str | None]:
    """Accelerator keyword arguments of the experiment tracker `name` (tensorboard, the default; wandb, mlflow,
    aim; none), and why it is off when its package is missing. TensorBoard writes under runs/_tensorboard/, so
    `tensorboard --logdir runs/` shows every training; the others log where their own configuration says."""
    name = name.strip().lower()
    if name in ("", "none", "off"):
        return {}, None
    if name not in TRACKERS:
        return {}, f"SWEEPDAE_TRACKER={name!r}: unknown tracker (tensorboard, wandb, mlflow, aim or none); not tracked"
    if not any(importlib.util.find_spec(m) for m in TRACKERS[name]):
        return {}, f"tracker {name}: package {TRACKERS[name][0]} is not installed; training curves not tracked"
    return {"log_with": name, "project_dir": str(runs_dir / "_tensorboard")}, None


def run_name(grid: str, label: str, train_key: str) -> str:
    """A training's run in the tracker: `<grid>/<label> <train_key[:8]>` (one folder per training, readable)."""

    def clean(s: str) -> str:
        return re.sub(r"[^\w.=+,-]+", "_", s).strip("_")[:120] or "_"

    return f"{clean(grid)}/{clean(label)}_{train_key[:8]}"


class Track:
    """The tracker of one training, started on its first point (a training that is only read back logs nothing).
    A tracker that fails (a full disk, an unreachable server) is switched off with a warning: the curve is still
    kept in the checkpoint and the store, and the training goes on."""

    def __init__(self, accelerator: Any, name: str, events: Any = None) -> None:
        self.accelerator, self.name, self.events = accelerator, name, events
        self.started = self.off = False

    def __call__(self, values: dict[str, float], step: int) -> None:
        if self.off:
            return
        try:
            if not self.started:
                self.accelerator.init_trackers(self.name)
                self.started = True
            self.accelerator.log(values, step=step)
        except Exception as e:  # the tracker's own failure, whatever its library raises
            self.off = True
            if self.events is not None:
                self.events(phase="train", warning=f"tracker off: {type(e).__name__}: {e}"[:300])

    def close(self) -> None:
        if self.started and not self.off:
            try:  # not Accelerator.end_training(): it also tears down the process group the evaluation uses
                for tracker in self.accelerator.trackers:
                    tracker.finish()
            except Exception as e:
                if self.events is not None:
                    self.events(phase="train", warning=f"tracker: {type(e).__name__}: {e}"[:300])
