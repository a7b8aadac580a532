"""Figures of a cell: the denoising panel (paper Fig. 8 layout) and a grid of samples.

Pure functions of already-decoded images (uint8 [0, 255], or float [0, 1]) -> a PNG file; rendering uses
matplotlib's object API on the Agg canvas (no pyplot state, safe in worker threads and headless machines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

CELL_INCHES = 1.0  # one image per inch in the denoising figure
LABEL_INCHES = 1.4  # left column holding the row labels
GRID_PADDING = 2  # pixels between samples, as torchvision.utils.make_grid


def to_uint8_hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[K, C in {1, 3}, H, W] uint8 or float [0, 1] -> uint8 numpy [K, H, W, 3] (grey replicated)."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [K, 1 or 3, H, W], got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(np.round(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _format_level(level: float | int | str) -> str:
    if isinstance(level, str):
        return level
    if isinstance(level, (int, np.integer)) and not isinstance(level, bool):
        return f"t = {level}"
    return f"sigma = {float(level):.3g}"


def denoising_figure(clean: torch.Tensor | np.ndarray, noisy: Sequence[torch.Tensor | np.ndarray],
                     denoised: Sequence[torch.Tensor | np.ndarray], levels: Sequence[float | int | str],
                     path: str | Path, *, dpi: int = 100) -> Path:
    """Rows clean / noisy / denoised for each noise level, one column per example (paper Fig. 8).

    clean: [K, C, H, W]; noisy[i], denoised[i]: [K, C, H, W] at levels[i] (a float is printed as sigma, an int
    as the timestep t, a str as given). The PNG is (LABEL_INCHES + K) x 3 len(levels) inches at `dpi`.
    """
    if not (len(noisy) == len(denoised) == len(levels)) or not levels:
        raise ValueError(f"need one noisy and one denoised batch per level: {len(noisy)}, {len(denoised)}, "
                         f"{len(levels)} levels")
    clean_np = to_uint8_hwc(clean)
    k = clean_np.shape[0]
    rows: list[tuple[str, np.ndarray]] = []
    for level, nz, dn in zip(levels, noisy, denoised, strict=True):
        nz_np, dn_np = to_uint8_hwc(nz), to_uint8_hwc(dn)
        if nz_np.shape[0] != k or dn_np.shape[0] != k:
            raise ValueError(f"level {level!r}: expected {k} noisy and denoised images")
        label = _format_level(level)
        rows += [("clean", clean_np), (f"noisy\n{label}", nz_np), ("denoised", dn_np)]
    # heavy: matplotlib is imported when a figure is drawn, so that importing sweepdae.eval stays light
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # explicit Agg canvas: pyplot's backend is untouched
    from matplotlib.figure import Figure

    fig = Figure(figsize=(LABEL_INCHES + k * CELL_INCHES, len(rows) * CELL_INCHES), dpi=dpi)
    FigureCanvasAgg(fig)
    width = LABEL_INCHES + k * CELL_INCHES
    for r, (label, imgs) in enumerate(rows):
        bottom = 1.0 - (r + 1) / len(rows)
        fig.text(LABEL_INCHES / width * 0.95, bottom + 0.5 / len(rows), label, ha="right", va="center", fontsize=8)
        for c in range(k):
            ax = fig.add_axes((float((LABEL_INCHES + c * CELL_INCHES) / width), float(bottom),
                               float(CELL_INCHES / width), float(1.0 / len(rows))))
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_axis_off()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)  # no bbox_inches="tight": the pixel size stays predictable
    return out


def make_grid(images: torch.Tensor | np.ndarray, nrow: int, padding: int = GRID_PADDING,
              pad_value: int = 255) -> np.ndarray:
    """uint8 [rows (H + p) + p, cols (W + p) + p, 3] with `nrow` images per row (torchvision make_grid layout)."""
    x = to_uint8_hwc(images)
    n, h, w, _ = x.shape
    cols = max(1, min(nrow, n))
    rows = max(1, math.ceil(n / cols))
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, 3), pad_value, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top:top + h, left:left + w] = x[i]
    return grid


def sample_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int = 8) -> Path:
    """Save samples [N, C, H, W] (uint8 or float [0, 1]) as one PNG grid at 1 image pixel = 1 PNG pixel."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib.image as mpimg  # heavy: imported when a grid is written

    mpimg.imsave(out, make_grid(images, nrow), format="png")
    return out
