"""One cell end to end: data -> tokenizer (cached) -> trained network (shared by train_key) -> probe -> FID -> figures.

Entry point for `accelerate launch -m sweepdae.cell RUN_DIR` (what the coordinator starts) and for running a cell
by hand: `python -m sweepdae.cell runs/<key>` reads `runs/<key>/recipe.json` and writes `result.json` (metrics,
timings, provenance, artifacts) or `failure.json` (failure class, error, traceback tail) in the same folder.

The network a cell evaluates lives in `runs/_train/<train_key>/` (checkpoint + `trained.json`): every cell whose
recipe trains the same way (`Recipe.train_key`) evaluates that one training. The first cell to need it trains it
(resuming its checkpoint after a kill); the others load it. Across coordinators the store's training lease makes
sure one process trains (`Store.acquire_training`); this module only reads and writes the folder.

Modules: `train` (the loop: `train_step`, `train_one_epoch`, checkpoints), `probing` (frozen features, linear probe,
kNN), `baselines` (random-init encoders and raw pixels under the cell's probe, `probe_gain`; cached across cells),
`generate` (samples, FID, denoising figures), `build` (the model of a recipe).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweepdae.errors import DatasetError, MissingWeightsError, RecipeError, SweepdaeError, TrainingError
from sweepdae.utils import EventLog, atomic_write_json

RESULT, FAILURE, RECIPE, EVENTS, LOG = "result.json", "failure.json", "recipe.json", "events.jsonl", "cell.log"
# written by the coordinator into a running cell's folder when it must give its node back (SLURM's pre-timeout
# signal, a preemption, `scontrol requeue`): the training checkpoints at its next step and the cell exits
# "preempted", to resume from there on its next attempt
STOP = "stop.request"
TRAIN_DIR = "_train"  # runs/_train/<train_key>/: the trainings cells share
EXIT_IO = 74  # sysexits.h EX_IOERR: the cell failed and could not even write failure.json (disk full)
EXIT_OOM = 3
TOKENIZER_SAMPLE = 10_000  # images of a streamed set the tokenizer is fitted on (PCA: 100,000 patches of them)
POSTERIOR_SAMPLE = 4096  # held-out (test-split) images a VAE's posterior std and KL per token are measured on

# Failure classes a new attempt can cure (a killed process, memory, a crash, a full disk freed meanwhile); the
# others (bad_recipe, nonfinite, missing_input, bad_checkpoint) fail the same way every time.
RETRYABLE = frozenset({"oom", "crash", "killed", "io", "preempted"})
# ... of which these are interruptions, not failures of the cell: they never use up a retry
INTERRUPTIONS = frozenset({"killed", "preempted"})


def cache_dir(run_dir: Path) -> Path:
    """Shared caches (tokenizers, FID reference statistics, probe baselines) live beside the cells: runs/_cache/."""
    return Path(os.environ.get("SWEEPDAE_CACHE", run_dir.parent / "_cache"))


def train_dir(run_dir: Path, train_key: str) -> Path:
    """Where the training of `train_key` lives: beside the cell folders, runs/_train/<train_key>/."""
    return run_dir.parent / TRAIN_DIR / train_key


def classify(exc: BaseException) -> tuple[str, bool]:
    """(failure class, retryable) of an exception raised inside a cell: the one place failures are sorted."""
    import torch

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


# exit statuses of a cell process that was killed or interrupted (by signal, or 128 + signal from a shell)
KILLED_EXITS = frozenset({-9, -15, -2, 137, 143, 130})


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


class Phases:
    """Times, measures, announces and fault-points the phases of one cell: `with phases("train"): ...`.

    Per phase and process: wall seconds, images decoded from files (`sweepdae.data.decoded_images`: what a
    streamed set's loaders delivered; an in-memory set is read from its files once, outside this count), the
    process's peak host RSS by the phase's end (`resource.getrusage` ru_maxrss, itself or its largest finished
    child such as a DataLoader worker) and, on a GPU, the phase's peak allocated GPU memory. `summary` gathers
    them over the cell's processes (`phases` of result.json and of `status --json`)."""

    def __init__(self, events: Any) -> None:
        self.events = events
        self.timings: dict[str, float] = {}
        self.measured: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, **fields: Any) -> Iterator[None]:
        import torch

        from sweepdae import faults
        from sweepdae.data import decoded_images

        self.events(phase=name, **fields)
        faults.maybe_fault("phase", name)
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t, decoded = time.perf_counter(), decoded_images()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t
            self.timings[f"{name}_s"] = self.timings.get(f"{name}_s", 0.0) + seconds
            m = self.measured.setdefault(name, {"seconds": 0.0, "decoded": 0, "peak_rss_mb": 0.0,
                                                "peak_gpu_mb": math.nan})
            m["seconds"] += seconds
            m["decoded"] += decoded_images() - decoded
            m["peak_rss_mb"] = max(m["peak_rss_mb"], peak_rss_mb())
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                gpu = torch.cuda.max_memory_allocated() / 2**20
                m["peak_gpu_mb"] = gpu if math.isnan(m["peak_gpu_mb"]) else max(m["peak_gpu_mb"], gpu)

    def summary(self, accelerator: Any = None, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """{phase: {seconds, decoded, decoded_per_rank, peak_rss_mb, peak_gpu_mb}} over the cell's processes
        (one all-gather when there are several: every process must call it): seconds the longest rank's,
        decoded summed (and per rank), peaks the maximum over ranks (peak_gpu_mb None without a GPU)."""
        mine = {k: v for k, v in self.measured.items() if names is None or k in names}
        ranks = [mine]
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            ranks = gather_object([mine])
        out: dict[str, dict[str, Any]] = {}
        for name in mine:
            per = [r.get(name, {}) for r in ranks]
            gpus = [float(p["peak_gpu_mb"]) for p in per if not math.isnan(p.get("peak_gpu_mb", math.nan))]
            out[name] = {"seconds": max(float(p.get("seconds", 0.0)) for p in per),
                         "decoded": sum(int(p.get("decoded", 0)) for p in per),
                         "decoded_per_rank": [int(p.get("decoded", 0)) for p in per],
                         "peak_rss_mb": max(float(p.get("peak_rss_mb", 0.0)) for p in per),
                         "peak_gpu_mb": max(gpus) if gpus else None}
        return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process or its largest finished child, MiB (ru_maxrss: KiB on Linux, bytes
    on macOS)."""
    import resource

    unit = 1.0 if sys.platform == "darwin" else 1024.0
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak * unit / 2**20


def run_cell(run_dir: Path, *, echo: Any = None, in_process: bool = False) -> dict[str, Any]:
    """Compute every metric of the cell in run_dir; returns the result dict (also written to result.json)."""
    import torch
    from accelerate import Accelerator

    from sweepdae import faults
    from sweepdae.cell.build import mixed_precision
    from sweepdae.cell.generate import fid_cell, figures_cell
    from sweepdae.cell.probing import probe_cell
    from sweepdae.cell.train import ensure_trained
    from sweepdae.data import load_dataset, sample_images
    from sweepdae.recipe import recipe_from_dict
    from sweepdae.tokenizers import STOCHASTIC_TOKENIZERS, get_tokenizer
    from sweepdae.utils import provenance

    spec = _read_json(run_dir / RECIPE)
    recipe = recipe_from_dict(spec["recipe"])
    key = spec.get("key") or recipe.key()
    train_key = recipe.train_key()  # runtime overrides (a halved micro-batch) leave it unchanged
    faults.set_cell(str(spec.get("label", "")))
    cpu = not torch.cuda.is_available()
    device = torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device())
    micro = recipe.train.micro_batch_size or recipe.train.batch_size
    tracking, why_not = tracker_options(os.environ.get("SWEEPDAE_TRACKER", "tensorboard"), run_dir.parent)
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision(recipe.train.precision, device),
                              gradient_accumulation_steps=max(1, recipe.train.batch_size // micro), **tracking)
    main = accelerator.is_main_process
    # one events.jsonl per cell: the main process speaks for all of them
    events: Any = EventLog(run_dir / EVENTS, echo) if main else (lambda **_: None)
    phase = Phases(events)
    if why_not:
        events(phase="train", warning=why_not)
    device = accelerator.device
    torch.set_float32_matmul_precision("high")

    with phase("data"):
        data_dev = device if device.type == "cuda" else "cpu"
        train_set = load_dataset(recipe.data, "train", seed=0, device=data_dev)
        test_set = load_dataset(recipe.data, "test", seed=0, device=data_dev)
        # the tokenizer is fitted on the whole set when in memory, on a fixed sample of a streamed one, decoded
        # only if the tokenizer is not cached and only by the main process, which fits it (the others wait for
        # its cache file: get_tokenizer(wait=True))
        fit_x = (train_set.tensors()[0] if train_set.in_memory
                 else lambda: sample_images(train_set, TOKENIZER_SAMPLE)[0])

    with phase("tokenizer"):
        # a VAE's posterior (std per dim, KL per token) is measured on test-split images it was not fitted on, by
        # the main process (the one that writes result.json)
        heldout = (sample_images(test_set, POSTERIOR_SAMPLE)[0]
                   if recipe.tokenizer.name.value in STOCHASTIC_TOKENIZERS and main else None)
        tokenizer, tok_stats = get_tokenizer(recipe.tokenizer, data_key=recipe.data_key(), images_uint8=fit_x,
                                             channels=train_set.channels, image_size=recipe.data.image_size,
                                             cache_dir=cache_dir(run_dir) / "tokenizers", seed=recipe.seed,
                                             device=device, progress=lambda e: events(phase="tokenizer", **e),
                                             heldout_uint8=heldout, wait=not main)
        del fit_x, heldout

    with phase("train", epoch=0, epochs=recipe.train.epochs):
        _STOP.training = True
        track = _Track(accelerator, run_name(str(spec.get("grid") or "cells"), str(spec.get("label") or key),
                                             train_key), events) if tracking else None
        try:
            trained = ensure_trained(recipe, tokenizer=tokenizer, data=train_set,
                                     train_dir=train_dir(run_dir, train_key), accelerator=accelerator, events=events,
                                     cell_key=key, stop=lambda: _STOP.signalled or (run_dir / STOP).exists(),
                                     track=track, latent_cache=cache_dir(run_dir) / "latents")
        finally:
            _STOP.training = False
            if track is not None:
                track.close()
    model = trained.model
    model.eval()
    metrics: dict[str, float] = dict(trained.metrics)
    artifacts: dict[str, str] = {}

    with phase("probe"):  # every process: sharded feature passes, gathered (cell/probing.py)
        metrics.update(probe_cell(recipe, model=model, tokenizer=tokenizer, train=train_set, test=test_set,
                                  device=device, run_dir=run_dir, events=events, accelerator=accelerator))
    if recipe.fid.enabled:
        with phase("fid"):  # every process: seeded sample chunks shared out, statistics merged (cell/generate.py)
            try:
                metrics.update(fid_cell(recipe, model=model, tokenizer=tokenizer,
                                        ref=train_set if recipe.fid.ref_split == "train" else test_set,
                                        num_classes=train_set.num_classes, device=device,
                                        cache=cache_dir(run_dir) / "fid", run_dir=run_dir, artifacts=artifacts,
                                        accelerator=accelerator))
            except MissingWeightsError as e:  # the other metrics still count
                events(phase="fid", warning=str(e))
                metrics["fid_error"] = float("nan")
                artifacts["fid_error"] = str(e)
    # the phases every process ran, gathered (the last collective: the figures are the main process's alone)
    phases = phase.summary(accelerator)
    if not main:
        return {}

    with phase("figures"):
        images, labels = sample_images(test_set, 8, shuffle=False)
        artifacts.update(figures_cell(recipe, model=model, tokenizer=tokenizer, images=images, labels=labels,
                                      device=device, run_dir=run_dir))
    phases.update(phase.summary(None, ["figures"]))

    world = accelerator.num_processes
    result = {"key": key, "train_key": train_key, "reused_training": trained.reused,
              "trained_by": trained.info.get("cell"), "metrics": metrics, "timings": phase.timings,
              "artifacts": artifacts, "tokenizer": tok_stats, "steps": trained.info.get("steps"),
              "resumed_from_epoch": trained.resumed_from, "world_size": world, "phases": phases,
              "provenance": {**provenance(), "seed": recipe.seed, "num_processes": world,
                             "device_type": device.type, "in_process": in_process,
                             # CPU float results are bitwise repeatable at one thread count, not across counts
                             "cpu_threads": torch.get_num_threads(),
                             # per phase: seconds, images decoded (total, per rank), peak host RSS / GPU memory
                             "world_size": world, "phases": phases},
              "finished": time.time()}
    atomic_write_json(run_dir / RESULT, result)
    events(phase="done", metrics=metrics)
    return result


TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
            "aim": ("aim",)}


def tracker_options(name: str, runs_dir: Path) -> tuple[dict[str, Any], str | None]:
    """Accelerator keyword arguments of the experiment tracker `name` (tensorboard, the default; wandb, mlflow,
    aim; none), and why it is off when its package is missing. TensorBoard writes under runs/_tensorboard/, so
    `tensorboard --logdir runs/` shows every training; the others log where their own configuration says."""
    import importlib.util

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
    import re

    def clean(s: str) -> str:
        return re.sub(r"[^\w.=+,-]+", "_", s).strip("_")[:120] or "_"

    return f"{clean(grid)}/{clean(label)}_{train_key[:8]}"


class _Track:
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


def _read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepdaeError(f"{path}: no such file (a cell folder holds recipe.json)") from None
    except json.JSONDecodeError as e:
        raise SweepdaeError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def write_failure(run_dir: Path, exc: BaseException) -> dict[str, Any]:
    cls, retryable = classify(exc)
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    info = {"failure_class": cls, "retryable": retryable, "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback_tail": tail, "time": time.time()}
    atomic_write_json(run_dir / FAILURE, info)
    return info


def _watch_coordinator() -> None:
    """Exit when the coordinator that launched this cell dies (SIGKILL leaves no chance to stop its cells):
    the cell would otherwise train on beside the attempt that a new coordinator starts for it."""
    import threading

    pid = int(os.environ.get("SWEEPDAE_COORDINATOR_PID", "0") or 0)
    if not pid:
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(137)
            except PermissionError:
                return

    threading.Thread(target=watch, daemon=True, name="sweepdae-coordinator-watch").start()


class _StopState:
    """SIGTERM / SIGUSR2 reached the cell (SLURM signals every process of a job: on preemption, `scontrol
    requeue`, `scancel`, and with submitit's pre-timeout USR2): while training, checkpoint at the next step and
    exit "preempted"; otherwise stop at once (the training is safe on disk)."""

    signalled = False
    training = False

    def handler(self, signum: int, frame: Any) -> None:
        self.signalled = True
        if not self.training:
            raise KeyboardInterrupt(f"signal {signum}")


_STOP = _StopState()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweepdae.cell", description=__doc__)
    ap.add_argument("run_dir", type=Path, help="the cell's folder, holding recipe.json")
    args = ap.parse_args(argv)
    run_dir: Path = args.run_dir
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, _STOP.handler)
    _watch_coordinator()
    try:
        (run_dir / FAILURE).unlink(missing_ok=True)
        run_cell(run_dir)
    except BaseException as e:  # recorded for the coordinator, then a non-zero exit
        try:
            info = write_failure(run_dir, e)
        except OSError:  # the disk is full (or gone): no failure.json, so say it with the exit status
            return EXIT_IO
        try:
            print(f"sweepdae.cell: {info['failure_class']}: {info['error']}", file=sys.stderr)
            if not isinstance(e, SweepdaeError):
                traceback.print_exc()
        except OSError:
            pass
        return EXIT_OOM if info["failure_class"] == "oom" else 1
    return 0


__all__ = ["INTERRUPTIONS", "RETRYABLE", "STOP", "TRAIN_DIR", "classify", "classify_exit", "main", "run_cell",
           "train_dir"]
