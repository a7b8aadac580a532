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

The plan (`estimate_grids`): per phase of each cell (tokenizer fit, training, probe, baselines, kNN, FID reference
and sampling), the larger of its compute time (FLOPs over the devices that run it: all of a cell's processes for
the phases PHASES marks sharded, one otherwise) and its data time (images decoded from a streamed image folder over
DECODE_RATES, measured per CPU core by benchmarks/bench_decode.py, times the decoding cores of a process); a grid's
cells share the slots, but a grid takes at least its longest chain (a training, then its slowest cell's
evaluation), plus a fixed cost per cell (process start: what no FLOP count sees). The rate comes, in this order,
from `--rate`, from the finished cells of the store on the same device kind (`calibrate`), or from the per-kind
defaults below: measured on a CPU (benchmarks/bench_estimate.py, BENCHMARKS.md section 11); for a GPU its data
sheet's peak in the phase's precision times an MFU assumed until measured, printed as such. `slurm_sizing` sizes a
grid's `[slurm]` table from the same plan.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sweepdae.cell import TOKENIZER_SAMPLE
from sweepdae.recipe import (
    MODEL_SIZES,
    TOKENIZER_KNOBS,
    NoiseLevels,
    Recipe,
    Space,
    Target,
    TokenizerName,
    image_fit,
    probe_depth,
    recipe_from_dict,
)
from sweepdae.runner.flops import (  # the counts; re-exported: the estimate's callers and tests name them here
    ADV_WARMUP_FRACTION as ADV_WARMUP_FRACTION,
)
from sweepdae.runner.flops import (
    CONV_CH_MULT as CONV_CH_MULT,
)
from sweepdae.runner.flops import (
    FREQUENCY_EMBEDDING_SIZE as FREQUENCY_EMBEDDING_SIZE,
)
from sweepdae.runner.flops import (
    INCEPTION_FLOPS,
    conv_vae_flops,
    dit_parameters,
    encode_flops,
    model_shape,
    recipe_forward_flops,
    split_sizes,
    tokenizer_fit_flops,
)
from sweepdae.runner.flops import (
    MAX_DISC_LAYERS as MAX_DISC_LAYERS,
)
from sweepdae.runner.flops import (
    MLP_RATIO as MLP_RATIO,
)
from sweepdae.runner.flops import (
    PERCEPTUAL_FLOPS_64PX as PERCEPTUAL_FLOPS_64PX,
)
from sweepdae.runner.flops import (
    PERCEPTUAL_MIN_SIDE as PERCEPTUAL_MIN_SIDE,
)
from sweepdae.runner.flops import (
    SPLIT_SIZES as SPLIT_SIZES,
)
from sweepdae.runner.flops import (
    discriminator_flops as discriminator_flops,
)
from sweepdae.runner.flops import (
    dit_forward_flops as dit_forward_flops,
)

# -- rates: measured (CPU) or assumed (GPU) ---------------------------------------------------------------------------
# CPU: benchmarks/bench_estimate.py on the 2-core x86_64 VM of BENCHMARKS.md (section 11), one OpenMP thread: a
# micro DiT cell trained for 60 steps of 128 images, the FLOPs of this module over its `train_seconds` (84.9
# GFLOP/s; 78.7 in a second run); the fixed cost, that cell's wall time minus its FLOPs at that rate (2.05 s).
# Predicted from that cell, DiT-only cells of other sizes came out at 1.15-1.61 x their actual time, a cell made of a
# conv VAE fit and FID at 0.64-0.78 x (convolutions and Inception run slower per FLOP on a CPU).
CPU_FLOPS_PER_S = 85e9
CPU_FIXED_S = 2.0
# GPU: no rate is measured on a GPU yet. The rate of a phase is the GPU's peak for the
# phase's precision (GPU_PEAKS) times a model FLOP utilisation (MFU) assumed until measured (ASSUMED_MFU;
# benchmarks/bench_gpu.py measures it on a GPU). Fixed cost per cell: an `accelerate launch` process, 4.7 s measured
# on the CPU machine (BENCHMARKS.md section 2), plus CUDA initialisation, assumed 15 s in all.
CUDA_FIXED_S = 15.0


