"""What a sweep costs before it runs (`sweepdae run --dry-run`): FLOPs per cell from its recipe, a training shared
by several cells counted once, and a rate (FLOP/s per device) that is measured, or said to be assumed.

Counting convention: the FLOPs of matrix products and convolutions, 2 per multiply-add; element-wise work (norms,
activations, softmax, adaLN modulation itself, the loss), embedding lookups and the optimizer step are left out.
A forward pass of the DiT per token: 2 x (parameters of its Linears) + the attention products QK^T and AV,
2 x 2 x tokens x width per block (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Tab. 1; PaLM,
Chowdhery et al. 2022, App. B counts both products, as here); per image: the time embedder and the adaLN
modulation MLPs (they read the [B, C] conditioning, not the tokens). A training step is 3 x the forward (the
backward pass costs twice the forward: Kaplan et al. 2020, Sec. 2.1). DiT (Peebles & Xie 2023) reports its
model sizes in forward "Gflops" counted as fvcore does, one per multiply-add: half of this module's count (its
DiT-XL/2, 118.6 Gflops, is ~237 GFLOP here). tests/test_estimate.py checks the counts against
`torch.utils.flop_counter.FlopCounterMode` on the real modules. This module imports no torch: `plan` and the dry
run stay fast.

Time = FLOPs / (rate x devices) + a fixed cost per cell (process start, data loading, the probe head's many small
steps: what no FLOP count sees). The rate and the fixed cost come, in this order, from `--rate`, from the finished
cells of the store on the same device kind (`calibrate`), or from the per-kind defaults below: measured on a CPU
(benchmarks/bench_estimate.py, BENCHMARKS.md section 11), assumed for a GPU and printed as such.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sweepdae.cell import TOKENIZER_SAMPLE
from sweepdae.recipe import (
    MODEL_SIZES,
    NoiseLevels,
    Recipe,
    Space,
    TokenizerName,
    image_fit,
    probe_depth,
    recipe_from_dict,
)

# -- constants of the counted modules (tests/test_estimate.py checks each against the module it mirrors) ----------
MLP_RATIO = 4  # DiT / ViT: MLP hidden = 4 x width (models/_layers.py MLP_RATIO)
FREQUENCY_EMBEDDING_SIZE = 256  # DiT TimestepEmbedder (models/_layers.py)
CONV_CH_MULT = (1, 2, 2, 4, 4, 4)  # conv VAE width multipliers (tokenizers/_conv_vae.py CH_MULT)
MAX_DISC_LAYERS = 3  # PatchGAN stride-2 layers at most (tokenizers/_losses.py)
ADV_WARMUP_FRACTION = 0.5  # the discriminator trains over the second half of the fit (tokenizers/_losses.py)
# EfficientNet-Lite0's first 4 stages at 64 px (the perceptual distance's minimum side, tokenizers/_perceptual.py),
# one image, counted with FlopCounterMode on timm's tf_efficientnet_lite0; scales with the pixel count above 64 px.
PERCEPTUAL_FLOPS_64PX = 25_675_264
PERCEPTUAL_MIN_SIDE = 64
# Inception-v3 at 299 px: 5.71 G multiply-adds (torchvision's published 5.71 "GFLOPS" are multiply-adds), i.e.
# 11.43 GFLOP in this module's 2-per-multiply-add convention (FlopCounterMode on torchvision's inception_v3).
INCEPTION_FLOPS = 11_426_432_192

# Images per split when the recipe takes the whole split (data.train_size / test_size = 0). digits: sklearn's 1797
# split 80/20 (data/_builtin.py); synthetic: its default sizes. An image folder's size is not known without listing
# it: ImageNet-1k's (the paper's) is assumed and the estimate says so.
SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "fashion-mnist": (60_000, 10_000), "mnist": (60_000, 10_000), "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000), "digits": (1_438, 359), "synthetic": (1_000, 200),
    "imagefolder": (1_281_167, 50_000),
}

# -- rates: measured (CPU) or assumed (GPU) ---------------------------------------------------------------------------
# CPU: benchmarks/bench_estimate.py on the 2-core x86_64 VM of BENCHMARKS.md (section 11), one OpenMP thread: a
# micro DiT cell trained for 60 steps of 128 images, the FLOPs of this module over its `train_seconds` (84.9
# GFLOP/s; 78.7 in a second run); the fixed cost, that cell's wall time minus its FLOPs at that rate (2.05 s).
# Predicted from that cell, DiT-only cells of other sizes came out at 1.15-1.61 x their actual time, a cell made of a
# conv VAE fit and FID at 0.64-0.78 x (convolutions and Inception run slower per FLOP on a CPU).
CPU_FLOPS_PER_S = 85e9
CPU_FIXED_S = 2.0
# GPU: nothing measured here (no GPU was lent to this project). Assumed: 10 TFLOP/s per GPU for bf16 training of
# the small DiTs of the demo profiles (16 tokens, 96-192 wide, batch 256) in eager PyTorch, about 1% of an
# H100/H200's dense bf16 peak (989 TFLOP/s): such steps are bound by kernel launches and Python, not by the
# tensor cores. Paper-scale models (DiT-L, 256 tokens) reach far more, so a paper-profile estimate is an upper bound.
# Fixed cost per cell: an `accelerate launch` process, 4.7 s measured on the CPU machine (BENCHMARKS.md section 2),
# plus CUDA initialisation and data loading, assumed 15 s in all.
CUDA_FLOPS_PER_S = 10e12
CUDA_FIXED_S = 15.0
PAPER_SIZES = ("base", "half_large", "large")


# -- FLOPs ------------------------------------------------------------------------------------------------------------
def dit_forward_flops(size: str, *, tokens: int, in_dim: int, out_dim: int, cond_mlp_ratio: float = 0.25,
                      blocks: int | None = None) -> float:
    """FLOPs of one image through the DiT: the whole network (blocks=None), or the embedding and the first `blocks`
    blocks without the final layer (`Denoiser.features`, the probe's frozen encoder)."""
    spec = MODEL_SIZES[size]
    c, n = spec.width, tokens
    embed = 2 * n * in_dim * c  # x_embedder: Linear(in_dim, C) per token
    t_embed = 2 * (FREQUENCY_EMBEDDING_SIZE * c + c * c)  # TimestepEmbedder MLP: 256 -> C -> C, per image
    if cond_mlp_ratio == 1.0:  # adaLN modulation per block, per image: C -> 6C, or C -> h -> 6C (l-DAE's shrink)
        modulation = 2 * c * 6 * c
    else:
        hidden = max(1, round(cond_mlp_ratio * c))
        modulation = 2 * (c * hidden + hidden * 6 * c)
    block = (2 * n * c * 3 * c  # qkv
             + 2 * 2 * n * n * c  # QK^T and AV over all heads
             + 2 * n * c * c  # attention output projection
             + 2 * 2 * n * c * MLP_RATIO * c  # MLP: C -> 4C -> C
             + modulation)
    depth = spec.depth if blocks is None else blocks
    total = embed + t_embed + depth * block
    if blocks is None:
        total += 2 * c * 2 * c + 2 * n * c * out_dim  # final layer: adaLN C -> 2C per image, Linear(C, out) per token
    return float(total)


def model_shape(r: Recipe) -> tuple[int, int, int]:
    """(tokens, in_dim, out_dim) of the recipe's network (`objectives.model_io_dims`): d per token in the latent
    space, D = C p^2 in the image space (through the inverse PCA)."""
    big = r.patch_dim(r.channels)
    d = big if r.tokenizer.name == TokenizerName.pixel else r.tokenizer.latent_dim
    return (r.num_tokens(), d if r.objective.input_space == Space.latent else big,
            d if r.objective.output_space == Space.latent else big)


def recipe_forward_flops(r: Recipe, blocks: int | None = None) -> float:
    tokens, in_dim, out_dim = model_shape(r)
    return dit_forward_flops(r.model.size.value, tokens=tokens, in_dim=in_dim, out_dim=out_dim,
                             cond_mlp_ratio=r.model.cond_mlp_ratio, blocks=blocks)


def split_sizes(r: Recipe) -> tuple[int, int]:
    """(train, test) images the cell reads."""
    name = r.data.name.value
    full_train, full_test = SPLIT_SIZES[name]
    bounded = name not in ("imagefolder", "synthetic")  # a subset of a fixed split; the others are what they say
    train = (min(r.data.train_size, full_train) if bounded else r.data.train_size) if r.data.train_size else full_train
    test = (min(r.data.test_size, full_test) if bounded else r.data.test_size) if r.data.test_size else full_test
    return train, test


def _conv(cin: int, cout: int, k: int, side: int) -> int:
    """A k x k convolution producing a side x side map."""
    return 2 * cin * cout * k * k * side * side


def _resblock(cin: int, cout: int, side: int) -> int:
    return _conv(cin, cout, 3, side) + _conv(cout, cout, 3, side) + (_conv(cin, cout, 1, side) if cin != cout else 0)


def conv_vae_flops(r: Recipe) -> tuple[float, float]:
    """(encoder, decoder) forward FLOPs of one image through the conv VAE (tokenizers/_conv_vae.py)."""
    tk, side, ch = r.tokenizer, r.data.image_size, r.channels
    num = int(math.log2(tk.conv_downsample))
    widths = [tk.conv_channels * CONV_CH_MULT[min(i, len(CONV_CH_MULT) - 1)] for i in range(num + 1)]
    c_lat = tk.latent_dim // tk.conv_group ** 2
    low = side >> num
    enc = _conv(ch, widths[0], 3, side)
    for i in range(num):
        enc += _resblock(widths[i], widths[i], side >> i) + _conv(widths[i], widths[i + 1], 3, side >> (i + 1))
    enc += _resblock(widths[-1], widths[-1], low) + _conv(widths[-1], 2 * c_lat, 3, low)
    dec = _conv(c_lat, widths[-1], 3, low) + _resblock(widths[-1], widths[-1], low)
    for i in reversed(range(num)):
        dec += _conv(widths[i + 1], widths[i], 3, side >> i) + _resblock(widths[i], widths[i], side >> i)
    dec += _conv(widths[0], ch, 3, side)
    return float(enc), float(dec)


def discriminator_flops(channels: int, side: int, ndf: int) -> float:
    """Forward FLOPs of one image through the PatchGAN (tokenizers/_losses.py PatchGANDiscriminator)."""
    layers = max(1, min(MAX_DISC_LAYERS, int(math.log2(max(side, 8) / 4))))
    side = side // 2
    total, mult = _conv(channels, ndf, 4, side), 1
    for n in range(1, layers):
        prev, mult = mult, min(2 ** n, 8)
        side //= 2
        total += _conv(ndf * prev, ndf * mult, 4, side)
    prev, mult = mult, min(2 ** layers, 8)
    side -= 1  # kernel 4, stride 1, padding 1
    total += _conv(ndf * prev, ndf * mult, 4, side)
    side -= 1
    total += _conv(ndf * mult, 1, 4, side)
    return float(total)


def encode_flops(r: Recipe) -> float:
    """Tokenizer encode FLOPs per image (PCA, AE and VAE: one Linear per patch; conv VAE: its encoder)."""
    name = r.tokenizer.name
    if name == TokenizerName.conv_vae:
        return conv_vae_flops(r)[0]
    if name == TokenizerName.pixel:
        return 0.0
    out = 2 * r.tokenizer.latent_dim if name == TokenizerName.patch_vae else r.tokenizer.latent_dim
    return float(2 * r.num_tokens() * r.patch_dim(r.channels) * out)


def tokenizer_fit_flops(r: Recipe) -> float:
    """Fitting the tokenizer (tokenizer.fit_epochs over its images); PCA's eigen-decomposition is negligible."""
    name = r.tokenizer.name
    if name in (TokenizerName.pixel, TokenizerName.patch_pca):
        return 0.0
    n = split_sizes(r)[0] if r.data.name.value != "imagefolder" else min(split_sizes(r)[0], TOKENIZER_SAMPLE)
    tk = r.tokenizer
    if name in (TokenizerName.patch_ae, TokenizerName.patch_vae):
        per_image = 3 * (encode_flops(r) + 2 * r.num_tokens() * tk.latent_dim * r.patch_dim(r.channels))
    else:
        enc, dec = conv_vae_flops(r)
        per_image = 3 * (enc + dec)
        if tk.perceptual_weight > 0:  # forward on the image and the reconstruction, backward through the latter
            side = max(r.data.image_size, PERCEPTUAL_MIN_SIDE)
            per_image += 4 * PERCEPTUAL_FLOPS_64PX * (side / PERCEPTUAL_MIN_SIDE) ** 2
        if tk.adversarial_weight > 0:  # second half: generator term (3x) + discriminator step on real and fake (6x)
            per_image += (1 - ADV_WARMUP_FRACTION) * 9 * discriminator_flops(r.channels, r.data.image_size,
                                                                              tk.conv_channels)
    return per_image * n * tk.fit_epochs


def training_flops(r: Recipe) -> float:
    """Pre-training the denoiser: 3 x forward per image seen, plus encoding the images (once for an in-memory set
    without augmentation, every epoch otherwise)."""
    n = split_sizes(r)[0]
    seen = (n // r.train.batch_size) * r.train.batch_size * r.train.epochs
    once = r.data.name.value != "imagefolder" and r.data.augment.value == "center_crop"
    return 3 * recipe_forward_flops(r) * seen + encode_flops(r) * (n if once else seen)


def evaluation_flops(r: Recipe, *, with_fid_reference: bool = True) -> float:
    """Evaluating a trained network: probe features (encoder blocks only) of the train and test images, kNN, the
    random-init baselines, FID (sampling, decoding, Inception on the samples and, unless cached, the reference)."""
    n_tr, n_te = split_sizes(r)
    depth = probe_depth(r)
    per_image = recipe_forward_flops(r, blocks=depth) + encode_flops(r)
    pc = r.probe
    # cached features (train + test); the augmented probe re-encodes a crop of every train image each epoch, then
    # the test set and the un-augmented train set once more (eval/probe.py linear_probe_augmented_data)
    probe = (n_tr + n_te) + ((pc.epochs + 1) * n_tr + n_te if pc.augment else 0)
    images = probe
    if pc.t < 0 and r.noise.levels == NoiseLevels.single:  # also probed at the paper's t = 10 (cell/probing.py)
        images += n_tr + n_te
    if pc.baselines:  # the random-init and random-network encoders, under the cell's probe protocol
        images += 2 * (((pc.epochs + 1) * n_tr + n_te) if pc.augment else (n_tr + n_te))
    width = MODEL_SIZES[r.model.size.value].width
    total = per_image * images + 2 * n_tr * n_te * width  # + the kNN similarities
    if r.fid.enabled:
        guided = 2 if r.model.class_cond and r.fid.guidance_scale != 1.0 else 1
        decode = conv_vae_flops(r)[1] if r.tokenizer.name == TokenizerName.conv_vae else 0.0
        n = r.fid.num_samples
        total += n * (r.fid.steps * guided * recipe_forward_flops(r) + decode + INCEPTION_FLOPS)
        if with_fid_reference:
            total += fid_reference_images(r) * INCEPTION_FLOPS
    return total


def fid_reference_images(r: Recipe) -> int:
    n_tr, n_te = split_sizes(r)
    return min(n_tr if r.fid.ref_split == "train" else n_te, r.fid.ref_size or r.fid.num_samples)


def fid_reference_key(r: Recipe) -> str:
    """What the FID reference statistics are cached by (cell/generate.py fid_cell): data, split, count, size."""
    d = r.data
    fit, px = image_fit(d.name.value, d.image_size)
    size = d.train_size if r.fid.ref_split == "train" else d.test_size
    return f"{d.name.value}:{d.root}:{size}:{d.channels}:{fit}{px or ''}|{r.fid.ref_split}|{fid_reference_images(r)}"


def tokenizer_identity(r: Recipe) -> str:
    """What a fitted tokenizer is cached by: its own knobs, the images, the seed (tokenizers/_cache.py)."""
    from sweepdae.recipe import TOKENIZER_KNOBS

    knobs = {k: getattr(r.tokenizer, k) for k in TOKENIZER_KNOBS[r.tokenizer.name.value]}
    return f"{r.tokenizer.name.value}|{sorted(knobs.items())}|{r.data_key()}|{r.data.image_size}|{r.channels}|{r.seed}"


# -- rates ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rate:
    """FLOP/s of one device of `kind` ("cpu": the whole machine; "cuda": one GPU) and a fixed cost per cell."""

    flops_per_s: float
    fixed_s: float
    kind: str
    source: str  # how the numbers were obtained, printed with the estimate
    measured: bool


def default_rate(kind: str) -> Rate:
    if kind == "cuda":
        return Rate(CUDA_FLOPS_PER_S, CUDA_FIXED_S, kind, "assumed, not measured (small DiTs in bf16: ~1% of a "
                    "datacenter GPU's peak; pass --rate TFLOPS to use a measured one)", measured=False)
    return Rate(CPU_FLOPS_PER_S, CPU_FIXED_S, kind, "measured on one core of a 2-core x86_64 VM (BENCHMARKS.md "
                "section 11), not on this machine", measured=True)


def calibrate(cells: Iterable[dict[str, Any]], kind: str) -> Rate | None:
    """The rate achieved by finished cells on devices of `kind`, or None when there are none.

    `cells`: rows of `Store.cells()` (as dicts). Each training is counted once, from the cell that made it (not
    `reused_training`): its training FLOPs (the epochs after a resume) over `train_seconds` x the processes it
    ran on. The fixed cost per cell: the mean over those cells of their wall time minus their FLOPs at that rate
    (at least 0)."""
    flops = seconds = 0.0
    rows: list[tuple[float, float, int]] = []  # (FLOPs, wall s, processes) of the cells that made their training
    devices: set[str] = set()
    seen: set[str] = set()
    for row in cells:
        info = row.get("info") or {}
        prov = info.get("provenance") or {}
        secs = _finite(row.get("metric.train_seconds"))
        reused = _flag(row.get("reused_training"))
        if row.get("status") != "done" or prov.get("device_type") != kind or not secs or reused:
            continue
        try:
            r = recipe_from_dict(dict(row.get("recipe") or {}))
        except Exception:  # a recipe of an older sweepdae or of a test double: not a measurement of this model
            continue
        tk = row.get("train_key")
        key = tk if isinstance(tk, str) and tk else r.train_key()
        if key in seen:
            continue
        seen.add(key)
        resumed = int(info.get("resumed_from_epoch") or 0)
        done = max(r.train.epochs - resumed, 0) / r.train.epochs
        procs = int(prov.get("num_processes") or 1)
        flops += training_flops(r) * done
        seconds += secs * procs
        devices.add(str(prov.get("device") or kind))
        wall = _finite((info.get("timings") or {}).get("wall_s"))
        if wall and not resumed:
            rows.append((training_flops(r) + tokenizer_fit_flops(r) + evaluation_flops(r), wall, procs))
    if not seen or seconds <= 0 or flops <= 0:
        return None
    rate = flops / seconds
    fixed = max(0.0, sum(w - f / (rate * p) for f, w, p in rows) / len(rows)) if rows else default_rate(kind).fixed_s
    where = ", ".join(sorted(devices)[:3])
    return Rate(rate, fixed, kind, f"rate measured from {len(seen)} finished cells in this store ({where})",
                measured=True)


def _flag(v: Any) -> bool:
    """A store frame's boolean (Python or numpy); missing (None, NaN) is False."""
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v)


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) and f > 0 else 0.0


