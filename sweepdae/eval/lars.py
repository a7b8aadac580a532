"""The linear probe's optimizer and learning-rate schedule, as MAE's linear-probing recipe.

Sources: facebookresearch/mae `util/lars.py` (LARS, itself from MoCo v3), `util/lr_sched.py` (warm-up then
half-cycle cosine, set every iteration) and `main_linprobe.py` (lr = blr x batch / 256, 10 warm-up epochs of 90).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

# MAE main_linprobe.py: --warmup_epochs 10 of --epochs 90; kept as a fraction so shorter probes warm up alike.
WARMUP_FRACTION = 10.0 / 90.0


class LARS(torch.optim.Optimizer):
    """LARS without rate scaling or weight decay for parameters of <= 1 dimension (MAE util/lars.py).

    Parameters with ndim > 1 get their update scaled by the trust ratio trust_coefficient x |p| / |dp|; biases
    (and normalisation affine terms, when any) take the plain momentum step.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:  # not a bias or a normalisation gamma/beta
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(update_norm > 0, g["trust_coefficient"] * param_norm / update_norm, one)
                    q = torch.where(param_norm > 0.0, trust, one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def probe_lr(*, lr: float, base_lr: float, batch_size: int) -> float:
    """Absolute lr: `lr` when > 0, else base_lr x batch / 256 (MAE main_linprobe.py, Goyal et al. scaling)."""
    return lr if lr > 0 else base_lr * batch_size / 256.0


def cosine_lr(epoch: float, *, peak_lr: float, epochs: float, warmup_epochs: float, min_lr: float = 0.0) -> float:
    """Linear warm-up then half-cycle cosine to min_lr; `epoch` is fractional (MAE util/lr_sched.py)."""
    if epoch < warmup_epochs:
        return peak_lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min((epoch - warmup_epochs) / span, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
