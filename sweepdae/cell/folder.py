"""The cell folder's contract, without torch: its file names, where its caches and trainings live, how a cell's
end is classified, and the two records that leave it, `CellResult` (result.json) and `TrainedInfo` (trained.json),
each read and written in one place.

runs/<key>/ holds recipe.json (written by the coordinator), events.jsonl, cell.log and, at the end, result.json or
failure.json; runs/_train/<train_key>/ holds a training's checkpoint.pt and, once finished, trained.json;
runs/_cache/ holds the caches cells share (tokenizers, FID reference statistics, probe baselines, latents).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweepdae.errors import DatasetError, MissingWeightsError, RecipeError, SweepdaeError, TrainingError
from sweepdae.utils import atomic_write_json

__all__ = ["CHECKPOINT", "EVENTS", "EXIT_IO", "EXIT_OOM", "FAILURE", "INTERRUPTIONS", "KILLED_EXITS", "LOG",
           "POSTERIOR_SAMPLE", "RECIPE", "RESULT", "RETRYABLE", "STOP", "TOKENIZER_SAMPLE", "TRAINED", "TRAIN_DIR",
           "CellResult", "TrainedInfo", "cache_dir", "classify", "classify_exit", "read_json", "read_result",
           "read_trained", "train_dir"]

RESULT, FAILURE, RECIPE, EVENTS, LOG = "result.json", "failure.json", "recipe.json", "events.jsonl", "cell.log"
# written by the coordinator into a running cell's folder when it must give its node back (SLURM's pre-timeout
# signal, a preemption, `scontrol requeue`): the training checkpoints at its next step and the cell exits
# "preempted", to resume from there on its next attempt
STOP = "stop.request"
TRAIN_DIR = "_train"  # runs/_train/<train_key>/: the trainings cells share
CHECKPOINT, TRAINED = "checkpoint.pt", "trained.json"  # in a training's folder
EXIT_IO = 74  # sysexits.h EX_IOERR: the cell failed and could not even write failure.json (disk full)
EXIT_OOM = 3
# what a cell reads of its sets besides training (the estimator counts them too)
TOKENIZER_SAMPLE = 10_000  # images of a streamed set the tokenizer is fitted on (PCA: 100,000 patches of them)
POSTERIOR_SAMPLE = 4096  # held-out (test-split) images a VAE's posterior std and KL per token are measured on

# Failure classes a new attempt can cure (a killed process, memory, a crash, a full disk freed meanwhile); the
# others (bad_recipe, nonfinite, missing_input, bad_checkpoint) fail the same way every time.
RETRYABLE = frozenset({"oom", "crash", "killed", "io", "preempted"})
# ... of which these are interruptions, not failures of the cell: they never use up a retry
INTERRUPTIONS = frozenset({"killed", "preempted"})
# exit statuses of a cell process that was killed or interrupted (by signal, or 128 + signal from a shell)
KILLED_EXITS = frozenset({-9, -15, -2, 137, 143, 130})


def cache_dir(run_dir: Path) -> Path:
    """Shared caches (tokenizers, FID reference statistics, probe baselines) live beside the cells: runs/_cache/."""
    return Path(os.environ.get("SWEEPDAE_CACHE", run_dir.parent / "_cache"))


def train_dir(run_dir: Path, train_key: str) -> Path:
    """Where the training of `train_key` lives: beside the cell folders, runs/_train/<train_key>/."""
    return run_dir.parent / TRAIN_DIR / train_key


def classify(exc: BaseException) -> tuple[str, bool]:
    """(failure class, retryable) of an exception raised inside a cell: the one place failures are sorted."""
    import torch  # heavy: the contract stays importable without torch (the coordinator, the CLI)

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        cls = "oom"
    elif isinstance(exc, TrainingError):
        cls = exc.failure_class
    elif isinstance(exc, RecipeError):
        cls = "bad_recipe"
    elif isinstance(exc, (DatasetError, MissingWeightsError)):
        cls = "missing_input"
    elif isinstance(exc, KeyboardInterrupt):
        cls = "killed"
    elif isinstance(exc, OSError):
        cls = "io"
    else:
        cls = "crash"
    return cls, cls in RETRYABLE


def classify_exit(rc: int | None, failure: dict[str, Any], *, interrupted: bool) -> tuple[str, bool]:
    """(failure class, retryable) of a cell process that ended without a result: its failure.json when it wrote
    one (see `classify`), else from its exit status."""
    cls = failure.get("failure_class")
    if not isinstance(cls, str):
        if rc == EXIT_IO:  # the cell could not write failure.json: its disk is full
            cls = "io"
        else:
            cls = "killed" if interrupted or rc in KILLED_EXITS else "crash"
    return cls, cls in RETRYABLE


def read_json(path: Path) -> Any:
    """The JSON document at `path`; a missing or malformed file is a `SweepdaeError` naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepdaeError(f"{path}: no such file (a cell folder holds recipe.json)") from None
    except json.JSONDecodeError as e:
        raise SweepdaeError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


