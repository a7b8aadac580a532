"""The paper's convolutional VAE tokenizer (Tab. 1 / Tab. 2), a small LDM/taming-style KL autoencoder.

Encoder: log2(downsample) stages of [ResBlock, stride-2 conv]; decoder mirrors it with nearest-neighbour
upsampling. The latent map [B, c_lat, h, w] is grouped g x g into tokens (paper: DiT "patch size" 2 on the
32 x 32 x 4 SD-VAE latent), so d = c_lat * g^2 = tokenizer.latent_dim.

Memory of the fit is bounded by a micro-batch, not by `fit_batch_size`: each optimizer step's gradient is
accumulated over micro-batches of the step's batch (`accumulate_step`), the same batch-mean gradient as one pass,
with the posterior noise drawn once per step. At the paper's shape one image keeps ~0.87 GiB of activations for
the backward, so `fit_batch_size` 256 in one pass would need ~223 GiB. The first micro-batch is
$SWEEPDAE_FIT_MICRO_BATCH, or chosen from the device's free memory; out-of-memory halves it and redoes the step
(sweepdae/memory.py); the fit's stats record the micro-batch that worked (`fit_micro_batch`). On a GPU the fit runs
under bf16 autocast (where the GPU has bf16) and recomputes each ResBlock in the backward (activation
checkpointing); those two are not exercised by the CPU tests.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sweepdae.data._base import to_unit_range
from sweepdae.errors import RecipeError
from sweepdae.memory import BatchSize
from sweepdae.recipe import TokenizerConfig
from sweepdae.tokenizers._base import (
    Progress,
    Tokenizer,
    check_finite,
    patchify,
    recon_mse,
    stats_sample,
    unpatchify,
)
from sweepdae.tokenizers._losses import ADV_WARMUP_FRACTION, ConvVAELoss, build_conv_vae_loss

# Width multipliers per resolution level (LDM KL-f8 uses ch_mult (1, 2, 4, 4) on 128 channels; smaller here).
CH_MULT = (1, 2, 2, 4, 4, 4)

# The fit's first micro-batch, a runtime setting (no key depends on it): unset, it is chosen from free memory.
FIT_MICRO_BATCH_ENV = "SWEEPDAE_FIT_MICRO_BATCH"

# Share of the device's free memory the automatic micro-batch may fill with saved activations; the rest is for the
# backward's transient buffers, the gradients, the optimiser state and the allocator's fragmentation.
FIT_MEMORY_SHARE = 0.5

# taming-transformers / LDM optimise the autoencoder and the discriminator with Adam betas (0.5, 0.9).
ADAM_BETAS = (0.5, 0.9)


def _norm(ch: int) -> nn.GroupNorm:
    # taming uses GroupNorm(32, eps 1e-6); fewer groups when the width is not a multiple of 32
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    """taming ResnetBlock without time embedding or dropout: (GN, SiLU, conv3x3) x 2 plus a (1x1) skip."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                   _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    checkpointing = False  # ConvVAE.set_checkpointing: recompute in the backward instead of keeping activations

    def forward(self, x: Tensor) -> Tensor:
        """[B, cin, H, W] -> [B, cout, H, W]."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            out: Tensor = checkpoint(self._forward, x, use_reentrant=False)
            return out
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class ConvEncoder(nn.Module):
    """Images [B, C, H, W] -> posterior moments [B, 2*c_lat, H/s, W/s] with s = 2^num_down."""

    def __init__(self, in_channels: int, base: int, num_down: int, out_channels: int) -> None:
        super().__init__()
        widths = [base * CH_MULT[min(i, len(CH_MULT) - 1)] for i in range(num_down + 1)]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        stages: list[nn.Module] = []
        for i in range(num_down):
            stages += [ResBlock(widths[i], widths[i]), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
        self.down = nn.Sequential(*stages)
        self.mid = ResBlock(widths[-1], widths[-1])
        self.out = nn.Sequential(_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, 2*c_lat, h, w]."""
        return self.out(self.mid(self.down(self.conv_in(x))))


