"""Batched train-time augmentation of the linear probe: RandomResizedCrop + horizontal flip (MAE main_linprobe.py).

The crop box is drawn as MAE's `util/crop.py` RandomResizedCrop (one draw, no retry loop, following BYOL's TF
code): area fraction ~ U(0.08, 1), log aspect ratio ~ U(log 3/4, log 4/3), w and h clipped to the image, offset
uniform. The crop is resized back to the input size with bicubic interpolation (MAE: `interpolation=3`), done for
the whole batch at once with `grid_sample` so that it runs on the GPU next to the encoder.

MAE crops the decoded photo before resizing it to 224 px. Here the crop is taken from the image at the model's
size, as every set yields it (in-memory sets are stored at that size, Fashion-MNIST zero-padded; streamed sets are
ADM-center-cropped by the loader workers), so in-memory and streamed sets go through this one function on the same
input and give the same crops of the same images. A crop then only ever enlarges (no antialiasing needed); the
cost, on non-square photos, is that nothing outside the central square is seen and a small crop is upsampled from
the model's size rather than from the photo's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from sweepdae.data._base import to_unit_range

# torchvision RandomResizedCrop defaults, used by MAE's linear probe.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)

# (uint8 images [B, C, H, W] on the target device, generator) -> float images in [-1, 1], same shape.
AugmentFn = Callable[[Tensor, "torch.Generator | None"], Tensor]


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).to(device)
    return lo + (hi - lo) * u


def crop_boxes(n: int, height: int, width: int, *, generator: torch.Generator | None = None,
               scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO,
               device: torch.device | str = "cpu") -> Tensor:
    """Integer boxes [n, 4] = (top, left, h, w) drawn as MAE util/crop.py RandomResizedCrop.get_params."""
    dev = torch.device(device)
    area = float(height * width)
    target_area = area * _uniform(n, scale[0], scale[1], generator, dev)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, dev))
    w = torch.round(torch.sqrt(target_area * aspect)).clamp(1, width)
    h = torch.round(torch.sqrt(target_area / aspect)).clamp(1, height)
    # torch.randint(0, H - h + 1) per sample: floor(U * (H - h + 1)) is the same distribution
    top = torch.floor(_uniform(n, 0.0, 1.0, generator, dev) * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(_uniform(n, 0.0, 1.0, generator, dev) * (width - w + 1)).clamp(max=width - w)
    return torch.stack([top, left, h, w], dim=1).long()


def resized_crop(images: Tensor, boxes: Tensor, flip: Tensor | None = None, *, mode: str = "bicubic") -> Tensor:
    """Crop each image [B, C, H, W] (float) to its box (top, left, h, w) and resize it back to H x W.

    Pixel centres are mapped as `F.interpolate(..., align_corners=False)` would resize the crop; `flip` [B] bool
    mirrors the output horizontally.
    """
    b, _, height, width = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    top, left, h, w = boxes.unbind(dim=1)
    sx = w / width  # affine_grid's normalised output coords xn in (-1, 1) -> source x = left + (xn + 1) / 2 * w
    sy = h / height
    tx = (2.0 * left + w) / width - 1.0
    ty = (2.0 * top + h) / height - 1.0
    if flip is not None:
        sx = torch.where(flip.to(images.device), -sx, sx)
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode=mode, padding_mode="border", align_corners=False)


def random_resized_crop_flip(images_uint8: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """MAE linear-probe train transform on a batch: uint8 [B, C, H, W] -> float [-1, 1] [B, C, H, W]."""
    b, _, height, width = images_uint8.shape
    boxes = crop_boxes(b, height, width, generator=generator, device=images_uint8.device)
    flip = _uniform(b, 0.0, 1.0, generator, images_uint8.device) < 0.5  # RandomHorizontalFlip(p=0.5)
    out = resized_crop(images_uint8.float(), boxes, flip)
    return to_unit_range(out.clamp(0.0, 255.0))  # bicubic overshoots; PIL clips to uint8 likewise
