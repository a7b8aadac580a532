"""The paper's reference numbers as data, keyed by a grid's `mirrors` id, and the lookup that matches them.

Source: Chen, Liu, Xie, He, "Deconstructing Denoising Diffusion Models for Self-Supervised Learning"
(arXiv 2401.14404 v1), restated in docs/paper.md. Numbers are ImageNet linear-probe top-1 (%) of ViT-1/2L at
400 epochs unless the table says otherwise, and FID-50K for Tab. 1. Only numbers the paper prints are here:
Fig. 5 gives two (d = 768 -> 23.6 and "best at d = 48"), so the other pixel-tokenizer points stay unknown.

Grids label their axis positions with the paper's values (`labels = ["8", ..., "128"]` while the scaled values
differ), so matching is on labels, never on a profile's values. Trajectory steps match by position, so a grid
may word its step labels freely.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["HEADLINE_FINDINGS", "PAPER", "PAPER_SCALE", "Headline", "PaperRef", "canonical_label", "get_reference",
           "normalize", "paper_value"]

CITE = "Chen et al. 2024"
# The scale every reference number was measured at (docs/paper.md#reference-numbers), shown beside ours.
PAPER_SCALE = "ImageNet 256 px, 16 px patches (256 tokens), ViT-1/2L (DiT-L, 12+12 blocks), 400 epochs, batch 2048"

Key = tuple[str, "str | None"]


@dataclass(frozen=True)
class PaperRef:
    """One table or figure of the paper: values[metric][(row, col)] with col None for one-dimensional ones."""

    id: str
    title: str
    citation: str
    kind: str  # "table" (rows x cols), "list" (one dimension) or "trajectory" (ordered cumulative steps)
    rows: tuple[str, ...]
    cols: tuple[str, ...] = ()
    values: Mapping[str, Mapping[Key, float | None]] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)  # normalize(alias) -> canonical row/col label
    best: tuple[str, ...] = ()  # optimum the paper states without the numbers around it (Fig. 5)
    note: str = ""

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.values)


@dataclass(frozen=True)
class Headline:
    number: int
    text: str
    checks: tuple[str, ...]  # finding names (grid `[report] findings`) that test it


def normalize(label: str) -> str:
    """Case, spaces and punctuation do not matter: "Patch-wise VAE" == "patch_wise_vae" -> "patchwisevae"."""
    return re.sub(r"[^a-z0-9]", "", str(label).lower())


def _aliases(groups: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for canon, names in groups.items():
        for n in (canon, *names):
            out[normalize(n)] = canon
    return out


def _table(rows: tuple[str, ...], cols: tuple[str, ...], grid: list[list[float | None]]) -> dict[Key, float | None]:
    return {(r, c): v for r, line in zip(rows, grid, strict=True) for c, v in zip(cols, line, strict=True)}


def _list(rows: tuple[str, ...], values: tuple[float | None, ...]) -> dict[Key, float | None]:
    return {(r, None): v for r, v in zip(rows, values, strict=True)}


_TOKENIZERS = _aliases({
    "conv_vae": ("conv. VAE", "convolutional VAE", "conv VAE", "vae"),
    "patch_vae": ("patch-wise VAE", "patchwise vae"),
    "patch_ae": ("patch-wise AE", "patchwise ae"),
    "patch_pca": ("patch-wise PCA", "patchwise pca", "pca"),
})
_D = ("8", "16", "32", "64", "128")
_TAB1 = ("DiT baseline", "- class conditioning", "- VQGAN perceptual loss", "- VQGAN adversarial loss",
         "replace noise schedule")
_TAB3 = ("baseline", "predict clean data", "remove input scaling", "image input via inv. PCA",
         "image output via inv. PCA", "predict original image")
_TAB2_ROWS = ("conv_vae", "patch_vae", "patch_ae", "patch_pca")
_PROBE_T = ("0", "10", "20", "40", "80")

PAPER: dict[str, PaperRef] = {r.id: r for r in (
    PaperRef("tab1", "From DiT to a DAE for SSL", f"{CITE}, Tab. 1", "trajectory", _TAB1,
             values={"probe_top1": _list(_TAB1, (57.5, 62.5, 58.4, 59.0, 63.4)),
                     "fid": _list(_TAB1, (11.6, 30.9, 54.3, 75.6, 93.2))},
             note="each row adds to the previous"),
    PaperRef("tab2", "Linear probe vs latent dim per token", f"{CITE}, Tab. 2", "table", _TAB2_ROWS, _D,
             values={"probe_top1": _table(_TAB2_ROWS, _D, [[54.5, 63.4, 62.8, 57.0, 48.1],
                                                           [58.3, 64.9, 64.8, 56.8, None],
                                                           [59.9, 64.7, 64.6, 59.9, None],
                                                           [56.0, 63.4, 65.1, 60.0, 53.9]])},
             aliases=_TOKENIZERS, note="the paper leaves d = 128 empty for the patch-wise VAE and AE"),
    PaperRef("fig5", "Pixel tokenizer: linear probe vs d", f"{CITE}, Fig. 5", "list", ("768", "192", "48", "12"),
             values={"probe_top1": _list(("768",), (23.6,))}, best=("48",),
             note="only d = 768 (23.6) and the optimum d = 48 are stated"),
    PaperRef("tab3", "From a DAE in PCA latent space to l-DAE", f"{CITE}, Tab. 3", "trajectory", _TAB3,
             values={"probe_top1": _list(_TAB3, (65.1, 62.4, 63.6, 63.6, 63.9, 64.5))},
             note="from patch-wise PCA, d = 32; each row adds to the previous"),
    PaperRef("noise_levels", "Single vs multi-level noise", f"{CITE}, Sec. 5", "list", ("single", "multi"),
             values={"probe_top1": _list(("single", "multi"), (61.5, 64.5))},
             aliases=_aliases({"single": ("single level", "single noise level", "one level", "fixed"),
                               "multi": ("multi-level", "multi level", "multiple levels", "schedule")})),
    PaperRef("augmentation", "Data augmentation", f"{CITE}, Sec. 5", "list", ("center_crop", "random_crop"),
             values={"probe_top1": _list(("center_crop", "random_crop"), (64.5, 65.0))},
             aliases=_aliases({"center_crop": ("center", "centre crop", "none"),
                               "random_crop": ("random", "random resized crop", "random_resized_crop", "rrc")})),
    PaperRef("epochs", "Training length", f"{CITE}, Sec. 5", "list", ("400", "800", "1600"),
             values={"probe_top1": _list(("400", "800", "1600"), (65.0, 67.5, 69.6))},
             note="with random-crop augmentation"),
    PaperRef("model_size", "Encoder size", f"{CITE}, Sec. 5", "list", ("base", "half_large", "large"),
             values={"probe_top1": _list(("base", "half_large", "large"), (60.3, 65.0, 70.9))},
             aliases=_aliases({"base": ("ViT-B", "B"), "half_large": ("ViT-1/2L", "1/2L", "half large", "DiT-L"),
                               "large": ("ViT-L", "L")})),
    PaperRef("encoder_depth", "Encoder/decoder split", f"{CITE}, Sec. 4", "list",
             tuple(str(b) for b in range(9, 16)),
             values={"probe_top1": _list(tuple(str(b) for b in range(9, 16)),
                                         (58.5, 62.0, 64.1, 64.5, 63.6, 61.9, 59.7))},
             note="encoder blocks of 24; equal halves (12) are best"),
    PaperRef("probe_t", "Probe input noise level t", f"{CITE}, Sec. 4", "table", _PROBE_T, ("clean", "noisy"),
             values={"probe_top1": _table(_PROBE_T, ("clean", "noisy"), [[64.1, 64.2], [64.5, 65.0], [64.1, 65.0],
                                                                         [63.3, 65.0], [62.2, 64.5]])},
             aliases=_aliases({"clean": ("off", "false", "clean input"), "noisy": ("on", "true", "noisy input")})),
)}

HEADLINE_FINDINGS: tuple[Headline, ...] = (
    Headline(1, "Representation quality is not correlated with generation quality (FID worsens while accuracy "
             "rises).", ("fid_vs_accuracy",)),
    Headline(2, "A low latent dimension per token is optimal (d = 16..32); the curve is unimodal for every "
             "tokenizer.", ("optimal_latent_dim", "unimodal_in_d")),
    Headline(3, "The KL term and the conv VAE are unnecessary: patch AE / PCA do as well.", ("kl_unnecessary",)),
    Headline(4, "Multi-level noise helps (~+3 points over a single level) but is not what enables learning.",
             ("multi_level_helps",)),
    Headline(5, "Denoising in a PCA latent while predicting the original image works about as well as latent "
             "prediction.", ("image_prediction_ok",)),
    Headline(6, "Bigger encoders and longer training help (B < 1/2L < L; 400 < 800 < 1600 epochs).",
             ("bigger_longer_helps",)),
)


def get_reference(mirrors: str | None) -> PaperRef | None:
    """The paper's table or figure a grid mirrors (`[grid] mirrors`), or None when it mirrors none we hold."""
    return PAPER.get(str(mirrors or "").strip().lower())