class ConvDecoder(nn.Module):
    """Latent map [B, c_lat, h, w] -> images [B, C, h*s, w*s], mirroring ConvEncoder."""

    def __init__(self, latent_channels: int, base: int, num_up: int, out_channels: int) -> None:
        super().__init__()
        widths = [base * CH_MULT[min(i, len(CH_MULT) - 1)] for i in range(num_up + 1)]
        self.conv_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        self.mid = ResBlock(widths[-1], widths[-1])
        stages: list[nn.Module] = []
        for i in reversed(range(num_up)):
            stages += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                       nn.Conv2d(widths[i + 1], widths[i], 3, padding=1), ResBlock(widths[i], widths[i])]
        self.up = nn.Sequential(*stages)
        self.norm_out = nn.Sequential(_norm(widths[0]), nn.SiLU())
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)  # "last layer" of VQGAN's adaptive weight

    def forward(self, z: Tensor) -> Tensor:
        """[B, c_lat, h, w] -> [B, C, H, W]."""
        return self.conv_out(self.norm_out(self.up(self.mid(self.conv_in(z)))))


class ConvVAE(Tokenizer):
    """Conv KL-VAE tokenizer: encode = posterior mean, grouped g x g into tokens of d = c_lat * g^2."""

    name = "conv_vae"
    stochastic = True

    def __init__(self, *, channels: int, image_size: int, latent_dim: int, downsample: int, group: int,
                 base_channels: int) -> None:
        if downsample < 1 or downsample & (downsample - 1):
            raise RecipeError(f"tokenizer.conv_downsample must be a power of two, got {downsample}")
        if group < 1 or image_size % (downsample * group):
            raise RecipeError(f"data.image_size ({image_size}) must be divisible by tokenizer.conv_downsample x "
                              f"tokenizer.conv_group ({downsample} x {group})")
        if latent_dim <= 0 or latent_dim % (group * group):
            raise RecipeError(f"tokenizer.latent_dim ({latent_dim}) must be a positive multiple of "
                              f"tokenizer.conv_group^2 ({group}^2 = {group * group}) for conv_vae: each token "
                              f"groups {group} x {group} latent pixels of latent_dim / {group * group} channels")
        super().__init__(channels=channels, image_size=image_size, latent_dim=latent_dim,
                         grid_size=image_size // (downsample * group))
        self.downsample = downsample
        self.group = group  # g
        self.latent_channels = latent_dim // (group * group)  # c_lat
        num_down = int(math.log2(downsample))
        self.encoder = ConvEncoder(channels, base_channels, num_down, 2 * self.latent_channels)
        self.decoder = ConvDecoder(self.latent_channels, base_channels, num_down, channels)

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[B, C, H, W] -> (mean, logvar), each [B, c_lat, H/s, W/s]; logvar clamped as LDM."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def group_latents(self, m: Tensor) -> Tensor:
        """Latent map [B, c_lat, h, w] -> tokens [B, (h/g)*(w/g), g*g*c_lat] (same order as patchify)."""
        return patchify(m, self.group)

    def ungroup_latents(self, z: Tensor) -> Tensor:
        """Tokens [B, N, d] -> latent map [B, c_lat, h, w]."""
        return unpatchify(z, self.group, self.latent_channels)

    def encode_unscaled(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, d]: the grouped posterior mean."""
        return self.group_latents(self.moments(x)[0])

    def moments_unscaled(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """[B, C, H, W] -> (mean, logvar), each grouped into tokens [B, N, d]."""
        mean, logvar = self.moments(x)
        return self.group_latents(mean), self.group_latents(logvar)

    def decode_unscaled(self, z: Tensor) -> Tensor:
        """[B, N, d] -> [B, C, H, W]."""
        return self.decoder(self.ungroup_latents(z))

    def reconstruct_sample(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, C, H, W] -> (reconstruction of a posterior sample [B, C, H, W], mean, logvar)."""
        mean, logvar = self.moments(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        return self.decoder(z), mean, logvar


    def reconstruct_with(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`reconstruct_sample` with the posterior noise given, eps [B, c_lat, h, w]: a fit step draws it once for
        its whole batch, so the step does not depend on how the batch is split into micro-batches."""
        mean, logvar = self.moments(x)
        z = mean + torch.exp(0.5 * logvar) * eps.to(mean.dtype)
        return self.decoder(z), mean, logvar

    def set_checkpointing(self, on: bool) -> None:
        """Recompute each ResBlock's activations in the backward instead of keeping them (training only)."""
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.checkpointing = on

    def fit_data(self, images_uint8: Tensor, *, cfg: TokenizerConfig, seed: int, device: torch.device,
                 progress: Progress | None) -> dict[str, Any]:
        """Train with ConvVAELoss: per batch of `fit_batch_size` images, an autoencoder step, then (after the
        warm-up) a discriminator step; each step's gradients are accumulated over micro-batches (module doc)."""
        loss_fn = build_conv_vae_loss(cfg, channels=self.channels, image_size=self.image_size).to(device)
        sample = stats_sample(images_uint8.shape[0], seed)
        init_mse = recon_mse(self, images_uint8, sample, device=device)
        opt_g = torch.optim.AdamW(self.parameters(), lr=cfg.fit_lr, betas=ADAM_BETAS, weight_decay=0.0)
        disc = loss_fn.discriminator
        opt_d = (torch.optim.AdamW(disc.parameters(), lr=cfg.fit_lr, betas=ADAM_BETAS, weight_decay=0.0)
                 if disc is not None else None)
        n = images_uint8.shape[0]
        steps_per_epoch = math.ceil(n / cfg.fit_batch_size)
        disc_start = int(ADV_WARMUP_FRACTION * cfg.fit_epochs * steps_per_epoch)
        gen = torch.Generator().manual_seed(seed)
        step, last = 0, {}
        self.train()
        loss_fn.train()
        on_gpu = device.type == "cuda"
        self.set_checkpointing(on_gpu)  # activations recomputed in the backward (GPU only, see module doc)

        def halved(old: int, new: int) -> None:
            if progress is not None:
                progress({"event": "fit_oom", "tokenizer": self.name, "micro_batch": new, "was": old})

        micro = BatchSize(initial_micro_batch(self, loss_fn, images_uint8, min(cfg.fit_batch_size, n), device),
                          phase="tokenizer", what="conv_vae fit", on_halve=halved)
        latent_shape = (self.latent_channels, self.image_size // self.downsample, self.image_size // self.downsample)
        for epoch in range(cfg.fit_epochs):
            # the same order as iter_image_batches(images, fit_batch_size, generator=gen): one permutation per epoch
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, cfg.fit_batch_size):
                idx = order[start:start + cfg.fit_batch_size]
                adversarial = opt_d is not None and step >= disc_start
                # the posterior noise of the whole batch, drawn as reconstruct_sample's randn_like would draw it
                eps = torch.randn((idx.numel(), *latent_shape), device=device)
                terms = micro.run(functools.partial(accumulate_step, self, loss_fn, images_uint8, idx, eps,
                                                    adversarial=adversarial, device=device))
                d_loss = terms.pop("d_loss", None)
                check_finite(terms["loss"], what="conv_vae fit", step=step)
                opt_g.step()
                last = {k: float(v) for k, v in terms.items()}
                if d_loss is not None and opt_d is not None:
                    check_finite(d_loss, what="conv_vae discriminator", step=step)
                    opt_d.step()
                    last["d_loss"] = float(d_loss)
                step += 1
            if progress is not None:
                progress({"event": "fit_epoch", "tokenizer": self.name, "epoch": epoch + 1,
                          "epochs": cfg.fit_epochs, **last})
        self.set_checkpointing(False)
        self.zero_grad(set_to_none=True)
        self.eval()
        perceptual = loss_fn.perceptual
        return {"recon_mse_init": init_mse, "steps": step, "final_terms": last,
                "perceptual_net": getattr(perceptual, "source", cfg.perceptual_net) if perceptual is not None
                else None,
                "adversarial": disc is not None, "disc_start_step": disc_start if disc is not None else None,
                **micro.record("fit_micro"), "fit_autocast": "bf16" if _bf16(device) else None,
                "fit_checkpointing": on_gpu}


def _bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on a GPU that has it (the fit's matmuls and convs; the loss sums stay float32), else nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if _bf16(device) else contextlib.nullcontext()


def _load(images_uint8: Tensor, idx: Tensor, device: torch.device) -> Tensor:
    return to_unit_range(images_uint8[idx].to(device))


def accumulate_step(tok: ConvVAE, loss_fn: ConvVAELoss, images_uint8: Tensor, idx: Tensor, eps: Tensor, micro: int,
                    *, adversarial: bool, device: torch.device) -> dict[str, Tensor]:
    """The gradients of one fit step over images `idx` (posterior noise `eps`), `micro` images at a time.

    Leaves in `.grad` of the autoencoder (and of the discriminator when `adversarial`) the gradient of the
    batch-mean loss over all of `idx`, as one pass over the whole batch would, and returns the step's terms
    (scalars, detached; "d_loss" when adversarial). Every term is a mean over images, so micro-batch b of B
    contributes its mean times b / B. VQGAN's adaptive weight is a ratio of whole-batch gradient norms at the
    decoder's last layer, not a mean: the gradient of the generator's GAN term is accumulated apart and added
    with the weight once the batch is done (the KL term does not reach the decoder, so the last layer's
    accumulated gradient is the reconstruction term's, as in `adaptive_weight`). Exact up to float rounding,
    except the PatchGAN's BatchNorm, which normalises by each micro-batch's own statistics (as taming's
    discriminator does per GPU under data parallelism). With `micro` >= len(idx) this is the one-pass step.
    """
    params = [p for p in tok.parameters() if p.requires_grad]
    disc = loss_fn.discriminator
    tok.zero_grad(set_to_none=True)
    if disc is not None:
        disc.zero_grad(set_to_none=True)
    last_layer = tok.decoder.conv_out.weight
    n = idx.numel()
    if micro >= n:  # one pass, the step as written in taming's LPIPSWithDiscriminator
        x = _load(images_uint8, idx, device)
        with _autocast(device):
            xrec, mean, logvar = tok.reconstruct_with(x, eps)
            terms = loss_fn.generator_terms(x, xrec, mean, logvar, adversarial=adversarial, last_layer=last_layer)
        terms["loss"].backward()
        out = {k: v.detach() for k, v in terms.items()}
        if adversarial and disc is not None:
            disc.zero_grad(set_to_none=True)  # the generator loss's gradients on the discriminator are not its own
            with _autocast(device):
                d_loss = loss_fn.discriminator_terms(x, xrec.detach())["loss"]
            d_loss.backward()
            out["d_loss"] = d_loss.detach()
        return out
    adv = [torch.zeros_like(p) for p in params] if adversarial else []
    sums: dict[str, Tensor] = {}

    def add(name: str, value: Tensor, w: float) -> None:
        sums[name] = sums[name] + value.detach().float() * w if name in sums else value.detach().float() * w

    for s in range(0, n, micro):
        part = idx[s:s + micro]
        w = part.numel() / n
        x = _load(images_uint8, part, device)
        with _autocast(device):
            xrec, mean, logvar = tok.reconstruct_with(x, eps[s:s + micro])
            terms = loss_fn.generator_terms(x, xrec, mean, logvar, adversarial=False, last_layer=None)
            g_loss = -disc(xrec).mean() if adversarial and disc is not None else None
        (terms["loss"] * w).backward(inputs=params, retain_graph=g_loss is not None)
        for k in ("recon", "perceptual", "kl"):
            add(k, terms[k], w)
        if g_loss is not None and disc is not None:
            grads = torch.autograd.grad(g_loss * w, params, allow_unused=True)
            for a, g in zip(adv, grads, strict=True):
                if g is not None:
                    a.add_(g)
            with _autocast(device):
                d_loss = loss_fn.discriminator_terms(x, xrec.detach())["loss"]
            (d_loss * w).backward()
            add("g_loss", g_loss, w)
            add("d_loss", d_loss, w)
        del x, xrec, mean, logvar, terms, g_loss
    nll = sums["recon"] + loss_fn.perceptual_weight * sums["perceptual"]
    out = {"recon": sums["recon"], "perceptual": sums["perceptual"], "kl": sums["kl"]}
    loss = nll + loss_fn.kl_weight * sums["kl"]
    if adversarial and disc is not None:
        last_grad = last_layer.grad
        assert last_grad is not None, "the reconstruction loss reaches the decoder's last layer"
        g_last = adv[next(i for i, p in enumerate(params) if p is last_layer)]
        weight = (last_grad.norm() / (g_last.norm() + 1e-4)).clamp(0.0, 1e4) * loss_fn.adversarial_weight
        for p, a in zip(params, adv, strict=True):
            if p.grad is None:
                p.grad = a * weight
            else:
                p.grad.add_(a * weight)
        loss = loss + weight * sums["g_loss"]
        out.update(g_loss=sums["g_loss"], d_weight=weight.detach(), d_loss=sums["d_loss"])
    out["loss"] = loss
    return out


def _free_bytes(device: torch.device) -> int | None:
    """Memory the device has free now: CUDA's free global memory, or the host's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _saved_bytes_per_image(tok: ConvVAE, loss_fn: ConvVAELoss, x: Tensor, device: torch.device) -> int:
    """Bytes autograd keeps for the backward of one image's generator loss (saved tensors, each storage once),
    counted with `torch.autograd.graph.saved_tensors_hooks`, without checkpointing: an upper bound."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    disc = loss_fn.discriminator
    was_checkpointing = any(getattr(m, "checkpointing", False) for m in tok.modules())
    tok.set_checkpointing(False)
    if disc is not None:
        disc.eval()  # no BatchNorm running-statistics update from this probe
    try:
        x = x.to(device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(device):
            side = tok.image_size // tok.downsample
            eps = torch.zeros((x.shape[0], tok.latent_channels, side, side), device=device)  # no random draw
            xrec, mean, logvar = tok.reconstruct_with(x, eps)
            terms = loss_fn.generator_terms(x, xrec, mean, logvar, adversarial=False, last_layer=None)
            if disc is not None:
                terms["loss"] = terms["loss"] - disc(xrec).mean()
        del terms, xrec, mean, logvar
    finally:
        tok.set_checkpointing(was_checkpointing)
        if disc is not None:
            disc.train()
    return sum(seen.values()) // max(int(x.shape[0]), 1)


def initial_micro_batch(tok: ConvVAE, loss_fn: ConvVAELoss, images_uint8: Tensor, batch: int,
                        device: torch.device) -> int:
    """The fit's first micro-batch: $SWEEPDAE_FIT_MICRO_BATCH when set (a runtime setting: the fit's cache key
    does not depend on it), else `batch` halved until its saved activations fill at most FIT_MEMORY_SHARE of the
    memory the device has free. Out-of-memory later halves it again (sweepdae/memory.py)."""
    raw = os.environ.get(FIT_MICRO_BATCH_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise RecipeError(f"{FIT_MICRO_BATCH_ENV} must be a positive integer, got {raw!r}")
        return min(value, batch)
    if batch <= 1:
        return max(batch, 1)
    free = _free_bytes(device)
    per_image = _saved_bytes_per_image(tok, loss_fn, to_unit_range(images_uint8[:1]), device)
    if free is None or per_image <= 0:
        return batch
    micro = batch
    while micro > 1 and micro * per_image > FIT_MEMORY_SHARE * free:
        micro //= 2
    return micro
