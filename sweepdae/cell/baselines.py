"""What training must beat: the cell's own architecture at random initialisation, and the raw pixels, probed the
way the cell is probed; each cached across cells by exactly what its features and its probe read.

Measured whenever `probe.baselines` is on (result.json metrics, `sweepdae.metrics.METRICS`):
- `random_init_probe_top1`: the recipe's network as training starts it. With adaLN-Zero (`model.adaln_zero`, the
  default) every block starts as the identity (DiT Sec. 3.2), so its features are the token mean of a random
  linear patch embedding plus the fixed sin-cos positional code: a linear probe on a random linear map of the
  mean token.
- `random_net_probe_top1`: the same network built with `adaln_zero = False` (the same random draws; the blocks'
  gates are not zeroed), so its random blocks do mix tokens. Not by much: the gates come from the untrained
  conditioning (the t-embedding MLP starts at N(0, 0.02)), measured |gate| ~0.006 in micro and ~0.017 in
  half_large, which move the pooled features by ~1% (micro) to ~8% (half_large) of their norm.
- `raw_pixel_probe_top1`: the images in [-1, 1] flattened, images over RAW_PIXEL_SIDE px a side first
  average-pooled to RAW_PIXEL_SIDE x RAW_PIXEL_SIDE per channel (adaptive average pooling), in-memory and streamed
  sets alike.
- `probe_gain` = probe_top1 - max(random_init_probe_top1, random_net_probe_top1): what training added over the
  better random encoder of the same architecture (the conservative one of the two).
- `random_features_probe_top1` (`measure_random_features`, the regime gate's baseline, REPRODUCTION.md): the cell's
  clean input tokens (its tokenizer, then what the model's input layer reads), one untrained per-token ReLU layer
  of the model's width with a random position code, mean-pooled (`sweepdae/cell/random_features.py`; draws from
  `torch.Generator().manual_seed(recipe.seed + 2)`). Not one of BASELINES and not in `probe_gain` (REPRODUCTION.md
  defines that over the two random encoders only); cached apart, in `<cache>/random_features/`, keyed the same way
  (without the encoder's depth, t, blocks and output layer, which it does not read).

Protocol: the cell's own. The random weights are drawn under `torch.manual_seed(recipe.seed + 1)` (without
touching the caller's random state); features at the cell's resolved probe depth and probe t; `probe.augment` runs
the augmented probe (`linear_probe_augmented_data`, crops recomputed every epoch), else `linear_probe` on fixed
features; probe seed `recipe.seed`.

Cache: `<cache>/baselines/<key>.json` (`cache_dir(run_dir)`, i.e. `runs/_cache/`), key = SHA-256 of
`baseline_identity`: the images (data key, image size, channels, test-set size), the tokenizer's own cache key,
the model knobs (without `model.adaln_zero`: the flag the network is built with replaces it; encoder depth
enters as the resolved probe depth), `objective.input_space` (what `make_model_input` reads) and
`objective.output_space` (it sizes the output layer, whose construction draws come before the initialisation of
the encoder's weights), the schedule and the resolved probe t, the probe knobs it reads, the seed, the baseline's
kind and BASELINE_VERSION. Training-only knobs (`train.*`, `objective.target`, ...) do not enter it, so the cells
of one recipe that differ only in training share each baseline. The raw pixels read no tokenizer, model or
schedule: data, probe and seed only. One process computes an entry under a file lock while others wait and read
it; an unreadable or mismatching file is computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list

import sweepdae.eval as evaluation  # module attributes, looked up at call time (tests count the probes)
from sweepdae.cell.build import build_model
from sweepdae.cell.features import FEATURE_BATCH, agreed, amp, encoder_feature_fn, features_of
from sweepdae.cell.random_features import draw_random_features, random_features
from sweepdae.data import ImageData
from sweepdae.models import Denoiser
from sweepdae.objectives import make_model_input
from sweepdae.recipe import MODEL_SIZES, ProbeAt, Recipe, probe_at
from sweepdae.tokenizers import Tokenizer, tokenizer_key
from sweepdae.utils import atomic_write_json, file_lock

__all__ = ["BASELINES", "BASELINE_VERSION", "RANDOM_FEATURES", "RAW_PIXEL_SIDE", "baseline_identity", "baseline_key",
           "measure_baselines", "measure_random_features", "pixel_features", "probe_gain", "random_encoder",
           "random_features_fn"]

# Bump when what a baseline computes changes for the same identity (old cache entries are then ignored).
BASELINE_VERSION = 1
# Raw pixels of larger images are average-pooled to this side (32 x 32 x 3 = 3,072 features for an ImageNet
# image, CIFAR's size) so that a 256 px set gives a probe of a sensible size instead of 196,608 features.
RAW_PIXEL_SIDE = 32
# The baselines, in the order measured; each records the metric f"{name}_probe_top1".
BASELINES = ("random_init", "random_net", "raw_pixel")
# The regime gate's baseline (measure_random_features): metric f"{RANDOM_FEATURES}_probe_top1", apart from BASELINES.
RANDOM_FEATURES = "random_features"
# Probe knobs no baseline reads (the baselines run a linear probe only, never kNN).
_PROBE_UNREAD = ("probe.knn_k", "probe.knn_temperature", "probe.baselines", "probe.pool2x2")
# What the raw pixels do not read either: no encoder, so no t, depth or noise.
_ENCODER_PROBE = ("probe.t", "probe.depth", "probe.noisy_input")


def random_encoder(recipe: Recipe, tokenizer: Tokenizer, num_classes: int, *, adaln_zero: bool) -> Denoiser:
    """The recipe's network at random init (weights drawn under `manual_seed(recipe.seed + 1)`, the caller's random
    state left as it was), built with `adaln_zero`; eval mode, on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed + 1)
        return build_model(recipe, tokenizer, num_classes, adaln_zero=adaln_zero).eval()