# -- estimates --------------------------------------------------------------------------------------------------------
@dataclass
class GridEstimate:
    """One grid of a run: what it holds, what would run, and what that costs on the run's devices."""

    name: str
    profile: str | None
    cells: int
    done: int
    run: int
    trainings: int  # distinct train_keys among the cells that would run, not trained in the store
    shared: int  # of those, made by an earlier grid of the same run (not costed again)
    flops: float
    seconds: float
    notes: list[str] = field(default_factory=list)


def estimate_grids(grids: Sequence[tuple[str, str | None, Sequence[Any], Sequence[Any]]], *, trained: set[str],
                   rate: Rate, devices: int, slots: int) -> list[GridEstimate]:
    """Estimates of grids run one after the other: (name, profile, selected cells, cells that would run) each.

    A training is costed once, by the first cell that needs it, and not at all when `trained` (the store) has it;
    a tokenizer fit and an FID reference likewise once (they are cached). Time: FLOPs over `devices` x the rate,
    plus the fixed cost per cell spread over the `slots` that run cells side by side."""
    made: set[str] = set(trained)
    fitted: set[str] = set()
    refs: set[str] = set()
    out = []
    for name, profile, cells, todo in grids:
        flops = 0.0
        own: set[str] = set()
        shared: set[str] = set()
        notes: set[str] = set()
        for c in todo:
            r: Recipe = c.recipe
            if r.data.name.value == "imagefolder" and not (r.data.train_size and r.data.test_size):
                notes.add("image folder assumed ImageNet-1k size (1,281,167 / 50,000 images)")
            if not rate.measured and rate.kind == "cuda" and r.model.size.value in PAPER_SIZES:
                notes.add("the assumed GPU rate is for small DiTs: paper-size models run faster per FLOP")
            ref = fid_reference_key(r) if r.fid.enabled else ""
            flops += evaluation_flops(r, with_fid_reference=bool(ref) and ref not in refs)
            refs.add(ref)
            tk = c.train_key
            if tk in trained:
                continue
            if tk in made:
                if tk not in own:
                    shared.add(tk)
                continue
            made.add(tk)
            own.add(tk)
            flops += training_flops(r)
            tok = tokenizer_identity(r)
            if tok not in fitted:
                fitted.add(tok)
                flops += tokenizer_fit_flops(r)
        seconds = flops / (rate.flops_per_s * max(devices, 1)) + len(todo) * rate.fixed_s / max(slots, 1)
        out.append(GridEstimate(name, profile, len(cells), len(cells) - len(todo), len(todo),
                                len(own) + len(shared), len(shared), flops, seconds, sorted(notes)))
    return out


def human_seconds(s: float) -> str:
    """'nothing', 'about 35 s', 'about 42 min', 'about 2 h 05 min', 'about 12 days'."""
    if s <= 0:
        return "nothing"
    if s < 90:
        return f"about {max(1, round(s))} s"
    m = round(s / 60)
    if m >= 48 * 60:
        return f"about {s / 86400:,.0f} days"
    return f"about {m // 60} h {m % 60:02d} min" if m >= 60 else f"about {m} min"


def human_flops(f: float) -> str:
    """'3.2 PFLOP', '1,880 EFLOP'."""
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= scale:
            v = f / scale
            return f"{v:,.0f} {unit}" if v >= 1000 else f"{v:.3g} {unit}"
    return f"{f:.3g} FLOP"