@dataclass(frozen=True)
class GpuPeak:
    """Dense (no sparsity) peak TFLOP/s of one GPU: bf16 and TF32 tensor cores, plain fp32; and where they are from."""

    name: str
    bf16: float
    tf32: float
    fp32: float
    source: str


# Matched against the device name (nvidia-smi / torch.cuda.get_device_name), first match wins: PCIe before SXM.
# The data sheets give the tensor-core figures with 2:4 sparsity; dense is half of those.
GPU_PEAKS: dict[str, GpuPeak] = {
    "H100 PCIe": GpuPeak("H100 PCIe", 756.5, 378.0, 51.2, "NVIDIA H100 Tensor Core GPU datasheet, PCIe column: "
                         "BF16 1,513 / TF32 756 TFLOPS with sparsity, FP32 51 TFLOPS"),
    "H100": GpuPeak("H100 SXM5", 989.4, 494.7, 66.9, "NVIDIA H100 Tensor Core GPU Architecture whitepaper, Table 1 "
                    "(H100 SXM5): BF16 989.4 / TF32 494.7 dense, FP32 66.9 TFLOPS"),
    "H200": GpuPeak("H200 SXM", 989.4, 494.7, 66.9, "NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 1,979 / TF32 "
                    "989 TFLOPS with sparsity, FP32 67 TFLOPS (the H100 SXM's compute)"),
    "A100": GpuPeak("A100 SXM4", 312.0, 156.0, 19.5, "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 / TF32 156 "
                    "dense, FP32 19.5 TFLOPS"),
}
DEFAULT_GPU = "H100"  # assumed when no GPU is visible to the dry run (planning for a cluster from a laptop)
# MFU assumed until measured, against the peak of the phase's precision. Paper-size DiTs (ViT-B/L widths, 256
# tokens): 30%, inside the 25-40% expected of DiT-L training steps in bf16 on H100s (an assumption). The small DiTs of
# the demo profiles (16 tokens, 96-192 wide) are bound by kernel launches and Python: 1% (~10 TFLOP/s on an H100).
ASSUMED_MFU = {"paper": 0.30, "small": 0.01}
PAPER_SIZES = ("base", "half_large", "large")

# -- data: decode rates per CPU core (streamed sets) ------------------------------------------------------------------
# `python benchmarks/bench_decode.py` (one core, one thread): ImageNet-shaped JPEGs (500 x 375, ~106 KB each) decoded
# by `load_image` to 256 px, best of 5 passes, page cache warm (a shared file system adds its read time on top). The
# JPEG decode is most of the cost, so the rate is used at every output size. In-memory sets (MNIST, CIFAR, digits,
# synthetic) are decoded once when loaded: a pass indexes a tensor (3.5 million images/s on one core, same
# benchmark), counted as free.
DECODE_RATES = {"center_crop": 160.0, "random_resized_crop": 177.0}  # images/s per core
DECODE_CPU = "Intel(R) Xeon(R) Processor"  # /proc/cpuinfo model name of the machine that measured them
DECODE_COMMAND = "python benchmarks/bench_decode.py --repeats 5"

# -- phases: what runs on every process of a cell, and in which precision ---------------------------------------------
class Decoding(str, Enum):
    """Who decodes a phase's images: split over the cell's processes, the whole set by each process, or the whole
    set by one process while the others decode none."""

    sharded = "sharded"
    each = "each"
    once = "once"


