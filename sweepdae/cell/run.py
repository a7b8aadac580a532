"""One cell end to end: data -> tokenizer (cached) -> trained network (shared by train_key) -> probe -> FID -> figures.

Entry point for `accelerate launch -m sweepdae.cell RUN_DIR` (what the coordinator starts) and for running a cell
by hand: `python -m sweepdae.cell runs/<key>` reads `runs/<key>/recipe.json` and writes `result.json` (metrics,
timings, provenance, artifacts) or `failure.json` (failure class, error, traceback tail) in the same folder
(`sweepdae.cell.folder`).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import math
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from sweepdae import faults
from sweepdae.cell.build import mixed_precision
from sweepdae.cell.folder import (
    EVENTS,
    EXIT_IO,
    EXIT_OOM,
    FAILURE,
    POSTERIOR_SAMPLE,
    RECIPE,
    STOP,
    TOKENIZER_SAMPLE,
    CellResult,
    cache_dir,
    classify,
    read_json,
    train_dir,
)
from sweepdae.cell.generate import fid_cell, figures_cell
from sweepdae.cell.probing import probe_cell
from sweepdae.cell.tracking import Track, run_name, tracker_options
from sweepdae.cell.train import Trained, ensure_trained
from sweepdae.data import ImageData, decoded_images, load_dataset, sample_images
from sweepdae.errors import MissingWeightsError, SweepdaeError
from sweepdae.models import Denoiser
from sweepdae.recipe import Recipe, recipe_from_dict
from sweepdae.tokenizers import STOCHASTIC_TOKENIZERS, Tokenizer, get_tokenizer
from sweepdae.utils import EventLog, atomic_write_json, exit_when_gone, provenance

__all__ = ["Phases", "main", "peak_rss_mb", "run_cell", "write_failure"]


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
    unit = 1.0 if sys.platform == "darwin" else 1024.0
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak * unit / 2**20


def run_cell(run_dir: Path, *, echo: Any = None, in_process: bool = False) -> dict[str, Any]:
    """Compute every metric of the cell in run_dir; returns the result dict (also written to result.json)."""
    spec = read_json(run_dir / RECIPE)
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
        name = run_name(str(spec.get("grid") or "cells"), str(spec.get("label") or key), train_key)
        trained = _train(recipe, run_dir, key=key, train_key=train_key, tokenizer=tokenizer, data=train_set,
                         accelerator=accelerator, events=events, track_as=name if tracking else None)
    model = trained.model
    model.eval()
    metrics: dict[str, float] = dict(trained.metrics)
    artifacts: dict[str, str] = {}

    with phase("probe"):  # every process: sharded feature passes, gathered (cell/probing.py)
        metrics.update(probe_cell(recipe, model=model, tokenizer=tokenizer, train=train_set, test=test_set,
                                  device=device, run_dir=run_dir, events=events, accelerator=accelerator))
    if recipe.fid.enabled:
        with phase("fid"):  # every process: seeded sample chunks shared out, statistics merged (cell/generate.py)
            _fid(recipe, run_dir, model=model, tokenizer=tokenizer, ref=train_set if recipe.fid.ref_split == "train"
                 else test_set, num_classes=train_set.num_classes, device=device, accelerator=accelerator,
                 events=events, metrics=metrics, artifacts=artifacts)
    # the phases every process ran, gathered (the last collective: the figures are the main process's alone)
    phases = phase.summary(accelerator)
    if not main:
        return {}

    with phase("figures"):
        images, labels = sample_images(test_set, 8, shuffle=False)
        artifacts.update(figures_cell(recipe, model=model, tokenizer=tokenizer, images=images, labels=labels,
                                      device=device, run_dir=run_dir))
    phases.update(phase.summary(None, ["figures"]))

    result = _result(recipe, key=key, train_key=train_key, trained=trained, metrics=metrics, timings=phase.timings,
                     artifacts=artifacts, tok_stats=tok_stats, world=accelerator.num_processes, phases=phases,
                     device=device, in_process=in_process)
    result.write(run_dir)
    events(phase="done", metrics=metrics)
    return result.to_dict()


def _train(recipe: Recipe, run_dir: Path, *, key: str, train_key: str, tokenizer: Tokenizer, data: ImageData,
           accelerator: Accelerator, events: Any, track_as: str | None) -> Trained:
    """The cell's training phase: its trained network, made here (stoppable; logged to the tracker's run
    `track_as`, None: not tracked) or loaded."""
    _STOP.training = True
    track = Track(accelerator, track_as, events) if track_as is not None else None
    try:
        return ensure_trained(recipe, tokenizer=tokenizer, data=data, train_key=train_key,
                              train_dir=train_dir(run_dir, train_key), accelerator=accelerator, events=events,
                              cell_key=key, stop=lambda: _STOP.signalled or (run_dir / STOP).exists(),
                              track=track, latent_cache=cache_dir(run_dir) / "latents")
    finally:
        _STOP.training = False
        if track is not None:
            track.close()


def _fid(recipe: Recipe, run_dir: Path, *, model: Denoiser, tokenizer: Tokenizer, ref: ImageData, num_classes: int,
         device: torch.device, accelerator: Accelerator, events: Any, metrics: dict[str, float],
         artifacts: dict[str, str]) -> None:
    """The cell's FID phase, into `metrics` and `artifacts`; missing Inception weights are recorded, not raised."""
    try:
        metrics.update(fid_cell(recipe, model=model, tokenizer=tokenizer, ref=ref, num_classes=num_classes,
                                device=device, cache=cache_dir(run_dir) / "fid", run_dir=run_dir,
                                artifacts=artifacts, accelerator=accelerator))
    except MissingWeightsError as e:  # the other metrics still count
        events(phase="fid", warning=str(e))
        metrics["fid_error"] = float("nan")
        artifacts["fid_error"] = str(e)


