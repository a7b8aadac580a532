"""The frozen, typed recipe of one cell: every knob of the l-DAE paper, with defaults and cross-field checks.

Knob names are the grid language: a grid sets `tokenizer.latent_dim = 32`, which is the field `latent_dim` of
`Recipe.tokenizer`. Defaults are the paper's where it gives one (arXiv 2401.14404, cited per field as "paper"),
DiT's or MAE's reference code where the paper is silent, and small-scale choices otherwise (said so).
This module imports no torch so that `sweepdae plan` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sweepdae.errors import RecipeError
from sweepdae.noise_levels import closest_t, noise_to_signal
from sweepdae.utils import plain

# Bump when the meaning of an existing knob changes, so old cells are not mistaken for new ones.
# 2: keys split into a training identity (`train_key`) and an evaluation key over resolved values.
# 3: latent_scale defaults to "global" (PCA through V and V^T, as the paper); pca_whiten merged into it;
#    probe.t = -1 (auto) probes a single-level model at its own t; 28 px sets reach 32 px by zero-padding;
#    VAE tokenizers train the denoiser on posterior samples (latent scale fitted on samples).
RECIPE_SCHEMA_VERSION = 3


class DatasetName(str, Enum):
    digits = "digits"
    fashion_mnist = "fashion-mnist"
    mnist = "mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagefolder = "imagefolder"
    synthetic = "synthetic"  # random class-structured images; for tests and benchmarks only


# Channels each dataset has on disk; lets grid validation check d <= D before any data is loaded.
NATIVE_CHANNELS = {"digits": 1, "fashion-mnist": 1, "mnist": 1, "cifar10": 3, "cifar100": 3, "imagefolder": 3,
                   "synthetic": 3}


# Side of each dataset's images on disk (None: it varies, e.g. an image folder), for `image_fit`.
NATIVE_SIZE: dict[str, int | None] = {"digits": 8, "fashion-mnist": 28, "mnist": 28, "cifar10": 32, "cifar100": 32,
                                      "imagefolder": None, "synthetic": None}
# A target at most this many pixels per side larger than the native size is reached by zero-padding, as LeNet-5 read
# MNIST's 28 px digits padded to 32 px (LeCun et al. 1998), not by resizing: no interpolated pixels.
MAX_PAD = 4


def image_fit(name: str, image_size: int) -> tuple[str, int]:
    """How a dataset's images reach `image_size`: ("same", 0), ("pad", px per side), ("down", 0) a smaller
    resize, ("up", 0) an upsampling resize, or ("resize", 0) when the native size varies (image folders)."""
    native = NATIVE_SIZE.get(name)
    if native is None:
        return "resize", 0
    if image_size == native:
        return "same", 0
    if image_size < native:
        return "down", 0
    gap = image_size - native
    if gap % 2 == 0 and gap // 2 <= MAX_PAD:
        return "pad", gap // 2
    return "up", 0


class TokenizerName(str, Enum):
    pixel = "pixel"
    patch_pca = "patch_pca"
    patch_ae = "patch_ae"
    patch_vae = "patch_vae"
    conv_vae = "conv_vae"


class ScheduleName(str, Enum):
    ddpm_linear = "ddpm_linear"  # paper Sec. 4.1 / DDPM: beta linear 1e-4 -> 0.02 over 1000 steps
    linear_gamma2 = "linear_gamma2"  # paper Tab. 1 last row: gamma^2 linear from 1 to 0
    sigma_linear = "sigma_linear"  # paper Tab. 3 "remove input scaling": gamma = 1, sigma linear 0 -> sqrt(2)


class NoiseLevels(str, Enum):
    multi = "multi"  # t drawn uniformly from the schedule (paper default)
    single = "single"  # one fixed level (paper Sec. 5 "single noise level")


class ModelSize(str, Enum):
    # The paper's three encoders keep their ratios at small scale: ViT-B is 3/4 the width of ViT-1/2L (768 vs
    # 1024), ViT-L twice its depth (24+24 vs 12+12 blocks). micro / tiny stand for ViT-1/2L in the smoke / demo
    # profiles; *_b and *_l are their ViT-B and ViT-L (MODEL_SIZES below).
    micro_b = "micro_b"
    micro = "micro"
    micro_l = "micro_l"
    tiny_b = "tiny_b"
    tiny = "tiny"
    tiny_l = "tiny_l"
    small = "small"
    base = "base"
    half_large = "half_large"
    large = "large"


class Target(str, Enum):
    eps = "eps"  # predict the noise (DiT baseline)
    z0 = "z0"  # predict the clean latent (paper Tab. 3 "predict clean data")
    image = "image"  # predict the original image, weighted residual on the full PCA basis (paper Tab. 3 last row)


class Space(str, Enum):
    latent = "latent"
    image = "image"  # through the inverse PCA (paper Tab. 3 "image input/output via inv. PCA")


class LossWeight(str, Enum):
    auto = "auto"  # paper: 1 for eps; gamma_t^2 for clean targets; 1/(1+sigma_t^2) without input scaling
    uniform = "uniform"
    gamma2 = "gamma2"
    inv_1p_sigma2 = "inv_1p_sigma2"


class Augment(str, Enum):
    center_crop = "center_crop"  # paper default
    random_resized_crop = "random_resized_crop"  # paper Sec. 5 "augmentation"


class Precision(str, Enum):
    auto = "auto"  # bf16 on GPU, fp32 on CPU (bf16 measured ~14x slower than fp32 on a 2-core CPU)
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ProbeOptimizer(str, Enum):
    sgd = "sgd"
    lars = "lars"  # MAE's linear-probe optimizer


class Sampler(str, Enum):
    auto = "auto"  # DDPM ancestral for variance-preserving schedules, DDIM for sigma_linear
    ddpm = "ddpm"
    ddim = "ddim"
    euler = "euler"


# -- bounds of the numeric knobs -----------------------------------------------------------------------------------
# Every int and float knob has a range, checked where a value first enters (`coerce_knob`: grid files, tune ranges,
# recipe.json), so that an absurd value (a 4,000-digit epoch count, 10^18 noise steps) is one error line at plan time,
# not an OverflowError in a dry run or a job that never ends. The ranges are generous: far beyond the paper's scale
# (ImageNet: 1.28M images, 400-800 epochs, T = 1000 noise steps, batch 2048-4096, probe batch 16384, 50k FID samples).
class Bounds(typing.NamedTuple):
    lo: float
    hi: float
    lo_open: bool = False  # lo itself is refused (a learning rate of 0 learns nothing)
    hi_open: bool = False

    def __contains__(self, v: object) -> bool:
        x = typing.cast(float, v)
        return (self.lo < x if self.lo_open else self.lo <= x) and (x < self.hi if self.hi_open else x <= self.hi)

    def describe(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else repr(x)

        return f"{'>' if self.lo_open else '>='} {num(self.lo)} and {'<' if self.hi_open else '<='} {num(self.hi)}"


_T = typing.TypeVar("_T")


def _in(default: _T, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> _T:
    """A dataclass field whose value must lie in [lo, hi] (an open end excludes it)."""
    return typing.cast(_T, field(default=default, metadata={"bounds": Bounds(lo, hi, lo_open, hi_open)}))


@dataclass(frozen=True)
class DataConfig:
    name: DatasetName = DatasetName.fashion_mnist
    root: str = ""  # folder holding the files; "" = the registry's default locations
    image_size: int = _in(32, 1, 4096)  # resized square side (paper: 256)
    channels: int = _in(0, 0, 3)  # 0 = keep the data's channels; 1 or 3 converts
    train_size: int = _in(0, 0, 100_000_000)  # 0 = the whole train split; else a deterministic subset
    test_size: int = _in(0, 0, 100_000_000)  # 0 = the whole test split
    augment: Augment = Augment.center_crop  # training augmentation (paper: center crop; random crop +0.5)
    num_workers: int = _in(4, 0, 1024)  # loader processes for streamed (imagefolder) data


@dataclass(frozen=True)
class TokenizerConfig:
    name: TokenizerName = TokenizerName.patch_pca
    patch_size: int = _in(8, 1, 1024)  # pixels per token side for patch tokenizers (paper: 16 on 256 px -> 256 tokens)
    latent_dim: int = _in(16, 1, 65_536)  # d per token (paper Tab. 2: 8..128; pixel tokenizer ignores it, d = C*p*p)
    # PCA (paper: "eigen-basis of randomly sampled patches"; count and centering unspecified). Not whitened: the
    # paper maps through V and back through V^T (V V^T = I); `latent_scale = "per_dim"` is the whitening ablation.
    pca_num_patches: int = _in(100_000, 1, 100_000_000)
    pca_center: bool = True
    # patch AE / VAE and conv VAE training (unspecified in the paper; small-scale defaults)
    fit_epochs: int = _in(5, 0, 100_000)
    fit_batch_size: int = _in(256, 1, 1_000_000)
    fit_lr: float = _in(1e-3, 0, 10, lo_open=True)
    # VAE KL weight (unspecified; LDM's KL-f8 uses 1e-6 with a perceptual loss). Exactly: the fit loss adds
    # kl_weight x KL / D, where KL = KL(q(z|x) || N(0, I)) in nats summed over one token's d latent values and
    # averaged over tokens and images (the `kl_per_token_nats` a cell records), and D = C*H*W / N the pixel values
    # per token, to a reconstruction term averaged per pixel value in [-1, 1] (patch VAE: MSE; conv VAE: L1). That
    # is LDM's balance (per-image sums of reconstruction + kl_weight x KL) divided by C*H*W: 1e-4 at D = 64 costs
    # 1.6e-6 per nat per token, e.g. 20 nats/token cost 3.1e-5 of loss, beside a reconstruction error per value.
    kl_weight: float = _in(1e-4, 0, 1e6)
    # conv VAE (paper Tab. 1: recon + KL, optionally + perceptual + adversarial, as VQGAN)
    conv_downsample: int = _in(4, 1, 1024)  # stride of the conv encoder (paper: 8 on 256 px)
    conv_group: int = _in(2, 1, 1024)  # DiT groups g x g latent pixels per token (paper: 2), tokens = (H/(down*g))^2
    conv_channels: int = _in(64, 1, 65_536)
    perceptual_weight: float = _in(0.0, 0, 1e6)  # VQGAN uses 1.0 (taming-transformers LPIPSWithDiscriminator)
    perceptual_net: str = "efficientnet_lite0"  # VGG weights are not offline; any supervised ImageNet net
    adversarial_weight: float = _in(0.0, 0, 1e6)  # VQGAN's disc_weight; 0.5 in taming configs
    # One scalar for the whole latent, as LDM's `scale_factor` (paper: patch PCA is V alone, each component keeping
    # its own variance against one sigma; Tab. 2 compares tokenizers at one sigma). "per_dim" divides every
    # latent dim by its own RMS (for PCA: whitening, the same SNR for every component), an ablation; "none" off.
    latent_scale: str = "global"  # global | per_dim | none


@dataclass(frozen=True)
class NoiseConfig:
    schedule: ScheduleName = ScheduleName.ddpm_linear
    num_steps: int = _in(1000, 1, 100_000)  # paper / DDPM: T = 1000
    levels: NoiseLevels = NoiseLevels.multi
    # paper Sec. 5 single level (v1 text lost the radical)
    single_sigma: float = _in(math.sqrt(1.0 / 3.0), 0, 1e4, lo_open=True)


@dataclass(frozen=True)
class ModelConfig:
    size: ModelSize = ModelSize.micro
    class_cond: bool = False  # paper Tab. 1: DiT baseline is class-conditional; l-DAE is not
    # adaLN conditioning MLP hidden size / width: the paper's DiT shrinks it to 1/4 (docs/paper.md#architecture); one
    # value for every table, since Tab. 1's last row is a run of Tab. 2 and Tab. 2's PCA d=32 Tab. 3's first
    cond_mlp_ratio: float = _in(0.25, 0, 64, lo_open=True)
    adaln_zero: bool = True  # DiT's zero-initialised adaLN gates (paper silent; DiT keeps them)
    encoder_depth: int = _in(0, 0, 1024)  # 0 = first half of the blocks (paper: equal halves are best)
    fused_attn: bool = True  # scaled_dot_product_attention
    class_dropout: float = _in(0.1, 0, 1)  # label dropout for classifier-free guidance (DiT's class_dropout_prob)


@dataclass(frozen=True)
class ObjectiveConfig:
    target: Target = Target.eps
    input_space: Space = Space.latent
    output_space: Space = Space.latent
    loss_weight: LossWeight = LossWeight.auto
    residual_weight: float = _in(0.1, 0, 1e6)  # paper Tab. 3: w_i = 0.1 for PCA components beyond d


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _in(10, 1, 100_000)  # paper: 400
    batch_size: int = _in(256, 1, 10_000_000)  # effective batch (paper: 2048)
    micro_batch_size: int = _in(0, 0, 10_000_000)  # 0 = batch_size; smaller means gradient accumulation
    base_lr: float = _in(1e-4, 0, 100, lo_open=True)  # paper: lr = 1e-4 x batch / 256
    warmup_epochs: float = _in(1.0, 0, 100_000)  # paper: 100 of 400
    weight_decay: float = _in(0.0, 0, 100)  # paper
    beta1: float = _in(0.9, 0, 1, lo_open=True, hi_open=True)  # DiT's AdamW defaults (paper silent on the optimizer)
    beta2: float = _in(0.999, 0, 1, lo_open=True, hi_open=True)
    ema_decay: float = _in(0.0, 0, 1, hi_open=True)  # 0 = off; DiT uses 0.9999 (paper silent)
    grad_clip: float = _in(0.0, 0, 1e6)  # 0 = off
    precision: Precision = Precision.auto
    compile: bool = False
    checkpoint_every: int = _in(1, 1, 100_000)  # epochs


@dataclass(frozen=True)
class ProbeConfig:
    # the time step the frozen encoder is conditioned on (paper Sec. 4: clean input at t = 10 of 1000). -1 = auto:
    # t = 10, except for a single-noise-level model, which has only ever seen its own t (then t = 10 is also
    # measured, as probe_top1_t10). An explicit t >= 0 is used as given.
    t: int = _in(-1, -1, 100_000)
    noisy_input: bool = False  # paper's fixed-t ablation, noisy column
    depth: int = _in(0, 0, 1024)  # 0 = the encoder's last block (paper: block 12 of 24)
    epochs: int = _in(90, 1, 100_000)  # MAE protocol
    batch_size: int = _in(256, 1, 10_000_000)  # paper: 16384
    optimizer: ProbeOptimizer = ProbeOptimizer.lars  # MAE's linear-probe optimizer
    # lr = base_lr x batch / 256. MAE (and the paper profile) use base_lr 0.1 at batch 16384 (lr 6.4; the paper's text
    # says 6.4e-3). At small scale that many fewer steps underfit: measured on Fashion-MNIST raw pixels (10k/2k,
    # 30 epochs, batch 256) LARS reaches 73.3% at base_lr 0.1, 83.6% at 6.4, logistic regression ~83%; so 6.4 here.
    base_lr: float = _in(6.4, 0, 1e4, lo_open=True)
    lr: float = _in(0.0, 0, 1e4)  # > 0 overrides base_lr scaling (set 6.4e-3 for the paper's stated value)
    augment: bool = False  # RandomResizedCrop + flip, recomputing features every epoch (MAE)
    knn_k: int = _in(20, 1, 100_000)  # kNN probe, cosine similarity
    knn_temperature: float = _in(0.07, 0, 100, lo_open=True)  # InstDisc/DINO weighted vote
    # also probe the same architecture at random init (as training starts it, and with adaLN-Zero off), the raw
    # pixels, and record probe_gain over the better random encoder (sweepdae/cell/baselines.py; cached across cells)
    baselines: bool = False
    # also a linear probe on the tokens average-pooled per 2 x 2 spatial quadrant and concatenated, [B, 4C]
    # (probe_top1_pool2x2; the paper reads only the mean-pooled tokens): shown in reports, never judged
    pool2x2: bool = False


@dataclass(frozen=True)
class FIDConfig:
    enabled: bool = False
    num_samples: int = _in(256, 1, 10_000_000)  # paper scale: 50,000
    sampler: Sampler = Sampler.auto
    steps: int = _in(50, 1, 100_000)  # DiT: 250
    guidance_scale: float = _in(1.0, 0, 100)  # unconditional rows cannot use guidance
    ref_split: str = "train"
    # real images behind the reference statistics; 0 = fid.num_samples (ADM/DiT: whole train set)
    ref_size: int = _in(0, 0, 100_000_000)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what one cell computes; its hash is the cell's identity."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)
    seed: int = _in(0, 0, 2**31 - 1)  # torch, numpy and every RNG here take it as is

    # -- identity ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (path, section, name), value in zip(_KNOB_FIELDS, self._flat().values(), strict=True):
            if section:
                out.setdefault(section, {})[name] = value
            else:
                out[path] = value
        return out

    def train_identity(self) -> dict[str, Any]:
        """The resolved values of exactly what training reads (knob path -> JSON value): training knobs that
        the chosen components read. Runtime-only and evaluation knobs, and knobs of other components (e.g.
        `tokenizer.conv_downsample` for patch PCA), are left out."""
        flat = self._flat()
        return {p: flat[p] for p in _TRAIN_PATHS if _reads(self, p)}

    def eval_identity(self) -> dict[str, Any]:
        """The resolved values of what only evaluation reads (probe, FID, encoder depth, test-set size)."""
        flat = self._flat()
        out = {p: flat[p] for p in _EVAL_PATHS if _reads(self, p)}
        # model.encoder_depth and probe.depth resolve to one number: the block the probe reads after
        out.pop("model.encoder_depth", None)
        out["probe.depth"] = probe_depth(self)
        out["probe.t"] = probe_t(self)
        if self.fid.enabled:
            out["fid.ref_size"] = self.fid.ref_size or self.fid.num_samples
        return out

    # A recipe is frozen, so its flat form and keys are computed once and kept in the instance's __dict__ (not
    # fields: equality, hashing, repr and dataclasses.replace ignore them). Planning 20,000 cells asks each cell's
    # keys several times; recomputing them was 4 ms a cell.
    def train_key(self) -> str:
        """SHA-256 of the training identity: cells with the same train_key share one trained network."""
        cached = self.__dict__.get("_cached_train_key")
        if cached is None:
            cached = self.__dict__["_cached_train_key"] = _sha({"schema": RECIPE_SCHEMA_VERSION,
                                                                "train": self.train_identity()})
        return typing.cast(str, cached)

    def key(self) -> str:
        """The cell's identity: SHA-256 of its train_key and its evaluation identity."""
        cached = self.__dict__.get("_cached_key")
        if cached is None:
            cached = self.__dict__["_cached_key"] = _sha({"schema": RECIPE_SCHEMA_VERSION,
                                                          "train_key": self.train_key(), "eval": self.eval_identity()})
        return typing.cast(str, cached)

    def flat(self) -> dict[str, Any]:
        """Dotted knob path -> JSON value (enums as their string); the values `to_dict` nests."""
        return dict(self._flat())  # a copy: callers may change theirs

    def _flat(self) -> dict[str, Any]:
        cached = self.__dict__.get("_cached_flat")
        if cached is None:
            cached = {}
            for path, section, name in _KNOB_FIELDS:
                cached[path] = _json_value(getattr(getattr(self, section), name) if section else getattr(self, name))
            self.__dict__["_cached_flat"] = cached
        return typing.cast(dict[str, Any], cached)

    # -- derived quantities --------------------------------------------------------------------------------
    @property
    def upsampled(self) -> bool:
        """True when the images are a resize of smaller originals (information the data never had)."""
        return image_fit(self.data.name.value, self.data.image_size)[0] == "up"

    def data_key(self) -> str:
        """What identifies the training images a tokenizer is fitted on: dataset, folder, subset, how it is sized."""
        fit, px = image_fit(self.data.name.value, self.data.image_size)
        return f"{self.data.name.value}:{self.data.root}:{self.data.train_size}:{fit}{px or ''}"

    @property
    def channels(self) -> int:
        """Channels the model sees: data.channels, or the dataset's own when that is 0 ("keep")."""
        return self.data.channels or NATIVE_CHANNELS[self.data.name.value]

    def patch_dim(self, channels: int) -> int:
        """D: values per image patch (paper: 3 x 16 x 16 = 768)."""
        return channels * self.tokenizer.patch_size ** 2

    def num_tokens(self) -> int:
        if self.tokenizer.name == TokenizerName.conv_vae:
            return (self.data.image_size // (self.tokenizer.conv_downsample * self.tokenizer.conv_group)) ** 2
        return (self.data.image_size // self.tokenizer.patch_size) ** 2

    def with_updates(self, updates: dict[str, Any]) -> Recipe:
        return recipe_from_flat({**self.flat(), **updates})


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _json_value(v: Any) -> Any:
    """One knob value as `to_dict` and the keys hold it: `plain` (an enum as its value), a float exactly
    (non-finite as text)."""
    if isinstance(v, float):
        return float(repr(v)) if math.isfinite(v) else repr(v)
    return plain(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, path + ".")
        else:
            yield path, v


# -- knob table: the grid language ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    path: str
    section: str | None
    name: str
    type: Any
    default: Any
    bounds: Bounds | None = None  # int and float knobs: the range a value must lie in

    def describe_type(self) -> str:
        if isinstance(self.type, type) and issubclass(self.type, Enum):
            return "one of " + ", ".join(repr(m.value) for m in self.type)
        return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(self.type,
                                                                                                  str(self.type))


def _knobs() -> dict[str, Knob]:
    out: dict[str, Knob] = {}
    hints = typing.get_type_hints(Recipe)
    for f in dataclasses.fields(Recipe):
        ftype = hints[f.name]
        if dataclasses.is_dataclass(ftype):
            sub_hints = typing.get_type_hints(ftype)
            default_section = typing.cast(Any, ftype)()
            for sf in dataclasses.fields(ftype):
                path = f"{f.name}.{sf.name}"
                out[path] = Knob(path, f.name, sf.name, sub_hints[sf.name], getattr(default_section, sf.name),
                                 sf.metadata.get("bounds"))
        else:
            out[f.name] = Knob(f.name, None, f.name, ftype, f.default, f.metadata.get("bounds"))
    return out


KNOBS: dict[str, Knob] = _knobs()
# (path, section or "", field name) of every knob in field order, and each section's class: read once here, not per
# recipe (typing.get_type_hints per recipe was a third of planning a big grid)
_KNOB_FIELDS: tuple[tuple[str, str, str], ...] = tuple((k.path, k.section or "", k.name) for k in KNOBS.values())
_SECTION_TYPES: dict[str, Any] = typing.get_type_hints(Recipe)


# -- what each knob is for: training identity, evaluation identity, or how a run executes --------------------------
# "train": read by training (data, tokenizer, noise, model, objective, optimiser, seed) -> enters train_key.
# "eval": read only by evaluation (probe, FID, encoder depth, test set) -> enters the cell key beside train_key.
# "runtime": changes how fast or where a cell runs, not what it computes -> enters no key.
# tests/test_keys.py fails on a knob missing here, so a new knob must be classified when it is added.
_TRAIN_KNOBS = (
    "data.name", "data.root", "data.image_size", "data.channels", "data.train_size", "data.augment",
    "tokenizer.name", "tokenizer.patch_size", "tokenizer.latent_dim", "tokenizer.pca_num_patches",
    "tokenizer.pca_center", "tokenizer.fit_epochs", "tokenizer.fit_batch_size",
    "tokenizer.fit_lr", "tokenizer.kl_weight", "tokenizer.conv_downsample", "tokenizer.conv_group",
    "tokenizer.conv_channels", "tokenizer.perceptual_weight", "tokenizer.perceptual_net",
    "tokenizer.adversarial_weight", "tokenizer.latent_scale",
    "noise.schedule", "noise.num_steps", "noise.levels", "noise.single_sigma",
    "model.size", "model.class_cond", "model.cond_mlp_ratio", "model.adaln_zero", "model.class_dropout",
    "objective.target", "objective.input_space", "objective.output_space", "objective.loss_weight",
    "objective.residual_weight",
    "train.epochs", "train.batch_size", "train.base_lr", "train.warmup_epochs", "train.weight_decay", "train.beta1",
    "train.beta2", "train.ema_decay", "train.grad_clip", "train.precision",
    "seed",
)
_EVAL_KNOBS = (
    "data.test_size", "model.encoder_depth",
    "probe.t", "probe.noisy_input", "probe.depth", "probe.epochs", "probe.batch_size", "probe.optimizer",
    "probe.base_lr", "probe.lr", "probe.augment", "probe.knn_k", "probe.knn_temperature", "probe.baselines",
    "probe.pool2x2",
    "fid.enabled", "fid.num_samples", "fid.sampler", "fid.steps", "fid.guidance_scale", "fid.ref_split",
    "fid.ref_size",
)
_RUNTIME_KNOBS = ("data.num_workers", "model.fused_attn", "train.micro_batch_size", "train.compile",
                  "train.checkpoint_every")
KNOB_ROLES: dict[str, str] = {**{p: "train" for p in _TRAIN_KNOBS}, **{p: "eval" for p in _EVAL_KNOBS},
                              **{p: "runtime" for p in _RUNTIME_KNOBS}}
_TRAIN_PATHS = tuple(p for p, role in KNOB_ROLES.items() if role == "train")  # in KNOB_ROLES' order, as before
_EVAL_PATHS = tuple(p for p, role in KNOB_ROLES.items() if role == "eval")

_FIT = ("fit_epochs", "fit_batch_size", "fit_lr")
# The TokenizerConfig knobs each tokenizer reads (the rest belong to other tokenizers); also keys the tokenizer cache.
TOKENIZER_KNOBS: dict[str, tuple[str, ...]] = {
    "pixel": ("patch_size", "latent_scale"),
    "patch_pca": ("patch_size", "latent_dim", "pca_num_patches", "pca_center", "latent_scale"),
    "patch_ae": ("patch_size", "latent_dim", *_FIT, "latent_scale"),
    "patch_vae": ("patch_size", "latent_dim", *_FIT, "kl_weight", "latent_scale"),
    "conv_vae": ("latent_dim", "conv_downsample", "conv_group", "conv_channels", *_FIT, "kl_weight",
                 "perceptual_weight", "perceptual_net", "adversarial_weight", "latent_scale"),
}


def _reads(r: Recipe, path: str) -> bool:
    """Does the recipe's chosen component read this knob? (A knob it never reads drops out of the keys.)"""
    section, _, name = path.partition(".")
    if section == "tokenizer" and name != "name":
        return name in TOKENIZER_KNOBS[r.tokenizer.name.value]
    if path == "noise.single_sigma":
        return r.noise.levels == NoiseLevels.single
    if path == "model.class_dropout":
        return r.model.class_cond
    if path == "objective.residual_weight":
        return r.objective.target == Target.image
    if path == "probe.base_lr":
        return r.probe.lr == 0  # probe.lr > 0 overrides the scaled base lr
    if path == "probe.pool2x2":
        return r.probe.pool2x2  # off, it enters no key: the keys of cells that predate it stay as they were
    if section == "fid" and name != "enabled":
        return r.fid.enabled
    return True


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def coerce_knob(path: str, value: Any) -> Any:
    """Check one knob value's type and registry name; return it in the recipe's type or raise RecipeError."""
    knob = KNOBS.get(path)
    if knob is None:
        raise RecipeError(f"unknown knob {path!r}{suggest(path, KNOBS)}")
    t = knob.type
    if isinstance(t, types.UnionType):  # not used today; kept explicit
        raise RecipeError(f"knob {path!r} has an unsupported type")
    if isinstance(t, type) and issubclass(t, Enum):
        if not isinstance(value, str):
            raise RecipeError(f"{path} must be {knob.describe_type()}, got {value!r}")
        try:
            return t(value)
        except ValueError:
            raise RecipeError(f"{path}: unknown name {value!r}{suggest(value, [m.value for m in t])}; valid: "
                              + ", ".join(m.value for m in t)) from None
    if t is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{path} must be true or false, got {value!r}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{path} must be an integer, got {_shown(value)}")
        _check_bounds(knob, value, "an integer")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{path} must be a number, got {_shown(value)}")
        try:
            x = float(value)
        except OverflowError:  # an int too large for a float
            x = math.inf
        if not math.isfinite(x):
            raise RecipeError(f"{path} must be finite, got {_shown(value)}")
        _check_bounds(knob, x, "a number")
        return x
    if t is str:
        if not isinstance(value, str):
            raise RecipeError(f"{path} must be a string, got {value!r}")
        return value
    raise RecipeError(f"knob {path!r} has an unsupported type {t!r}")


def _check_bounds(knob: Knob, value: float, kind: str) -> None:
    if knob.bounds is not None and value not in knob.bounds:
        raise RecipeError(f"{knob.path} must be {kind} {knob.bounds.describe()}, got {_shown(value)}")


def _shown(value: Any) -> str:
    """A value as an error line shows it: a 4,000-digit number is cut to its ends and its length."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"


def recipe_from_flat(flat: dict[str, Any]) -> Recipe:
    """Build and validate a Recipe from dotted knob paths (missing knobs take their defaults)."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for path, value in flat.items():
        coerced = coerce_knob(path, value)
        knob = KNOBS[path]
        if knob.section is None:
            top[knob.name] = coerced
        else:
            sections.setdefault(knob.section, {})[knob.name] = coerced
    kwargs: dict[str, Any] = dict(top)
    for name, values in sections.items():
        kwargs[name] = _SECTION_TYPES[name](**values)
    recipe = Recipe(**kwargs)
    validate(recipe)
    return recipe


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    """Inverse of Recipe.to_dict (used to load recipe.json files)."""
    return recipe_from_flat(dict(_flatten(d)))


# -- model sizes ------------------------------------------------------------------------------------------------
class ModelSpec(typing.NamedTuple):
    width: int
    depth: int  # encoder + decoder blocks
    heads: int


# The DiT sizes (`sweepdae.models.create_model`); here, without torch, so that grid validation and the dry run's
# cost model (`sweepdae.runner.estimate`) read them while `plan` stays fast.
MODEL_SIZES: dict[str, ModelSpec] = {
    ModelSize.micro_b.value: ModelSpec(96, 6, 3),  # micro at 3/4 width (ViT-B : ViT-1/2L = 768 : 1024), head dim 32
    ModelSize.micro.value: ModelSpec(128, 6, 4),  # CPU-scale smoke model (sweepdae)
    ModelSize.micro_l.value: ModelSpec(128, 12, 4),  # micro at twice the depth (ViT-L : ViT-1/2L = 48 : 24 blocks)
    ModelSize.tiny_b.value: ModelSpec(144, 12, 3),  # tiny at 3/4 width
    ModelSize.tiny.value: ModelSpec(192, 12, 3),  # ViT-Ti width / heads (DeiT)
    ModelSize.tiny_l.value: ModelSpec(192, 24, 3),  # tiny at twice the depth
    ModelSize.small.value: ModelSpec(384, 12, 6),  # ViT-S width / heads (DeiT)
    ModelSize.base.value: ModelSpec(768, 24, 12),  # paper: ViT-B, 12 encoder + 12 decoder blocks
    ModelSize.half_large.value: ModelSpec(1024, 24, 16),  # paper: ViT-1/2L = DiT-L, 12 + 12
    ModelSize.large.value: ModelSpec(1024, 48, 16),  # paper: ViT-L, 24 + 24
}
MODEL_DEPTHS = {name: spec.depth for name, spec in MODEL_SIZES.items()}


# -- cross-field checks -----------------------------------------------------------------------------------------
def validate(r: Recipe) -> None:
    """Impossible combinations raise RecipeError naming the knob(s)."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise RecipeError(msg)

    tk, d = r.tokenizer, r.data
    # each knob's own range (>= 0, > 0, ...) is checked as its value enters (`coerce_knob`, `Bounds`)
    need(d.channels in (0, 1, 3), f"data.channels must be 0 (keep), 1 or 3, got {d.channels}")
    need(tk.latent_scale in ("per_dim", "global", "none"),
         f"tokenizer.latent_scale must be one of 'per_dim', 'global', 'none', got {tk.latent_scale!r}")
    need(r.fid.ref_split in ("train", "test"), f"fid.ref_split must be 'train' or 'test', got {r.fid.ref_split!r}")
    need(r.train.ema_decay < 1.0, f"train.ema_decay must be < 1, got {r.train.ema_decay}")
    need(0.0 < r.train.beta1 < 1.0 and 0.0 < r.train.beta2 < 1.0, "train.beta1/beta2 must be in (0, 1)")
    need(r.train.base_lr > 0, f"train.base_lr must be positive, got {r.train.base_lr}")
    need(r.probe.base_lr > 0, f"probe.base_lr must be positive, got {r.probe.base_lr}")
    need(r.noise.single_sigma > 0, f"noise.single_sigma must be positive, got {r.noise.single_sigma}")
    need(-1 <= r.probe.t < r.noise.num_steps,
         f"probe.t ({r.probe.t}) must be -1 (auto) or in 0..noise.num_steps-1 ({r.noise.num_steps - 1})")
    need(r.model.cond_mlp_ratio > 0, f"model.cond_mlp_ratio must be positive, got {r.model.cond_mlp_ratio}")
    if r.train.micro_batch_size:
        need(r.train.batch_size % r.train.micro_batch_size == 0,
             f"train.batch_size ({r.train.batch_size}) must be a multiple of train.micro_batch_size "
             f"({r.train.micro_batch_size})")
    if tk.name == TokenizerName.conv_vae:
        stride = tk.conv_downsample * tk.conv_group
        need(d.image_size % stride == 0, f"data.image_size ({d.image_size}) must be divisible by "
             f"tokenizer.conv_downsample x tokenizer.conv_group ({stride})")
        need(tk.conv_downsample & (tk.conv_downsample - 1) == 0,
             f"tokenizer.conv_downsample must be a power of two, got {tk.conv_downsample}")
    else:
        need(d.image_size % tk.patch_size == 0, f"data.image_size ({d.image_size}) must be divisible by "
             f"tokenizer.patch_size ({tk.patch_size})")
    if tk.name != TokenizerName.conv_vae:
        need(tk.perceptual_weight == 0 and tk.adversarial_weight == 0,
             "tokenizer.perceptual_weight / adversarial_weight need tokenizer.name = 'conv_vae'")
    if tk.name in (TokenizerName.patch_pca, TokenizerName.patch_ae, TokenizerName.patch_vae):
        need(tk.latent_dim <= r.patch_dim(r.channels),
             f"tokenizer.latent_dim ({tk.latent_dim}) must be <= the patch dimension "
             f"({r.channels} x {tk.patch_size}^2 = {r.patch_dim(r.channels)}) for {tk.name.value}")
    if tk.name == TokenizerName.conv_vae:
        need(tk.latent_dim % tk.conv_group ** 2 == 0,
             f"tokenizer.latent_dim ({tk.latent_dim}) must be a multiple of tokenizer.conv_group^2 "
             f"({tk.conv_group ** 2}) for conv_vae: each token groups conv_group x conv_group latent pixels")
    pca_only = (r.objective.input_space == Space.image or r.objective.output_space == Space.image
                or r.objective.target == Target.image)
    if pca_only:
        need(tk.name == TokenizerName.patch_pca,
             "objective.input_space/output_space = 'image' and objective.target = 'image' go through the inverse "
             f"PCA and need tokenizer.name = 'patch_pca', got {tk.name.value!r}")
    if r.objective.target == Target.image:
        need(r.objective.output_space == Space.image,
             "objective.target = 'image' predicts the original image and needs objective.output_space = 'image'")
    depth = MODEL_DEPTHS[r.model.size.value]
    need(r.model.encoder_depth < depth,
         f"model.encoder_depth ({r.model.encoder_depth}) must be < the model's {depth} blocks")
    need(r.probe.depth <= depth, f"probe.depth ({r.probe.depth}) must be <= the model's {depth} blocks")
    if r.probe.pool2x2:
        need(not r.probe.augment, "probe.pool2x2 reads cached features and cannot be combined with probe.augment")
        need(r.num_tokens() >= 4, f"probe.pool2x2 needs a token grid of at least 2 x 2, got {r.num_tokens()} tokens")
    if r.fid.guidance_scale != 1.0:
        need(r.model.class_cond, "fid.guidance_scale != 1 needs model.class_cond = true "
             "(unconditional rows cannot use guidance)")


def encoder_depth(r: Recipe) -> int:
    return r.model.encoder_depth or MODEL_DEPTHS[r.model.size.value] // 2


def probe_depth(r: Recipe) -> int:
    return r.probe.depth or encoder_depth(r)


PAPER_PROBE_T = 10  # paper Sec. 4: the probe's encoder sees clean input at t = 10 of 1000


def fixed_t(r: Recipe) -> int | None:
    """The one time step a single-noise-level recipe trains at (the t closest to noise.single_sigma); None when
    the recipe trains on every level."""
    if r.noise.levels != NoiseLevels.single:
        return None
    return closest_t(noise_to_signal(r.noise.schedule.value, r.noise.num_steps), r.noise.single_sigma)


def probe_t(r: Recipe) -> int:
    """The t the probe conditions the encoder on: probe.t when given, else 10, or a single-level model's own t."""
    if r.probe.t >= 0:
        return r.probe.t
    own = fixed_t(r)
    return PAPER_PROBE_T if own is None else own


@dataclass(frozen=True)
class ProbeAt:
    """Where a cell's probe reads its encoder, resolved once per probe."""

    depth: int  # the block whose pooled tokens are the features (`probe_depth`)
    t: int  # the time step the encoder is conditioned on (`probe_t`)
    # probe.t = -1 (auto) on a single-level model probes at its own t, and at the paper's t = 10 too
    # (metric probe_top1_t10)
    also_paper_t: bool


def probe_at(r: Recipe) -> ProbeAt:
    """The resolved probe depth and t of the recipe, and whether it is also probed at PAPER_PROBE_T."""
    t = probe_t(r)
    return ProbeAt(depth=probe_depth(r), t=t, also_paper_t=r.probe.t < 0 and t != PAPER_PROBE_T)
