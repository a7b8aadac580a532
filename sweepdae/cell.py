"""Run one cell end to end: data -> tokenizer (cached) -> train (checkpointed) -> probe -> FID -> figures -> result.

Entry point for `accelerate launch -m sweepdae.cell RUN_DIR` (what the coordinator starts) and for running a cell
by hand: `python -m sweepdae.cell runs/<key>` reads `runs/<key>/recipe.json` and writes `result.json` (metrics,
timings, provenance, artifacts) or `failure.json` (failure class, error, traceback tail) in the same folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from sweepdae.errors import DatasetError, MissingWeightsError, RecipeError, SweepdaeError, TrainingError
from sweepdae.recipe import Recipe, probe_depth, recipe_from_dict
from sweepdae.utils import EventLog, atomic_write_json

RESULT, FAILURE, RECIPE, EVENTS, LOG = "result.json", "failure.json", "recipe.json", "events.jsonl", "cell.log"
EXIT_IO = 74  # sysexits.h EX_IOERR: the cell failed and could not even write failure.json (disk full)


def cache_dir(run_dir: Path) -> Path:
    """Shared caches (tokenizers, FID reference statistics) live beside the cells: runs/_cache/."""
    return Path(os.environ.get("SWEEPDAE_CACHE", run_dir.parent / "_cache"))


def classify(exc: BaseException) -> tuple[str, bool]:
    """(failure class, retryable) of an exception raised inside a cell."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom", True
    if isinstance(exc, TrainingError):
        return exc.failure_class, exc.failure_class not in ("bad_recipe", "nonfinite")
    if isinstance(exc, (RecipeError,)):
        return "bad_recipe", False
    if isinstance(exc, (DatasetError, MissingWeightsError)):
        return "missing_input", False
    if isinstance(exc, KeyboardInterrupt):
        return "killed", True
    if isinstance(exc, OSError):
        return "io", True
    return "crash", True