# (compute split over the cell's N processes, who decodes, precision), as the code runs them:
# * training is data-parallel with per-rank shards (cell/train.py: a DistributedSampler over the seeded pass, each
#   image decoded once per epoch across the ranks);
# * evaluation runs on every rank (cell/run.py run_cell): the probe's feature passes and the augmented probe's
#   crops, and the random-init baselines', are sharded and gathered (cell/probing.py, cell/baselines.py,
#   eval/probe.py split_features; MAE main_linprobe.py's DistributedSampler loaders) under the training's mixed
#   precision (Accelerator.autocast: bf16 where training used it);
# * kNN is sharded by its queries: rank r scores test chunks r, r + N, ... against the whole gathered bank and the
#   correct counts are summed (eval/probe.py knn_probe), in float32 on the host, so its compute time here (the
#   GPU's TF32 rate) is a lower bound; it decodes nothing (it reads the cached features);
# * FID sampling shares its seeded chunks out over the ranks (cell/generate.py, as DiT sample_ddp.py) and runs the
#   denoiser and the decoder under the training's autocast (Inception, a small part of its FLOPs, in fp32); the
#   FID reference pass reads, decodes and computes only each rank's DistributedSampler share of the reference set
#   (eval/fid.py reference_stats_streamed with `shard`);
# * the tokenizer's fit sample is decoded only when the tokenizer is not cached, by the main process alone, which
#   fits it (not split); the other ranks wait for its cache file (tokenizers/_cache.py get_tokenizer(wait=True)).
# A streamed set with a deterministic training input (center crop, no objective reading image patches) is encoded
# once into latents on disk, shared by every training of the same images and tokenizer (cell/latents.py, fast-DiT's
# feature pre-extraction): its later epochs, and later trainings, decode nothing (STREAMED_LATENTS_ONCE).
STREAMED_LATENTS_ONCE = True
PHASES: dict[str, tuple[bool, Decoding, str]] = {
    # the conv VAE fit autocasts to bf16 on a GPU (tokenizers/_conv_vae.py)
    "tokenizer_fit": (False, Decoding.once, "bf16"),
    "train": (True, Decoding.sharded, "train"),
    "probe": (True, Decoding.sharded, "train"),
    "baselines": (True, Decoding.sharded, "train"),
    "knn": (True, Decoding.once, "fp32"),  # decodes nothing: it reads the cached features
    "fid_reference": (True, Decoding.sharded, "fp32"),
    "fid_sampling": (True, Decoding.sharded, "train"),  # decodes no image from disk
}


# -- FLOPs of the phases (the modules' own counts: runner/flops.py) ------------------------------------------------