def _result(recipe: Recipe, *, key: str, train_key: str, trained: Trained, metrics: dict[str, float],
            timings: dict[str, float], artifacts: dict[str, str], tok_stats: dict[str, Any], world: int,
            phases: dict[str, dict[str, Any]], device: torch.device, in_process: bool) -> CellResult:
    """The cell's result.json."""
    return CellResult(key=key, train_key=train_key, reused_training=trained.reused, trained_by=trained.info.cell,
                      metrics=metrics, timings=timings, artifacts=artifacts, tokenizer=tok_stats,
                      steps=trained.info.steps, resumed_from_epoch=trained.resumed_from, world_size=world,
                      phases=phases,
                      provenance={**provenance(), "seed": recipe.seed, "num_processes": world,
                                  "device_type": device.type, "in_process": in_process,
                                  # CPU float results are bitwise repeatable at one thread count, not across counts
                                  "cpu_threads": torch.get_num_threads(),
                                  # per phase: seconds, images decoded (total, per rank), peak host RSS / GPU memory
                                  "world_size": world, "phases": phases},
                      finished=time.time())


def write_failure(run_dir: Path, exc: BaseException, *, keep: bool = False) -> dict[str, Any]:
    """failure.json of the exception that ended the cell (`classify`), written and returned. `keep`: a failure.json
    already there stays (the cell's other processes: the main process's failure is the cell's, and when it ends the
    launcher stops the others, whose interruption must not overwrite it)."""
    if keep:
        try:
            kept = json.loads((run_dir / FAILURE).read_text())
        except (OSError, ValueError):
            kept = None
        if isinstance(kept, dict) and isinstance(kept.get("failure_class"), str):
            return {"error": "", **kept}
    cls, retryable = classify(exc)
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    info = {"failure_class": cls, "retryable": retryable, "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback_tail": tail, "time": time.time()}
    atomic_write_json(run_dir / FAILURE, info)
    return info


def _watch_coordinator() -> None:
    """Exit when the coordinator that launched this cell dies (SIGKILL leaves no chance to stop its cells):
    the cell would otherwise train on beside the attempt that a new coordinator starts for it."""
    pid = int(os.environ.get("SWEEPDAE_COORDINATOR_PID", "0") or 0)
    if pid:
        exit_when_gone(pid, 137, "sweepdae-coordinator-watch")


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
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, _STOP.handler)
    # `kill -USR1` on a cell that seems stuck writes every thread's stack to cell.log (its stderr) and goes on
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _watch_coordinator()
    main_process = int(os.environ.get("RANK", "0") or 0) == 0  # accelerate launch (torchrun) sets RANK
    try:
        if main_process:
            (run_dir / FAILURE).unlink(missing_ok=True)
        run_cell(run_dir)
    except BaseException as e:  # recorded for the coordinator, then a non-zero exit
        try:
            info = write_failure(run_dir, e, keep=not main_process)
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