def pixel_features(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    """Raw-pixel features: x [B, C, H, W] in [-1, 1] -> [B, C h w], each side over RAW_PIXEL_SIDE average-pooled
    to RAW_PIXEL_SIDE (adaptive average pooling)."""
    h, w = x.shape[-2:]
    if h > RAW_PIXEL_SIDE or w > RAW_PIXEL_SIDE:
        x = F.adaptive_avg_pool2d(x, (min(h, RAW_PIXEL_SIDE), min(w, RAW_PIXEL_SIDE)))  # [B, C, <=32, <=32]
    return x.flatten(1)


def probe_gain(metrics: dict[str, float]) -> float:
    """probe_top1 minus the better of the two random-init encoders' probe top-1 (percentage points)."""
    return metrics["probe_top1"] - max(metrics["random_init_probe_top1"], metrics["random_net_probe_top1"])


def _adaln_zero(recipe: Recipe, name: str) -> bool | None:
    """The adaLN-Zero flag baseline `name`'s network is built with; None for the raw pixels."""
    if name == "random_init":
        return recipe.model.adaln_zero
    if name == "random_net":
        return False
    if name in ("raw_pixel", RANDOM_FEATURES):
        return None
    raise ValueError(f"unknown baseline {name!r}; valid: " + ", ".join(BASELINES))


def baseline_identity(recipe: Recipe, name: str) -> dict[str, Any]:
    """The resolved values baseline `name` (a key of BASELINES) reads: what its cache key hashes."""
    adaln_zero = _adaln_zero(recipe, name)
    evals = recipe.eval_identity()  # resolved probe.depth and probe.t; probe.base_lr only when probe.lr = 0
    probe = {k: v for k, v in evals.items() if k.startswith("probe.") and k not in _PROBE_UNREAD}
    data = {"data_key": recipe.data_key(), "image_size": recipe.data.image_size, "channels": recipe.channels,
            "test_size": recipe.data.test_size}
    ident: dict[str, Any] = {"version": BASELINE_VERSION, "data": data, "probe": probe, "seed": recipe.seed}
    if adaln_zero is None:
        for k in _ENCODER_PROBE:
            probe.pop(k, None)
        if name == RANDOM_FEATURES:  # the tokens, the model's width and the input layer's space; no encoder
            return {**ident, "kind": RANDOM_FEATURES,
                    "tokenizer": tokenizer_key(recipe.tokenizer, data_key=recipe.data_key(), channels=recipe.channels,
                                               image_size=recipe.data.image_size, seed=recipe.seed),
                    "width": MODEL_SIZES[recipe.model.size.value].width,
                    "input_space": recipe.objective.input_space.value}
        return {**ident, "kind": "raw_pixels", "side": RAW_PIXEL_SIDE}
    trains = recipe.train_identity()  # model knobs the recipe reads (class_dropout only when class-conditional)
    return {**ident, "kind": "random_network", "adaln_zero": adaln_zero,
            "tokenizer": tokenizer_key(recipe.tokenizer, data_key=recipe.data_key(), channels=recipe.channels,
                                       image_size=recipe.data.image_size, seed=recipe.seed),
            "model": {k: v for k, v in trains.items() if k.startswith("model.") and k != "model.adaln_zero"},
            "objective": {"input_space": recipe.objective.input_space.value,
                          "output_space": recipe.objective.output_space.value},
            "schedule": {"name": recipe.noise.schedule.value, "num_steps": recipe.noise.num_steps}}


def baseline_key(recipe: Recipe, name: str) -> str:
    """File stem of baseline `name`'s cache entry: "{name}-{SHA-256 of its identity}"."""
    blob = json.dumps(baseline_identity(recipe, name), sort_keys=True, separators=(",", ":")).encode()
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:24]}"


