"""FLOPs and weights of the modules a cell runs, counted from a recipe alone (no torch): the DiT denoiser, the conv
VAE and its discriminator, the perceptual network and Inception; and the split sizes the counts multiply. The
estimate (`sweepdae.runner.estimate`) builds its plan on these; tests/test_estimate.py checks each count against
the module it mirrors."""

from __future__ import annotations

import math

from sweepdae.cell import TOKENIZER_SAMPLE
from sweepdae.recipe import MODEL_SIZES, Recipe, Space, TokenizerName

# -- constants of the counted modules (tests/test_estimate.py checks each against the module it mirrors) ----------
MLP_RATIO = 4  # DiT / ViT: MLP hidden = 4 x width (models/_layers.py MLP_RATIO)
FREQUENCY_EMBEDDING_SIZE = 256  # DiT TimestepEmbedder (models/_layers.py)
CONV_CH_MULT = (1, 2, 2, 4, 4, 4)  # conv VAE width multipliers (tokenizers/_conv_vae.py CH_MULT)
MAX_DISC_LAYERS = 3  # PatchGAN stride-2 layers at most (tokenizers/_losses.py)
ADV_WARMUP_FRACTION = 0.5  # the discriminator trains over the second half of the fit (tokenizers/_losses.py)
# EfficientNet-Lite0's first 4 stages at 64 px (the perceptual distance's minimum side, tokenizers/_perceptual.py),
# one image, counted with FlopCounterMode on timm's tf_efficientnet_lite0; scales with the pixel count above 64 px.
PERCEPTUAL_FLOPS_64PX = 25_675_264
PERCEPTUAL_MIN_SIDE = 64
# Inception-v3 at 299 px: 5.71 G multiply-adds (torchvision's published 5.71 "GFLOPS" are multiply-adds), i.e.
# 11.43 GFLOP in this module's 2-per-multiply-add convention (FlopCounterMode on torchvision's inception_v3).
INCEPTION_FLOPS = 11_426_432_192

# Images per split when the recipe takes the whole split (data.train_size / test_size = 0). digits: sklearn's 1797
# split 80/20 (data/_builtin.py); synthetic: its default sizes. An image folder's size is not known without listing
# it: ImageNet-1k's (the paper's) is assumed and the estimate says so.
SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "fashion-mnist": (60_000, 10_000), "mnist": (60_000, 10_000), "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000), "digits": (1_438, 359), "synthetic": (1_000, 200),
    "imagefolder": (1_281_167, 50_000),
}


def dit_forward_flops(size: str, *, tokens: int, in_dim: int, out_dim: int, cond_mlp_ratio: float = 0.25,
                      blocks: int | None = None) -> float:
    """FLOPs of one image through the DiT: the whole network (blocks=None), or the embedding and the first `blocks`
    blocks without the final layer (`Denoiser.features`, the probe's frozen encoder)."""
    spec = MODEL_SIZES[size]
    c, n = spec.width, tokens
    embed = 2 * n * in_dim * c  # x_embedder: Linear(in_dim, C) per token
    t_embed = 2 * (FREQUENCY_EMBEDDING_SIZE * c + c * c)  # TimestepEmbedder MLP: 256 -> C -> C, per image
    if cond_mlp_ratio == 1.0:  # adaLN modulation per block, per image: C -> 6C, or C -> h -> 6C (l-DAE's shrink)
        modulation = 2 * c * 6 * c
    else:
        hidden = max(1, round(cond_mlp_ratio * c))
        modulation = 2 * (c * hidden + hidden * 6 * c)
    block = (2 * n * c * 3 * c  # qkv
             + 2 * 2 * n * n * c  # QK^T and AV over all heads
             + 2 * n * c * c  # attention output projection
             + 2 * 2 * n * c * MLP_RATIO * c  # MLP: C -> 4C -> C
             + modulation)
    depth = spec.depth if blocks is None else blocks
    total = embed + t_embed + depth * block
    if blocks is None:
        total += 2 * c * 2 * c + 2 * n * c * out_dim  # final layer: adaLN C -> 2C per image, Linear(C, out) per token
    return float(total)


def model_shape(r: Recipe) -> tuple[int, int, int]:
    """(tokens, in_dim, out_dim) of the recipe's network (`objectives.model_io_dims`): d per token in the latent
    space, D = C p^2 in the image space (through the inverse PCA)."""
    big = r.patch_dim(r.channels)
    d = big if r.tokenizer.name == TokenizerName.pixel else r.tokenizer.latent_dim
    return (r.num_tokens(), d if r.objective.input_space == Space.latent else big,
            d if r.objective.output_space == Space.latent else big)


def recipe_forward_flops(r: Recipe, blocks: int | None = None) -> float:
    tokens, in_dim, out_dim = model_shape(r)
    return dit_forward_flops(r.model.size.value, tokens=tokens, in_dim=in_dim, out_dim=out_dim,
                             cond_mlp_ratio=r.model.cond_mlp_ratio, blocks=blocks)


def split_sizes(r: Recipe) -> tuple[int, int]:
    """(train, test) images the cell reads."""
    name = r.data.name.value
    full_train, full_test = SPLIT_SIZES[name]
    bounded = name not in ("imagefolder", "synthetic")  # a subset of a fixed split; the others are what they say
    train = (min(r.data.train_size, full_train) if bounded else r.data.train_size) if r.data.train_size else full_train
    test = (min(r.data.test_size, full_test) if bounded else r.data.test_size) if r.data.test_size else full_test
    return train, test