def canonical_label(ref: PaperRef, label: str | None, choices: tuple[str, ...]) -> str | None:
    """The paper's row/col label among `choices` that `label` names (exactly, by alias or normalized)."""
    if label is None:
        return None
    norm = normalize(label)
    by_norm = {normalize(c): c for c in choices}
    if norm in by_norm:
        return by_norm[norm]
    alias = ref.aliases.get(norm)
    return alias if alias in choices else None


def _parts(label: str) -> list[str]:
    """A combined label "patch_pca d=16" -> ["patch_pca", "16"] (the value after "=" for name=value parts)."""
    return [p.split("=", 1)[1] if "=" in p else p for p in str(label).split()]


def paper_value(mirrors: str | None, row_label: str | None, col_label: str | None, metric: str = "probe_top1", *,
                step: int | None = None) -> float | None:
    """The paper's number at a grid position, or None where the paper has none.

    Tables match (row, col) in either order; one-dimensional lists match whichever label is given while the other
    is None; trajectories match by `step` (position in the grid's trajectory) when given, else by label.
    """
    ref = get_reference(mirrors)
    if ref is None or metric not in ref.values:
        return None
    values = ref.values[metric]
    if ref.kind == "trajectory":
        if step is not None:
            return values.get((ref.rows[step], None)) if 0 <= step < len(ref.rows) else None
        row = canonical_label(ref, row_label, ref.rows) or canonical_label(ref, col_label, ref.rows)
        return values.get((row, None)) if row else None
    if ref.kind == "list":
        given = [x for x in (row_label, col_label) if x is not None]
        if len(given) != 1:
            return None
        row = canonical_label(ref, given[0], ref.rows)
        return values.get((row, None)) if row else None
    for a, b in ((row_label, col_label), (col_label, row_label)):
        r, c = canonical_label(ref, a, ref.rows), canonical_label(ref, b, ref.cols)
        if r is not None and c is not None:
            return values.get((r, c))
    given = [x for x in (row_label, col_label) if x is not None]
    if len(given) == 1:  # one combined label, e.g. a zipped axis "patch_pca d=16"
        parts = _parts(given[0])
        rows = [r for p in parts if (r := canonical_label(ref, p, ref.rows))]
        cols = [c for p in parts if (c := canonical_label(ref, p, ref.cols))]
        if len(rows) == 1 and len(cols) == 1:
            return values.get((rows[0], cols[0]))
    return None