@dataclass
class TrainedInfo:
    """trained.json: a finished training (its folder also holds the checkpoint the cells load)."""

    train_key: str
    cell: str | None = None  # the cell that trained it
    epochs: int | None = None
    steps: int | None = None
    train_loss: float | None = None  # mean loss of the last epoch
    images_per_s: float | None = None
    seconds: float | None = None
    resumed_from_epoch: int | None = None
    git_commit: str | None = None
    curve_fields: list[str] = field(default_factory=list)
    curve: list[list[float]] = field(default_factory=list)  # curve_fields per point
    finished: float | None = None  # time.time()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainedInfo:
        """From trained.json's document (keys it lacks keep their defaults; unknown keys are ignored)."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def write(self, folder: Path) -> None:
        atomic_write_json(folder / TRAINED, self.to_dict())

    @property
    def metrics(self) -> dict[str, float]:
        """What a cell's result reports of its training (a finished training has all four)."""
        values = {"train_loss": self.train_loss, "images_per_s": self.images_per_s, "train_steps": self.steps,
                  "train_seconds": self.seconds}
        return {k: float(v) for k, v in values.items() if v is not None}


def read_trained(folder: Path, train_key: str) -> TrainedInfo | None:
    """trained.json of a finished training of `train_key` in `folder`, or None (none, unreadable, foreign, or its
    checkpoint gone)."""
    try:
        doc = json.loads((folder / TRAINED).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("train_key") != train_key or not (folder / CHECKPOINT).exists():
        return None
    return TrainedInfo.from_dict(doc)


@dataclass
class CellResult:
    """result.json: every metric of a cell, with its timings, artifacts and provenance (the defaults: what a
    result.json of an older version lacks reads as)."""

    key: str
    train_key: str = ""
    reused_training: bool = False  # it evaluated a training another cell made
    trained_by: str | None = None  # the cell that made its training
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, f"{phase}_s"
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> file in the cell folder, or why it is missing
    tokenizer: dict[str, Any] = field(default_factory=dict)  # the tokenizer's own statistics (fit, posterior)
    steps: int | None = None  # the training's optimizer steps
    resumed_from_epoch: int | None = None
    world_size: int = 1
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)  # per phase over the cell's processes
    provenance: dict[str, Any] = field(default_factory=dict)
    finished: float = 0.0  # time.time()

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellResult:
        """From result.json's document (keys it lacks keep their defaults; unknown keys are ignored)."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def write(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / RESULT, self.to_dict())


def read_result(run_dir: Path, key: str) -> CellResult | None:
    """The cell's result.json when it is readable, of cell `key` and holds metrics; else None."""
    try:
        doc = json.loads((run_dir / RESULT).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key or "metrics" not in doc:
        return None
    return CellResult.from_dict(doc)
