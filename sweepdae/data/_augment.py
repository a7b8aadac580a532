"""MAE's training augmentation (RandomResizedCrop + horizontal flip), sampled exactly as torchvision does.

Parameters are drawn with an explicit generator so a batch's augmentation is reproducible; the tensor path crops,
resizes and flips a whole uint8 batch in one `grid_sample` call so it stays on the device and is fast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# MAE main_pretrain.py: RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=3  # bicubic) + flip.
RRC_SCALE = (0.2, 1.0)
# torchvision RandomResizedCrop default aspect-ratio range, which MAE keeps.
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# torchvision RandomResizedCrop.get_params tries 10 boxes before falling back to a center crop.
RRC_ATTEMPTS = 10


def sample_crop_boxes(n: int, height: int, width: int, *, generator: torch.Generator | None = None,
                      scale: tuple[float, float] = RRC_SCALE,
                      ratio: tuple[float, float] = RRC_RATIO) -> torch.Tensor:
    """Draw `n` RandomResizedCrop boxes as int64 [n, 4] rows (top, left, h, w), as torchvision's get_params."""
    dev = generator.device if generator is not None else torch.device("cpu")
    area = float(height * width)
    target = area * torch.empty(n, RRC_ATTEMPTS, device=dev, dtype=torch.float64).uniform_(*scale,
                                                                                            generator=generator)
    log_ratio = torch.empty(n, RRC_ATTEMPTS, device=dev, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first valid attempt, as the loop in get_params
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Fallback (no valid attempt): the largest center crop whose aspect ratio lies in `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, device=dev, dtype=torch.float64, generator=generator)
    top = torch.where(any_ok, torch.floor(u[:, 0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(any_ok, torch.floor(u[:, 1] * (width - w + 1)).long(), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def sample_flips(n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw `n` horizontal flips (bool [n]) with probability 1/2, as RandomHorizontalFlip."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, device=dev, generator=generator) < 0.5


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box, resize it bicubically to size x size and flip it; uint8 [B, C, H, W] in and out."""
    # One affine grid per image: output pixel centres map into the box with the half-pixel convention of
    # torchvision's resize (align_corners=False), so the full box without a flip returns the image unchanged.
    # Inside the box this equals torchvision's resized_crop; at its border we sample the real neighbours where
    # torchvision pads the cut-out crop (PIL's resize(box=...) also reads outside the box). Crops are never larger
    # than the image and in-memory images are already at the output size, so this only enlarges: no antialiasing.
    b, c, height, width = images.shape
    boxes = boxes.to(images.device, torch.float32)
    top, left, h, w = boxes.unbind(dim=1)  # [B] each
    sign = 1.0 - 2.0 * flips.to(images.device, torch.float32)  # -1 flips around the box centre
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2.0 * left + w) / width - 1.0
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2.0 * top + h) / height - 1.0
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)  # [B, size, size, 2]
    out = F.grid_sample(images.float(), grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)  # [B, C, size, size]


def random_resized_crop_batch(images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """MAE's RandomResizedCrop(scale=(0.2, 1)) + horizontal flip per image of a uint8 [B, C, H, W] batch."""
    b, _, height, width = images.shape
    boxes = sample_crop_boxes(b, height, width, generator=generator)
    flips = sample_flips(b, generator=generator)
    return crop_resize_flip(images, boxes, flips, height)
