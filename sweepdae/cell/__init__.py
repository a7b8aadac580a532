"""One cell end to end: data -> tokenizer (cached) -> trained network (shared by train_key) -> probe -> FID -> figures.

Entry point for `accelerate launch -m sweepdae.cell RUN_DIR` (what the coordinator starts) and for running a cell
by hand: `python -m sweepdae.cell runs/<key>` reads `runs/<key>/recipe.json` and writes `result.json` (metrics,
timings, provenance, artifacts) or `failure.json` (failure class, error, traceback tail) in the same folder.

The network a cell evaluates lives in `runs/_train/<train_key>/` (checkpoint + `trained.json`): every cell whose
recipe trains the same way (`Recipe.train_key`) evaluates that one training. The first cell to need it trains it
(resuming its checkpoint after a kill); the others load it. Across coordinators the store's training lease makes
sure one process trains (`Store.acquire_training`); this module only reads and writes the folder.

This package's namespace is the cell folder's contract (`folder`) and the tracker settings (`tracking`), both
without torch, for the coordinator and the CLI. Modules: `run` (`run_cell`, `main`: the phases of a cell), `train`
(the loop: `train_step`, `train_one_epoch`, checkpoints), `probing` (linear probe, kNN), `features` (frozen
features, shared by the probe and the baselines), `baselines` (random-init encoders and raw pixels under the cell's
probe, `probe_gain`; cached across cells), `generate` (samples, FID, denoising figures), `build` (the model of a
recipe, the seeds of its training).
"""

from __future__ import annotations

from sweepdae.cell.folder import (
    CHECKPOINT,
    EVENTS,
    EXIT_IO,
    EXIT_OOM,
    FAILURE,
    INTERRUPTIONS,
    KILLED_EXITS,
    LOG,
    POSTERIOR_SAMPLE,
    RECIPE,
    RESULT,
    RETRYABLE,
    STOP,
    TOKENIZER_SAMPLE,
    TRAIN_DIR,
    TRAINED,
    CellResult,
    TrainedInfo,
    cache_dir,
    classify,
    classify_exit,
    read_json,
    read_result,
    read_trained,
    train_dir,
)
from sweepdae.cell.tracking import TRACKERS, run_name, tracker_options

__all__ = ["CHECKPOINT", "EVENTS", "EXIT_IO", "EXIT_OOM", "FAILURE", "INTERRUPTIONS", "KILLED_EXITS", "LOG",
           "POSTERIOR_SAMPLE", "RECIPE", "RESULT", "RETRYABLE", "STOP", "TOKENIZER_SAMPLE", "TRACKERS", "TRAINED",
           "TRAIN_DIR", "CellResult", "TrainedInfo", "cache_dir", "classify", "classify_exit", "read_json",
           "read_result", "read_trained", "run_name", "tracker_options", "train_dir"]