def run_cell(run_dir: Path, *, echo: Any = None, in_process: bool = False) -> dict[str, Any]:
    """Compute every metric of the cell in run_dir; returns the result dict (also written to result.json)."""
    import torch
    from accelerate import Accelerator

    from sweepdae import faults
    from sweepdae.data import load_dataset
    from sweepdae.tokenizers import get_tokenizer
    from sweepdae.train import mixed_precision, train
    from sweepdae.utils import provenance

    spec = _read_json(run_dir / RECIPE)
    recipe = recipe_from_dict(spec["recipe"])
    identity = spec.get("key") or recipe.key()
    os.environ["SWEEPDAE_CELL_LABEL"] = str(spec.get("label", ""))
    events = EventLog(run_dir / EVENTS, echo)
    timings: dict[str, float] = {}
    cpu = not torch.cuda.is_available()
    device = torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device())
    micro = recipe.train.micro_batch_size or recipe.train.batch_size
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision(recipe.train.precision, device),
                              gradient_accumulation_steps=max(1, recipe.train.batch_size // micro))
    device = accelerator.device
    torch.set_float32_matmul_precision("high")

    t = time.perf_counter()
    events(phase="data")
    data_dev = device if device.type == "cuda" else "cpu"
    train_set = load_dataset(recipe.data, "train", seed=0, device=data_dev)
    test_set = load_dataset(recipe.data, "test", seed=0, device=data_dev)
    streamed = not train_set.in_memory  # imagefolder: decoded by loader workers, never held whole in memory
    if streamed:
        # the tokenizer fit, FID reference and figures use a fixed sample; training and probing stream the splits
        train_x, train_y = sample_tensors(train_set, TOKENIZER_SAMPLE)
        test_x, test_y = sample_tensors(test_set, max(8, recipe.fid.ref_size or recipe.fid.num_samples)
                                        if recipe.fid.ref_split == "test" else 8)
    else:
        train_x, train_y = train_set.tensors()
        test_x, test_y = test_set.tensors()
    timings["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    events(phase="tokenizer")
    faults.maybe_fault("phase", "tokenizer")
    data_key = f"{recipe.data.name.value}:{recipe.data.root}:{recipe.data.train_size}"
    tokenizer, tok_stats = get_tokenizer(recipe.tokenizer, data_key=data_key, images_uint8=train_x,
                                         channels=train_set.channels, image_size=recipe.data.image_size,
                                         cache_dir=cache_dir(run_dir) / "tokenizers", seed=recipe.seed,
                                         device=device, progress=lambda e: events(phase="tokenizer", **e))
    timings["tokenizer_s"] = time.perf_counter() - t

    t = time.perf_counter()
    events(phase="train", epoch=0, epochs=recipe.train.epochs)
    faults.maybe_fault("phase", "train")
    augment_fn = None
    if recipe.data.augment.value != "center_crop":
        from sweepdae.data import augment_batch

        def augment_fn(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return augment_batch(x, recipe.data.augment, generator=generator)

    state = train(recipe, tokenizer=tokenizer, images=None if streamed else train_x,
                  labels=None if streamed else train_y, num_classes=train_set.num_classes, run_dir=run_dir,
                  accelerator=accelerator, events=events, augment_fn=augment_fn, identity=identity,
                  stream=train_set if streamed else None)
    timings["train_s"] = time.perf_counter() - t
    metrics: dict[str, float] = {"train_loss": state.last_loss, "images_per_s": state.images_per_s,
                                 "train_steps": float(state.step)}
    artifacts: dict[str, str] = {}
    if not accelerator.is_main_process:
        return {}
    model = state.ema if state.ema is not None else state.model
    model.eval()

    t = time.perf_counter()
    events(phase="probe")
    faults.maybe_fault("phase", "probe")
    from sweepdae.probe import probe_cell

    metrics.update(probe_cell(recipe, model=model, tokenizer=tokenizer,
                              train=train_set if streamed else (train_x, train_y),
                              test=test_set if streamed else (test_x, test_y), num_classes=train_set.num_classes,
                              device=device, run_dir=run_dir, events=events))
    timings["probe_s"] = time.perf_counter() - t

    if recipe.fid.enabled:
        t = time.perf_counter()
        events(phase="fid")
        faults.maybe_fault("phase", "fid")
        from sweepdae.sampling import fid_cell

        try:
            metrics.update(fid_cell(recipe, model=model, tokenizer=tokenizer, train=(train_x, train_y),
                                    test=(test_x, test_y), num_classes=train_set.num_classes, device=device,
                                    cache=cache_dir(run_dir) / "fid", run_dir=run_dir, artifacts=artifacts))
        except MissingWeightsError as e:  # the other metrics still count
            events(phase="fid", warning=str(e))
            metrics["fid_error"] = float("nan")
            artifacts["fid_error"] = str(e)
        timings["fid_s"] = time.perf_counter() - t

    t = time.perf_counter()
    events(phase="figures")
    faults.maybe_fault("phase", "figures")
    from sweepdae.sampling import figures_cell

    artifacts.update(figures_cell(recipe, model=model, tokenizer=tokenizer, images=test_x[:8],
                                  labels=test_y[:8], device=device, run_dir=run_dir))
    timings["figures_s"] = time.perf_counter() - t

    result = {"key": identity, "metrics": metrics, "timings": timings, "artifacts": artifacts,
              "tokenizer": tok_stats, "steps": state.step, "resumed_from_epoch": state.resumed_from,
              "provenance": {**provenance(), "seed": recipe.seed, "num_processes": accelerator.num_processes,
                             "device_type": device.type, "in_process": in_process},
              "finished": time.time()}
    atomic_write_json(run_dir / RESULT, result)
    events(phase="done", metrics=metrics)
    return result


TOKENIZER_SAMPLE = 10_000  # images of a streamed set the tokenizer is fitted on (PCA: 100,000 patches of them)


def sample_tensors(data: Any, n: int) -> tuple[Any, Any]:
    """A fixed sample of up to n images of a streamed set (the same for every cell), as uint8 CPU tensors."""
    import torch

    xs, ys, got = [], [], 0
    for x, y in data.batches(min(n, 256), shuffle=True, generator=torch.Generator().manual_seed(0), device="cpu"):
        xs.append(x[: n - got])
        ys.append(y[: n - got])
        got += len(xs[-1])
        if got >= n:
            break
    return torch.cat(xs), torch.cat(ys)


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweepdae.cell", description=__doc__)
    ap.add_argument("run_dir", type=Path, help="the cell's folder, holding recipe.json")
    args = ap.parse_args(argv)
    run_dir: Path = args.run_dir
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
        return 3 if info["failure_class"] == "oom" else 1
    return 0


def recipe_of(run_dir: Path) -> Recipe:
    return recipe_from_dict(_read_json(run_dir / RECIPE)["recipe"])


__all__ = ["classify", "main", "probe_depth", "recipe_of", "run_cell"]

if __name__ == "__main__":
    sys.exit(main())