def training_flops(r: Recipe) -> float:
    """Pre-training the denoiser: 3 x forward per image seen, plus encoding the images (once for an in-memory set
    without augmentation, every epoch otherwise)."""
    n = split_sizes(r)[0]
    seen = (n // r.train.batch_size) * r.train.batch_size * r.train.epochs
    return 3 * recipe_forward_flops(r) * seen + encode_flops(r) * (n if encoded_once(r) else seen)


def encoded_once(r: Recipe) -> bool:
    """Does the training encode each image once (latents stored), rather than every epoch? In-memory sets under
    the center crop always; a streamed one also needs STREAMED_LATENTS_ONCE and an objective that reads no image
    patches (cell/train.py setup_training: the stored latents hold no patches)."""
    if r.data.augment.value != "center_crop":
        return False
    return not streamed(r) or (STREAMED_LATENTS_ONCE and not reads_patches(r))


def reads_patches(r: Recipe) -> bool:
    """Does the training read the images' patches besides their latents (cell/train.py want_patches)?"""
    return r.objective.target == Target.image or r.objective.input_space == Space.image


def evaluation_flops(r: Recipe, *, with_fid_reference: bool = True, with_baselines: bool = True) -> float:
    """Evaluating a trained network: probe features (encoder blocks only) of the train and test images, kNN, the
    random-init baselines, FID (sampling, decoding, Inception on the samples and, unless cached, the reference).
    The sum of `evaluation_phases`."""
    parts = evaluation_phases(r)
    skip = {"fid_reference"} if not with_fid_reference else set()
    if not with_baselines:
        skip.add("baselines")
    return sum(w.flops for name, w in parts.items() if name not in skip)


@dataclass(frozen=True)
class Work:
    """What one phase of one cell does: FLOPs, and images decoded from a streamed set (`random_crop` of them with
    MAE's RandomResizedCrop + flip, the rest with the center crop)."""

    flops: float = 0.0
    decoded: float = 0.0
    random_crop: float = 0.0


def probe_passes(r: Recipe) -> tuple[int, int]:
    """(images through the encoder, of which random-resized-cropped) of one probe under the cell's protocol: cached
    features (train + test); the augmented probe re-encodes a crop of every train image each epoch, then the test set
    and the un-augmented train set once more (eval/probe.py linear_probe_augmented_data)."""
    n_tr, n_te = split_sizes(r)
    pc = r.probe
    if not pc.augment:
        return n_tr + n_te, 0
    return (pc.epochs + 1) * n_tr + n_te, pc.epochs * n_tr


def evaluation_phases(r: Recipe) -> dict[str, Work]:
    """The evaluation of one cell, phase by phase (cell/probing.py probe_cell, cell/baselines.py, cell/generate.py)."""
    n_tr, n_te = split_sizes(r)
    depth = probe_depth(r)
    per_image = recipe_forward_flops(r, blocks=depth) + encode_flops(r)
    pc = r.probe
    images, crops = probe_passes(r)
    cached = n_tr + n_te  # the cached features of the cell's probe t (kNN and the un-augmented probe read them)
    probe_images = cached + (images if pc.augment else 0)
    probe_crops = crops if pc.augment else 0
    if pc.t < 0 and r.noise.levels == NoiseLevels.single:  # also probed at the paper's t = 10 (cell/probing.py)
        probe_images += n_tr + n_te
    if pc.pool2x2:  # the 2 x 2-pooled features: one more pass over each split (cell/probing.py)
        probe_images += n_tr + n_te
    out = {"probe": Work(per_image * probe_images, probe_images, probe_crops)}
    # the random-init and random-network encoders under the cell's probe protocol, and the raw pixels (no FLOPs
    # counted: a pooling): each reads the images once more under the augmented probe (fresh crops per baseline),
    # all three from one shared pass over each split without it (cell/baselines.py share_passes)
    decoded = 3 * images if pc.augment else images
    out["baselines"] = (Work(2 * per_image * images, decoded, 3 * crops) if pc.baselines else Work())
    width = MODEL_SIZES[r.model.size.value].width
    out["knn"] = Work(2 * n_tr * n_te * width)  # the similarities, on the cached features
    if r.fid.enabled:
        guided = 2 if r.model.class_cond and r.fid.guidance_scale != 1.0 else 1
        decode = conv_vae_flops(r)[1] if r.tokenizer.name == TokenizerName.conv_vae else 0.0
        n = r.fid.num_samples
        ref = fid_reference_images(r)
        out["fid_reference"] = Work(ref * INCEPTION_FLOPS, ref)
        out["fid_sampling"] = Work(n * (r.fid.steps * guided * recipe_forward_flops(r) + decode + INCEPTION_FLOPS))
    return out


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
    knobs = {k: getattr(r.tokenizer, k) for k in TOKENIZER_KNOBS[r.tokenizer.name.value]}
    return f"{r.tokenizer.name.value}|{sorted(knobs.items())}|{r.data_key()}|{r.data.image_size}|{r.channels}|{r.seed}"


# -- rates ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rate:
    """FLOP/s of one device of `kind` ("cpu": the whole machine; "cuda": one GPU) and a fixed cost per cell.

    With `gpu` set (the default for "cuda"), a phase's rate is that GPU's peak for the phase's precision times the
    assumed MFU (`phase_flops_per_s`), and `flops_per_s` is the bf16 rate of a paper-size model, for display."""

    flops_per_s: float
    fixed_s: float
    kind: str
    source: str  # how the numbers were obtained, printed with the estimate
    measured: bool
    gpu: GpuPeak | None = None


def gpu_peak(name: str | None) -> tuple[GpuPeak, bool]:
    """(peaks, known) for a device name; the DEFAULT_GPU's when the name is None or in no row of GPU_PEAKS."""
    if name:
        for k, peak in GPU_PEAKS.items():
            if k.lower() in name.lower():
                return peak, True
    return GPU_PEAKS[DEFAULT_GPU], False


def detect_gpu_name() -> str | None:
    """The first visible GPU's name from nvidia-smi (no torch import: the dry run stays fast); None without one."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0].strip() if out.strip() else None


def default_rate(kind: str, gpu_name: str | None = None) -> Rate:
    if kind == "cuda":
        peak, known = gpu_peak(gpu_name)
        why = "no GPU visible here" if not gpu_name else f"{gpu_name} is in no row of GPU_PEAKS"
        which = f"{gpu_name} (its peaks: {peak.name})" if known else f"{peak.name} assumed ({why})"
        return Rate(peak.bf16 * 1e12 * ASSUMED_MFU["paper"], CUDA_FIXED_S, kind,
                    f"{which}: peak bf16 {peak.bf16:g} / TF32 {peak.tf32:g} TFLOP/s ({peak.source}) x MFU assumed, "
                    f"not measured: {ASSUMED_MFU['paper']:.0%} for paper-size DiTs, {ASSUMED_MFU['small']:.0%} for "
                    "small ones (benchmarks/bench_gpu.py measures it; --rate TFLOPS to use a measured one)",
                    measured=False, gpu=peak)
    return Rate(CPU_FLOPS_PER_S, CPU_FIXED_S, kind, "measured on one core of a 2-core x86_64 VM (BENCHMARKS.md "
                "section 11), not on this machine", measured=True)


def phase_flops_per_s(rate: Rate, r: Recipe, precision: str) -> float:
    """FLOP/s of one device for a phase of `r` in `precision` ("train": the recipe's train.precision, bf16 under
    `auto` on a GPU as cell/build.py mixed_precision; "bf16"; "fp32": TF32 tensor cores, as run_cell allows them)."""
    if rate.gpu is None:
        return rate.flops_per_s
    mfu = ASSUMED_MFU["paper" if r.model.size.value in PAPER_SIZES else "small"]
    half = precision == "bf16" or (precision == "train" and r.train.precision.value in ("auto", "bf16", "fp16"))
    return (rate.gpu.bf16 if half else rate.gpu.tf32) * 1e12 * mfu


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


# -- estimates: the plan --------------------------------------------------------------------------------------------
@dataclass
class PhaseTime:
    """One phase summed over a grid's cells, in wall seconds of the run (the slots working side by side)."""

    seconds: float = 0.0  # sum over cells of max(compute, data)
    compute_seconds: float = 0.0
    data_seconds: float = 0.0
    flops: float = 0.0
    decoded: float = 0.0  # images decoded, summed over the cell's processes

    @property
    def bound(self) -> str:
        return "data" if self.data_seconds > self.compute_seconds else "compute"


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
    seconds: float  # total: the phases + the fixed cost per cell, at least the longest chain (`critical_seconds`)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, PhaseTime] = field(default_factory=dict)
    critical_seconds: float = 0.0  # the longest training + its slowest cell's evaluation: no slot can split it
    jobs: list[float] = field(default_factory=list)  # wall s of each training group on one slot (a SLURM job)
    longest_eval_seconds: float = 0.0  # one cell's evaluation, which a requeue restarts from the beginning
    longest_training_seconds: float = 0.0  # one training (and its tokenizer fit) on one slot


def decode_cores(r: Recipe, cpus_per_process: int | None) -> int:
    """Cores decoding for one process: its DataLoader workers (data.num_workers; 0: the process itself), at most
    the CPUs it has less one for the process itself."""
    workers = max(1, r.data.num_workers)
    return workers if cpus_per_process is None else max(1, min(workers, cpus_per_process - 1))


def streamed(r: Recipe) -> bool:
    return r.data.name.value == "imagefolder"


def phase_time(name: str, w: Work, r: Recipe, *, rate: Rate, capacity: float, procs: int,
               cpus_per_process: int | None) -> tuple[float, float]:
    """(compute s, data s) of one phase of one cell on a slot of `capacity` devices run by `procs` processes."""
    compute_sharded, decoding, precision = PHASES[name]
    devices = capacity if compute_sharded else capacity / procs
    compute = w.flops / (phase_flops_per_s(rate, r, precision) * devices) if w.flops else 0.0
    if not streamed(r) or not w.decoded:
        return compute, 0.0
    per_core = ((w.decoded - w.random_crop) / DECODE_RATES["center_crop"]
                + w.random_crop / DECODE_RATES["random_resized_crop"])
    data = per_core / decode_cores(r, cpus_per_process) / (procs if decoding == Decoding.sharded else 1)
    return compute, data


def estimate_grids(grids: Sequence[tuple[str, str | None, Sequence[Any], Sequence[Any]]], *, trained: set[str],
                   rate: Rate, devices: int, slots: int, procs_per_cell: int | None = None,
                   cpus_per_process: Sequence[int | None] | None = None) -> list[GridEstimate]:
    """Estimates of grids run one after the other: (name, profile, selected cells, cells that would run) each.

    A training is costed once, by the first cell that needs it, and not at all when `trained` (the store) has it;
    a tokenizer fit, an FID reference and a baseline likewise once (they are cached). Each phase of each cell takes
    the larger of its compute time (FLOPs over the devices that run it: the cell's `procs_per_cell` processes for a
    sharded phase, one otherwise; see PHASES) and its data time (images decoded over DECODE_RATES x the decoding
    cores of a process). The `slots` run cells side by side, each with `devices` / `slots` devices; a grid takes
    its cells' time over the slots, but at least its longest chain (a training then its slowest cell's
    evaluation), plus the fixed cost per cell spread over the slots. `cpus_per_process`: per grid, the CPUs of one
    process (a SLURM job's CPUs over its processes), None where only data.num_workers bounds the decoding cores."""
    slots = max(slots, 1)
    procs = procs_per_cell or max(1, devices // slots)
    capacity = max(devices, 1) / slots  # devices of one slot (a fraction when cells share a GPU)
    seen = _Made(set(trained))
    return [_estimate_grid(name, profile, cells, todo, seen, trained=trained, rate=rate, capacity=capacity,
                           procs=procs, slots=slots, cpus=cpus_per_process[gi] if cpus_per_process else None)
            for gi, (name, profile, cells, todo) in enumerate(grids)]


@dataclass
class _Made:
    """What the grids before (or the store) made already: each is costed once."""

    made: set[str]  # train_keys
    fitted: set[str] = field(default_factory=set)  # tokenizer identities
    refs: set[str] = field(default_factory=set)  # FID references
    baselines: set[str] = field(default_factory=set)
    stored: set[str] = field(default_factory=set)  # streamed sets' latents an earlier training stored (cell/latents.py)


def _estimate_grid(name: str, profile: str | None, cells: Sequence[Any], todo: Sequence[Any], seen: _Made, *,
                   trained: set[str], rate: Rate, capacity: float, procs: int, slots: int, cpus: int | None
                   ) -> GridEstimate:
    """One grid of `estimate_grids`."""
    made, fitted, stored = seen.made, seen.fitted, seen.stored
    flops = 0.0
    own, shared, notes = set[str](), set[str](), set[str]()
    phases: dict[str, PhaseTime] = {}
    chains: dict[str, float] = {}  # train_key -> its training's wall s (0 when made before)
    evals: dict[str, list[float]] = {}  # train_key -> each cell's evaluation wall s

    def add(phase: str, w: Work, r: Recipe) -> float:
        c, d = phase_time(phase, w, r, rate=rate, capacity=capacity, procs=procs, cpus_per_process=cpus)
        p = phases.setdefault(phase, PhaseTime())
        p.seconds += max(c, d)
        p.compute_seconds += c
        p.data_seconds += d
        p.flops += w.flops
        p.decoded += w.decoded * (procs if PHASES[phase][1] == Decoding.each else 1)
        return max(c, d)

    for c in todo:
        r: Recipe = c.recipe
        if streamed(r) and not (r.data.train_size and r.data.test_size):
            notes.add("image folder assumed ImageNet-1k size (1,281,167 / 50,000 images)")
        tk = c.train_key
        chain = 0.0
        # the tokenizer's sample is decoded only to fit it (cell/run.py run_cell): a cached one reads none
        sample = Work()
        tok = tokenizer_identity(r)
        if tk not in made and tok not in fitted:
            fitted.add(tok)
            sample = Work(tokenizer_fit_flops(r), min(split_sizes(r)[0], TOKENIZER_SAMPLE) if streamed(r) else 0.0)
        chain += add("tokenizer_fit", sample, r)
        if tk not in made:
            made.add(tk)
            own.add(tk)
            tw = Work(training_flops(r), training_images(r) if streamed(r) else 0.0)
            if streamed(r) and encoded_once(r):  # latents keyed by the images and the tokenizer
                if tokenizer_identity(r) in stored:  # read from disk: nothing decoded or encoded
                    tw = Work(tw.flops - encode_flops(r) * split_sizes(r)[0], 0.0)
                stored.add(tokenizer_identity(r))
            flops += tw.flops + sample.flops
            chain += add("train", tw, r)
        elif tk not in trained and tk not in own:
            shared.add(tk)
        chains[tk] = max(chains.get(tk, 0.0), chain)
        flops, ev = _evaluation(r, seen, add, flops)
        evals.setdefault(tk, []).append(ev)
    busy = sum(p.seconds for p in phases.values())
    critical = max((chains[k] + max(v) for k, v in evals.items()), default=0.0)
    jobs = [chains[k] + sum(v) for k, v in evals.items()]
    seconds = max(busy / slots, critical) + len(todo) * rate.fixed_s / slots
    for p in phases.values():  # in wall seconds of the run: the slots share the work
        p.seconds /= slots
        p.compute_seconds /= slots
        p.data_seconds /= slots
    if critical > busy / slots:
        notes.add("bound by its longest chain (one training and its slowest cell), not by the slots")
    return GridEstimate(name, profile, len(cells), len(cells) - len(todo), len(todo),
                        len(own) + len(shared), len(shared), flops, seconds, sorted(notes), phases,
                        critical, jobs, max((x for v in evals.values() for x in v), default=0.0),
                        max(chains.values(), default=0.0))


def _evaluation(r: Recipe, seen: _Made, add: Callable[[str, Work, Recipe], float], flops: float
                ) -> tuple[float, float]:
    """(`flops` + its FLOPs, wall s) of one cell's evaluation; an FID reference or baseline made before is free."""
    ev = 0.0
    for phase, w in evaluation_phases(r).items():
        if phase == "fid_reference":
            ref = fid_reference_key(r)
            if ref in seen.refs:
                continue
            seen.refs.add(ref)
        if phase == "baselines" and w.flops:
            bkey = baseline_identity(r)
            if bkey in seen.baselines:
                continue
            seen.baselines.add(bkey)
        flops += w.flops
        ev += add(phase, w, r)
    return flops, ev


def training_images(r: Recipe) -> float:
    """Images a training decodes: every epoch's pass, or the set once when its latents are stored (`encoded_once`).
    Split over the cell's processes when PHASES shards training's decoding (Decoding.sharded)."""
    n = split_sizes(r)[0]
    return float(n if encoded_once(r) else (n // r.train.batch_size) * r.train.batch_size * r.train.epochs)


def baseline_identity(r: Recipe) -> str:
    """What the baselines' cache reads, short of cell/baselines.py baseline_identity (which needs torch): the images,
    the tokenizer, the model, the spaces, the noise, the probe and the seed; training knobs do not enter it."""
    d = r.to_dict()
    keep = [d["model"], d["noise"], d["probe"], d["objective"]["input_space"], d["objective"]["output_space"]]
    return f"{tokenizer_identity(r)}|{probe_depth(r)}|{r.seed}|{keep}"


def requeues(job_seconds: float, time_min: float) -> int:
    """Requeues a job of `job_seconds` needs at a SLURM time limit of `time_min` minutes (0: it fits in one)."""
    return max(0, math.ceil(job_seconds / (time_min * 60)) - 1)


# -- SLURM sizing -----------------------------------------------------------------------------------------------------
# A job is one training group on --gpus-per-cell GPUs (runner/slurm.py), one process per GPU; sized here per GPU
# (`cpus_per_gpu`, `mem_gb_per_gpu`: a job gets them x its GPUs). CPUs: at most a GPU's share of an 8-GPU node:
# NVIDIA DGX H100 (user guide: 2 x Xeon Platinum 8480C, 56 cores each) has 112 cores, 14 per GPU.
CPUS_PER_GPU_MAX = 14
SLURM_TIME_MIN = 2880  # 48 h: a common cluster maximum per job; longer when one cell's evaluation needs it
PREFETCH_FACTOR = 2  # torch DataLoader's default: batches each worker holds ready
HOST_BASE_GB = 2.0  # a process's own: Python, torch, CUDA's host side (assumed, not measured)


def slurm_sizing(recipes: Sequence[Recipe], *, rate: Rate | None = None) -> dict[str, Any]:
    """`[slurm]` options per GPU of the jobs of these recipes (a grid's cells under one profile; a job of N GPUs
    runs N processes and gets N x cpus_per_gpu CPUs, N x mem_gb_per_gpu GB), by this module's plan:

    * cpus_per_gpu: the decoding cores that keep every phase of every recipe compute-bound on its GPU (data time
      at one core over compute time), at most CPUS_PER_GPU_MAX less one, plus one for the process itself;
    * mem_gb_per_gpu: 1.25 x the largest host memory of one process: its own (HOST_BASE_GB), the DataLoader's
      prefetched uint8 training batches (workers x PREFETCH_FACTOR), the probe's cached float32 features (train +
      test x width), and a checkpoint's host copy (model, EMA and AdamW's two moments in float32);
    * time: SLURM_TIME_MIN, or 1.25 x the longest evaluation of one cell when that is longer (an evaluation is not
      checkpointed: a requeue restarts it), in whole hours;
    * max_requeues: the requeues the longest training group needs at that time, plus one for a preemption."""
    rate = rate or default_rate("cuda")
    need = 1
    jobs = evals = 0.0
    for r in recipes:
        work = {"tokenizer_fit": Work(tokenizer_fit_flops(r), min(split_sizes(r)[0], TOKENIZER_SAMPLE)),
                "train": Work(training_flops(r), training_images(r)), **evaluation_phases(r)}
        times = {k: phase_time(k, w, r, rate=rate, capacity=1, procs=1, cpus_per_process=2) for k, w in work.items()}
        for c, d in times.values():
            if streamed(r) and d > 0:
                need = max(need, math.ceil(d / c)) if c > 0 else need  # a phase of no FLOPs: data-bound anyway
        cores = min(need, CPUS_PER_GPU_MAX - 1)
        wall = {k: max(c, d / cores) for k, (c, d) in times.items()}
        ev = sum(v for k, v in wall.items() if k not in ("tokenizer_fit", "train"))
        evals = max(evals, ev)
        jobs = max(jobs, wall["tokenizer_fit"] + wall["train"] + ev)
    cores = min(need, CPUS_PER_GPU_MAX - 1)
    mem = max((host_memory_gb(r, cores) for r in recipes), default=HOST_BASE_GB)
    time_min = max(SLURM_TIME_MIN, math.ceil(1.25 * evals / 3600) * 60)
    return {"cpus_per_gpu": cores + 1, "mem_gb_per_gpu": float(math.ceil(1.25 * mem)), "time": time_min,
            "max_requeues": requeues(jobs, time_min) + 1}


def host_memory_gb(r: Recipe, workers: int) -> float:
    """Host memory of one process of `r` with `workers` DataLoader workers (see slurm_sizing), GB."""
    n_tr, n_te = split_sizes(r)
    spec = MODEL_SIZES[r.model.size.value]
    batch = (r.train.micro_batch_size or r.train.batch_size) * r.channels * r.data.image_size ** 2  # uint8
    loader = workers * PREFETCH_FACTOR * batch if streamed(r) else 0
    features = 4 * (n_tr + n_te) * spec.width
    tokens, in_dim, out_dim = model_shape(r)
    params = dit_parameters(r.model.size.value, tokens=tokens, in_dim=in_dim, out_dim=out_dim,
                            cond_mlp_ratio=r.model.cond_mlp_ratio)
    return HOST_BASE_GB + (loader + features + 4 * 4 * params) / 1e9


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