def measure_baselines(recipe: Recipe, *, tokenizer: Tokenizer, train: ImageData, test: ImageData,
                      device: torch.device, cache: Path | None, events: Callable[..., None] | None = None,
                      accelerator: Any = None, share_passes: bool = True, at: ProbeAt | None = None
                      ) -> dict[str, float]:
    """{f"{name}_probe_top1"} of every baseline, from `cache` (a folder; None: no cache) or measured and stored
    there. Events: phase "probe" with `baseline` = name and `cached`, and the baseline probe's epochs.

    Every process of the cell calls it (`accelerator`): feature passes are sharded and gathered, and the cache is
    read, locked and written by the main process for all. With `share_passes` (the default) and without probe
    augmentation, the baselines of a streamed set that are not cached share one feature pass over each split (each
    image decoded once for all of them, and the same numbers as a pass per baseline: tests/test_baselines.py); an
    in-memory set has nothing to decode, and one pass per baseline holds one baseline's features at a time.
    `share_passes=False` runs a pass per baseline (to compare against). `at`: the cell's resolved probe depth and
    t (`probe_at(recipe)` when not given)."""
    say = events or (lambda **_: None)
    at = at or probe_at(recipe)
    out: dict[str, float] = {}
    shared: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {}

    def missing() -> list[str]:
        return [n for n in BASELINES if cache is None
                or not agreed(accelerator, _read(cache / f"{baseline_key(recipe, n)}.json",
                                                 baseline_identity(recipe, n)) is not None)]

    for name in BASELINES:
        identity = baseline_identity(recipe, name)

        def compute(name: str = name) -> dict[str, float]:
            if share_passes and not recipe.probe.augment and not train.in_memory and name not in shared:
                shared.update(_shared_features(recipe, [n for n in missing() if n not in shared] or [name],
                                               tokenizer=tokenizer, train=train, test=test, device=device,
                                               accelerator=accelerator, at=at))
            return _measure(recipe, name, tokenizer=tokenizer, train=train, test=test, device=device, events=say,
                            accelerator=accelerator, features=shared.pop(name, None), at=at)

        if cache is None:
            result, cached = compute(), False
        else:
            result, cached = _cached(cache / f"{baseline_key(recipe, name)}.json", identity, compute, accelerator)
        say(phase="probe", baseline=name, cached=cached, probe_top1=result["probe_top1"])
        out[f"{name}_probe_top1"] = float(result["probe_top1"])
    return out


def measure_random_features(recipe: Recipe, *, tokenizer: Tokenizer, train: ImageData, test: ImageData,
                            device: torch.device, cache: Path | None, events: Callable[..., None] | None = None,
                            accelerator: Any = None) -> dict[str, float]:
    """{"random_features_probe_top1"}: the untrained nonlinear reading of the cell's tokens, probed the cell's way,
    from `cache` (a folder; None: no cache) or measured and stored there (as `measure_baselines`, one entry)."""
    say = events or (lambda **_: None)

    def compute() -> dict[str, float]:
        return _measure(recipe, RANDOM_FEATURES, tokenizer=tokenizer, train=train, test=test, device=device,
                        events=say, accelerator=accelerator)

    if cache is None:
        result, cached = compute(), False
    else:
        result, cached = _cached(cache / f"{baseline_key(recipe, RANDOM_FEATURES)}.json",
                                 baseline_identity(recipe, RANDOM_FEATURES), compute, accelerator)
    say(phase="probe", baseline=RANDOM_FEATURES, cached=cached, probe_top1=result["probe_top1"])
    return {f"{RANDOM_FEATURES}_probe_top1": float(result["probe_top1"])}