def _conv(cin: int, cout: int, k: int, side: int) -> int:
    """A k x k convolution producing a side x side map."""
    return 2 * cin * cout * k * k * side * side


def _resblock(cin: int, cout: int, side: int) -> int:
    return _conv(cin, cout, 3, side) + _conv(cout, cout, 3, side) + (_conv(cin, cout, 1, side) if cin != cout else 0)


def conv_vae_flops(r: Recipe) -> tuple[float, float]:
    """(encoder, decoder) forward FLOPs of one image through the conv VAE (tokenizers/_conv_vae.py)."""
    tk, side, ch = r.tokenizer, r.data.image_size, r.channels
    num = int(math.log2(tk.conv_downsample))
    widths = [tk.conv_channels * CONV_CH_MULT[min(i, len(CONV_CH_MULT) - 1)] for i in range(num + 1)]
    c_lat = tk.latent_dim // tk.conv_group ** 2
    low = side >> num
    enc = _conv(ch, widths[0], 3, side)
    for i in range(num):
        enc += _resblock(widths[i], widths[i], side >> i) + _conv(widths[i], widths[i + 1], 3, side >> (i + 1))
    enc += _resblock(widths[-1], widths[-1], low) + _conv(widths[-1], 2 * c_lat, 3, low)
    dec = _conv(c_lat, widths[-1], 3, low) + _resblock(widths[-1], widths[-1], low)
    for i in reversed(range(num)):
        dec += _conv(widths[i + 1], widths[i], 3, side >> i) + _resblock(widths[i], widths[i], side >> i)
    dec += _conv(widths[0], ch, 3, side)
    return float(enc), float(dec)


def discriminator_flops(channels: int, side: int, ndf: int) -> float:
    """Forward FLOPs of one image through the PatchGAN (tokenizers/_losses.py PatchGANDiscriminator)."""
    layers = max(1, min(MAX_DISC_LAYERS, int(math.log2(max(side, 8) / 4))))
    side = side // 2
    total, mult = _conv(channels, ndf, 4, side), 1
    for n in range(1, layers):
        prev, mult = mult, min(2 ** n, 8)
        side //= 2
        total += _conv(ndf * prev, ndf * mult, 4, side)
    prev, mult = mult, min(2 ** layers, 8)
    side -= 1  # kernel 4, stride 1, padding 1
    total += _conv(ndf * prev, ndf * mult, 4, side)
    side -= 1
    total += _conv(ndf * mult, 1, 4, side)
    return float(total)


def encode_flops(r: Recipe) -> float:
    """Tokenizer encode FLOPs per image (PCA, AE and VAE: one Linear per patch; conv VAE: its encoder)."""
    name = r.tokenizer.name
    if name == TokenizerName.conv_vae:
        return conv_vae_flops(r)[0]
    if name == TokenizerName.pixel:
        return 0.0
    out = 2 * r.tokenizer.latent_dim if name == TokenizerName.patch_vae else r.tokenizer.latent_dim
    return float(2 * r.num_tokens() * r.patch_dim(r.channels) * out)


def tokenizer_fit_flops(r: Recipe) -> float:
    """Fitting the tokenizer (tokenizer.fit_epochs over its images); PCA's eigen-decomposition is negligible."""
    name = r.tokenizer.name
    if name in (TokenizerName.pixel, TokenizerName.patch_pca):
        return 0.0
    n = split_sizes(r)[0] if r.data.name.value != "imagefolder" else min(split_sizes(r)[0], TOKENIZER_SAMPLE)
    tk = r.tokenizer
    if name in (TokenizerName.patch_ae, TokenizerName.patch_vae):
        per_image = 3 * (encode_flops(r) + 2 * r.num_tokens() * tk.latent_dim * r.patch_dim(r.channels))
    else:
        enc, dec = conv_vae_flops(r)
        per_image = 3 * (enc + dec)
        if tk.perceptual_weight > 0:  # forward on the image and the reconstruction, backward through the latter
            side = max(r.data.image_size, PERCEPTUAL_MIN_SIDE)
            per_image += 4 * PERCEPTUAL_FLOPS_64PX * (side / PERCEPTUAL_MIN_SIDE) ** 2
        if tk.adversarial_weight > 0:  # second half: generator term (3x) + discriminator step on real and fake (6x)
            per_image += (1 - ADV_WARMUP_FRACTION) * 9 * discriminator_flops(r.channels, r.data.image_size,
                                                                              tk.conv_channels)
    return per_image * n * tk.fit_epochs


def dit_parameters(size: str, *, tokens: int, in_dim: int, out_dim: int, cond_mlp_ratio: float = 0.25) -> int:
    """Weights of the DiT (Linears and their biases; norms without affine weights, fixed position code): the
    per-token FLOPs of `dit_forward_flops` without attention are 2 x these, less the per-image terms."""
    spec = MODEL_SIZES[size]
    c = spec.width
    hidden = c if cond_mlp_ratio == 1.0 else max(1, round(cond_mlp_ratio * c))
    modulation = c * 6 * c + 6 * c if cond_mlp_ratio == 1.0 else c * hidden + hidden + hidden * 6 * c + 6 * c
    block = 3 * c * c + 3 * c + c * c + c + c * MLP_RATIO * c + MLP_RATIO * c + MLP_RATIO * c * c + c + modulation
    embed = in_dim * c + c + FREQUENCY_EMBEDDING_SIZE * c + c + c * c + c
    final = c * 2 * c + 2 * c + c * out_dim + out_dim
    return embed + spec.depth * block + final
