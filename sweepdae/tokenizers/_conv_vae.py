"""The paper's convolutional VAE tokenizer (Tab. 1 / Tab. 2), a small LDM/taming-style KL autoencoder.

Encoder: log2(downsample) stages of [ResBlock, stride-2 conv]; decoder mirrors it with nearest-neighbour
upsampling. The latent map [B, c_lat, h, w] is grouped g x g into tokens (paper: DiT "patch size" 2 on the
32 x 32 x 4 SD-VAE latent), so d = c_lat * g^2 = tokenizer.latent_dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sweepdae.errors import RecipeError
from sweepdae.recipe import TokenizerConfig
from sweepdae.tokenizers._base import (
    Progress,
    Tokenizer,
    check_finite,
    iter_image_batches,
    patchify,
    recon_mse,
    stats_sample,
    unpatchify,
)
from sweepdae.tokenizers._losses import ADV_WARMUP_FRACTION, build_conv_vae_loss

# Width multipliers per resolution level (LDM KL-f8 uses ch_mult (1, 2, 4, 4) on 128 channels; smaller here).
CH_MULT = (1, 2, 2, 4, 4, 4)

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

    def forward(self, x: Tensor) -> Tensor:
        """[B, cin, H, W] -> [B, cout, H, W]."""
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

    def fit_data(self, images_uint8: Tensor, *, cfg: TokenizerConfig, seed: int, device: torch.device,
                 progress: Progress | None) -> dict[str, Any]:
        """Train with ConvVAELoss: autoencoder step, then (after the warm-up) a discriminator step, per batch."""
        loss_fn = build_conv_vae_loss(cfg, channels=self.channels, image_size=self.image_size).to(device)
        sample = stats_sample(images_uint8.shape[0], seed)
        init_mse = recon_mse(self, images_uint8, sample, device=device)
        opt_g = torch.optim.AdamW(self.parameters(), lr=cfg.fit_lr, betas=ADAM_BETAS, weight_decay=0.0)
        disc = loss_fn.discriminator
        opt_d = (torch.optim.AdamW(disc.parameters(), lr=cfg.fit_lr, betas=ADAM_BETAS, weight_decay=0.0)
                 if disc is not None else None)
        steps_per_epoch = math.ceil(images_uint8.shape[0] / cfg.fit_batch_size)
        disc_start = int(ADV_WARMUP_FRACTION * cfg.fit_epochs * steps_per_epoch)
        gen = torch.Generator().manual_seed(seed)
        step, last = 0, {}
        self.train()
        loss_fn.train()
        for epoch in range(cfg.fit_epochs):
            for x in iter_image_batches(images_uint8, cfg.fit_batch_size, device=device, generator=gen):
                adversarial = opt_d is not None and step >= disc_start
                xrec, mean, logvar = self.reconstruct_sample(x)
                terms = loss_fn.generator_terms(x, xrec, mean, logvar, adversarial=adversarial,
                                                last_layer=self.decoder.conv_out.weight)
                check_finite(terms["loss"], what="conv_vae fit", step=step)
                opt_g.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt_g.step()
                last = {k: float(v.detach()) for k, v in terms.items()}
                if adversarial and opt_d is not None:
                    d_terms = loss_fn.discriminator_terms(x, xrec.detach())
                    check_finite(d_terms["loss"], what="conv_vae discriminator", step=step)
                    opt_d.zero_grad(set_to_none=True)
                    d_terms["loss"].backward()
                    opt_d.step()
                    last["d_loss"] = float(d_terms["loss"].detach())
                step += 1
            if progress is not None:
                progress({"event": "fit_epoch", "tokenizer": self.name, "epoch": epoch + 1,
                          "epochs": cfg.fit_epochs, **last})
        self.eval()
        perceptual = loss_fn.perceptual
        return {"recon_mse_init": init_mse, "steps": step, "final_terms": last,
                "perceptual_net": getattr(perceptual, "source", cfg.perceptual_net) if perceptual is not None
                else None,
                "adversarial": disc is not None, "disc_start_step": disc_start if disc is not None else None}