def random_features_fn(recipe: Recipe, tokenizer: Tokenizer) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """x in [-1, 1] -> the untrained per-token ReLU layer's mean-pooled features [B, width] of the clean input
    tokens; the layer is drawn at the first batch (its token count and dimension), under
    `manual_seed(recipe.seed + 2)` (the random encoders use seed + 1), on a CPU generator: the same on every
    device and process."""
    width = MODEL_SIZES[recipe.model.size.value].width
    drawn: list[Any] = []

    def fn(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        tokens = make_model_input(tokenizer.encode(x), tokenizer=tokenizer, objective=recipe.objective)  # [B, N, D]
        if not drawn:
            drawn.append(draw_random_features(tokens.shape[1], tokens.shape[2], width,
                                              torch.Generator().manual_seed(recipe.seed + 2)))
        return random_features(tokens, drawn[0])  # [B, width]

    return fn


def _feature_fn(recipe: Recipe, name: str, *, tokenizer: Tokenizer, num_classes: int, device: torch.device,
                accelerator: Any, at: ProbeAt | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Baseline `name`'s features of images in [-1, 1] (under the training's mixed precision)."""
    if name == RANDOM_FEATURES:
        return amp(random_features_fn(recipe, tokenizer), accelerator)
    adaln_zero = _adaln_zero(recipe, name)
    if adaln_zero is None:
        return pixel_features
    at = at or probe_at(recipe)
    model = random_encoder(recipe, tokenizer, num_classes, adaln_zero=adaln_zero).to(device)
    return amp(encoder_feature_fn(recipe, model, tokenizer, depth=at.depth, t=at.t, seed=recipe.seed), accelerator)


def _shared_features(recipe: Recipe, names: list[str], *, tokenizer: Tokenizer, train: ImageData, test: ImageData,
                     device: torch.device, accelerator: Any, at: ProbeAt
                     ) -> dict[str, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """Train and test features of the baselines `names`, from one pass over each split: every batch goes through
    each baseline's feature function and their features are concatenated, then split by width."""
    fns = [_feature_fn(recipe, n, tokenizer=tokenizer, num_classes=train.num_classes, device=device,
                       accelerator=accelerator, at=at) for n in names]
    widths: list[int] = []

    def all_fns(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = [f(x, y).float() for f in fns]
        widths[:] = [p.shape[1] for p in parts]
        return torch.cat(parts, dim=1)

    tr_f, tr_y = features_of(all_fns, train, batch_size=FEATURE_BATCH, device=device, accelerator=accelerator)
    te_f, te_y = features_of(all_fns, test, batch_size=FEATURE_BATCH, device=device, accelerator=accelerator)
    out = {}
    for name, a, b in zip(names, tr_f.split(widths, dim=1), te_f.split(widths, dim=1), strict=True):
        out[name] = ((a, tr_y), (b, te_y))
    return out


def _measure(recipe: Recipe, name: str, *, tokenizer: Tokenizer, train: ImageData, test: ImageData,
             device: torch.device, events: Callable[..., None], accelerator: Any = None,
             features: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
             at: ProbeAt | None = None) -> dict[str, float]:
    """Baseline `name`'s probe result (the keys of `linear_probe`) under the cell's probe protocol (`features`:
    its train and test features when a shared pass made them already)."""
    def progress(epoch: int, epochs: int, loss: float) -> None:
        events(phase="probe", baseline=name, probe_epoch=epoch, probe_epochs=epochs, probe_loss=loss)

    pc = recipe.probe
    if features is None:
        fn = _feature_fn(recipe, name, tokenizer=tokenizer, num_classes=train.num_classes, device=device,
                         accelerator=accelerator, at=at)
        if pc.augment:  # as the cell's probe: fresh crops every epoch, features recomputed
            return evaluation.linear_probe_augmented_data(fn, train, test, cfg=pc, seed=recipe.seed,
                                               feature_batch_size=FEATURE_BATCH, device=device, progress=progress,
                                               accelerator=accelerator)
        features = (features_of(fn, train, batch_size=FEATURE_BATCH, device=device, accelerator=accelerator),
                    features_of(fn, test, batch_size=FEATURE_BATCH, device=device, accelerator=accelerator))
    (tr_f, tr_y), (te_f, te_y) = features
    return evaluation.linear_probe(tr_f, tr_y, te_f, te_y, num_classes=train.num_classes, cfg=pc, seed=recipe.seed,
                                   device=device, progress=progress)


def _read(path: Path, identity: dict[str, Any]) -> dict[str, float] | None:
    """The cached result at `path` when it is readable and of this identity, else None."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, truncated or not JSON
        return None
    result = doc.get("result") if isinstance(doc, dict) and doc.get("identity") == identity else None
    if not isinstance(result, dict) or not isinstance(result.get("probe_top1"), (int, float)):
        return None
    return result


def _cached(path: Path, identity: dict[str, Any], compute: Callable[[], dict[str, float]], accelerator: Any = None
            ) -> tuple[dict[str, float], bool]:
    """(result, from cache): the entry at `path`, or `compute()` under the entry's lock, written atomically.

    Several processes of one cell: every one computes (the feature passes are collective) and the main one holds
    the lock, decides for all whether the entry is there, and writes it."""
    hit = _read(path, identity)  # fast path: atomic writes make an unlocked read safe
    if agreed(accelerator, hit is not None):
        assert hit is not None
        return hit, True
    main = accelerator is None or accelerator.is_main_process
    with file_lock(path.with_suffix(".lock")) if main else contextlib.nullcontext():
        hit = _read(path, identity) if main else None  # another cell may have measured it while we waited
        if accelerator is not None and accelerator.num_processes > 1:
            hit = broadcast_object_list([hit])[0]
        if hit is not None:
            return hit, True
        started = time.time()
        result = {k: float(v) for k, v in compute().items()}
        if main:
            atomic_write_json(path, {"identity": identity, "result": result, "seconds": time.time() - started})
        return result, False
