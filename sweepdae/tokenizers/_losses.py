"""The conv VAE's training loss, after taming-transformers' / LDM's `LPIPSWithDiscriminator` (paper Tab. 1).

loss = L1 + perceptual_weight * perceptual + kl_weight * KL + adaptive_weight * adversarial_weight * hinge-GAN,
all divided by the image's C*H*W values relative to LDM's per-image sums (Adam and the adaptive weight, a ratio
of gradient norms, are unchanged by that), so `kl_weight` means what it means in LDM configs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweepdae.recipe import TokenizerConfig
from sweepdae.tokenizers._base import gaussian_kl
from sweepdae.tokenizers._perceptual import create_perceptual

# The discriminator starts after this fraction of the fit's steps. VQGAN starts it once reconstructions have
# converged (taming configs: disc_start 250001 / LDM KL-f8: 50001 steps); a short fit gives it the second half.
ADV_WARMUP_FRACTION = 0.5

# taming-transformers NLayerDiscriminator: ndf 64, n_layers 3 at 256 px (receptive field 70 px).
MAX_DISC_LAYERS = 3


def discriminator_layers(image_size: int) -> int:
    """Stride-2 layers of the PatchGAN that still leave a >= 4 x 4 map before its two stride-1 convs."""
    return max(1, min(MAX_DISC_LAYERS, int(math.log2(max(image_size, 8) / 4))))


class PatchGANDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming NLayerDiscriminator): images -> a map of real/fake logits."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = MAX_DISC_LAYERS) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                   nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """taming `weights_init`: conv N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> logits [B, 1, h, w]."""
        return self.main(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """taming `hinge_d_loss`: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor) -> Tensor:
    """VQGAN's lambda = ||grad nll|| / (||grad g_loss|| + 1e-4) at the decoder's last layer, clamped to 1e4."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class ConvVAELoss(nn.Module):
    """Reconstruction + KL + frozen perceptual distance + PatchGAN hinge loss with VQGAN's adaptive weight."""

    def __init__(self, *, channels: int, image_size: int, kl_weight: float, perceptual_weight: float,
                 adversarial_weight: float, disc_channels: int, perceptual: nn.Module | None) -> None:
        super().__init__()
        self.kl_weight = kl_weight
        self.perceptual_weight = perceptual_weight
        self.adversarial_weight = adversarial_weight
        self.values_per_image = channels * image_size * image_size
        self.perceptual = perceptual if perceptual_weight > 0 else None
        self.discriminator = (PatchGANDiscriminator(channels, disc_channels, discriminator_layers(image_size))
                              if adversarial_weight > 0 else None)

    def generator_terms(self, x: Tensor, xrec: Tensor, mean: Tensor, logvar: Tensor, *, adversarial: bool,
                        last_layer: Tensor | None) -> dict[str, Tensor]:
        """The autoencoder's loss and its named terms (scalars); `adversarial` switches the GAN term on."""
        rec = (x - xrec).abs().mean()  # L1, as taming / LDM
        perc = self.perceptual(x, xrec).mean() if self.perceptual is not None else rec.new_zeros(())
        nll = rec + self.perceptual_weight * perc
        kl = gaussian_kl(mean, logvar).flatten(1).sum(1).mean() / self.values_per_image  # nats per image / CHW
        loss = nll + self.kl_weight * kl
        terms = {"recon": rec, "perceptual": perc, "kl": kl}
        if adversarial and self.discriminator is not None:
            g_loss = -self.discriminator(xrec).mean()
            weight = (adaptive_weight(nll, g_loss, last_layer) if last_layer is not None
                      else g_loss.new_ones(())) * self.adversarial_weight
            loss = loss + weight * g_loss
            terms.update(g_loss=g_loss, d_weight=weight)
        terms["loss"] = loss
        return terms

    def discriminator_terms(self, x: Tensor, xrec: Tensor) -> dict[str, Tensor]:
        """The discriminator's hinge loss on real images and detached reconstructions."""
        assert self.discriminator is not None, "no discriminator: adversarial_weight is 0"
        real = self.discriminator(x.detach())
        fake = self.discriminator(xrec.detach())
        loss = hinge_d_loss(real, fake)
        return {"loss": loss, "logits_real": real.mean().detach(), "logits_fake": fake.mean().detach()}


def build_conv_vae_loss(cfg: TokenizerConfig, *, channels: int, image_size: int) -> ConvVAELoss:
    """ConvVAELoss from a TokenizerConfig; loads the perceptual net only when perceptual_weight > 0."""
    perceptual = create_perceptual(cfg.perceptual_net) if cfg.perceptual_weight > 0 else None
    return ConvVAELoss(channels=channels, image_size=image_size, kl_weight=cfg.kl_weight,
                       perceptual_weight=cfg.perceptual_weight, adversarial_weight=cfg.adversarial_weight,
                       disc_channels=cfg.conv_channels, perceptual=perceptual)
