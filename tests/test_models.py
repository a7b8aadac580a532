"""The DiT denoiser: sizes, shapes, conditioning, init, gradients, features and attention backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

from sweepdae.errors import RecipeError
from sweepdae.models import MODEL_SIZES, Denoiser, DiTBlock, create_model, get_2d_sincos_pos_embed, model_names
from sweepdae.recipe import MODEL_DEPTHS, ModelSize

N, D_IN, D_OUT, B = 16, 8, 12, 3


def _inputs(num_classes: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D_IN, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, num_classes, (B,), generator=g) if num_classes else None
    return x, t, y


def _micro(**kw: object) -> Denoiser:
    torch.manual_seed(0)
    return create_model("micro", in_dim=D_IN, out_dim=D_OUT, num_tokens=N, **kw)  # type: ignore[arg-type]


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _blocks(m: Denoiser) -> list[DiTBlock]:
    blocks = list(m.blocks)
    assert all(isinstance(b, DiTBlock) for b in blocks)
    return blocks  # type: ignore[return-value]


def _mod(b: DiTBlock) -> nn.Sequential:
    assert isinstance(b.adaLN_modulation, nn.Sequential)
    return b.adaLN_modulation


def _lin(seq: nn.Sequential, i: int) -> nn.Linear:
    layer = seq[i]
    assert isinstance(layer, nn.Linear)
    return layer


def test_size_registry() -> None:
    assert model_names() == [m.value for m in ModelSize]
    assert MODEL_SIZES["micro"] == (128, 6, 4)
    assert MODEL_SIZES["tiny"] == (192, 12, 3)
    assert MODEL_SIZES["small"] == (384, 12, 6)
    assert MODEL_SIZES["base"] == (768, 24, 12)  # ViT-B, 12 + 12
    assert MODEL_SIZES["half_large"] == (1024, 24, 16)  # DiT-L
    assert MODEL_SIZES["large"] == (1024, 48, 16)  # ViT-L, 24 + 24
    assert {k: v.depth for k, v in MODEL_SIZES.items()} == MODEL_DEPTHS  # the recipe's copy agrees
    # the small stand-ins keep the paper's encoder ratios: B = 3/4 the width of 1/2L, L = twice its depth
    for small in ("micro", "tiny"):
        half, b, big = MODEL_SIZES[small], MODEL_SIZES[f"{small}_b"], MODEL_SIZES[f"{small}_l"]
        assert b.width * 1024 == half.width * 768 and b.depth == half.depth
        assert big.depth * 24 == half.depth * 48 and big.width == half.width
    with pytest.raises(RecipeError, match="valid: micro_b, micro, micro_l"):
        create_model("huge", in_dim=4, out_dim=4, num_tokens=4)


@pytest.mark.parametrize("size", ["small", "base", "half_large", "large"])
def test_big_sizes_build_on_meta(size: str) -> None:
    with torch.device("meta"):
        m = create_model(size, in_dim=32, out_dim=768, num_tokens=256)
    spec = MODEL_SIZES[size]
    assert len(m.blocks) == spec.depth and m.encoder_depth == spec.depth // 2 and m.width == spec.width


def test_base_blocks_are_vit_b_blocks_plus_adaln() -> None:
    w = 768
    with torch.device("meta"):
        m = create_model("base", in_dim=32, out_dim=768, num_tokens=256)
        vit_block = Block(w, num_heads=12, mlp_ratio=4.0, qkv_bias=True)
    vit_trunk = _count(vit_block) - 4 * w  # timm's block has affine LayerNorms; DiT's norms have none
    assert vit_trunk == 7_084_800
    for blk in _blocks(m):
        assert _count(blk.attn) + _count(blk.mlp) == vit_trunk
        assert _count(blk.adaLN_modulation) == w * 6 * w + 6 * w  # DiT's SiLU + Linear(w, 6w)
    with torch.device("meta"):
        small_cond = create_model("base", in_dim=32, out_dim=768, num_tokens=256, cond_mlp_ratio=0.25)
    h = w // 4  # l-DAE: per-block conditioning MLP hidden = width / 4
    assert _count(_blocks(small_cond)[0].adaLN_modulation) == (w * h + h) + (h * 6 * w + 6 * w)


def test_half_large_matches_dit_l2_parameter_count() -> None:
    # DiT-L/2 on 32x32x4 VAE latents: tokens of 2x2x4 = 16 values in, 2x2x8 = 32 out (eps + learned variance),
    # 1000 classes; DiT's paper reports 458M parameters (its count includes the 256 x 1024 frozen pos_embed).
    with torch.device("meta"):
        m = create_model("half_large", in_dim=16, out_dim=32, num_tokens=256, num_classes=1000)
    assert abs(_count(m) + 256 * 1024 - 458e6) < 0.5e6


@pytest.mark.parametrize("size", ["micro", "tiny"])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_forward_shapes(size: str, num_classes: int) -> None:
    m = create_model(size, in_dim=D_IN, out_dim=D_OUT, num_tokens=N, num_classes=num_classes, adaln_zero=False)
    x, t, y = _inputs(num_classes)
    out = m(x, t, y)
    assert out.shape == (B, N, D_OUT)
    assert m.features(x, t, y).shape == (B, MODEL_SIZES[size].width)
    assert (m.y_embedder is None) == (num_classes == 0)
    assert m(x, t.float() + 0.5, y).shape == (B, N, D_OUT)  # fractional t (samplers on respaced grids)


def test_adaln_zero_starts_at_zero_output() -> None:
    x, t, _ = _inputs()
    assert torch.equal(_micro()(x, t), torch.zeros(B, N, D_OUT))
    assert _micro(adaln_zero=False)(x, t).abs().sum() > 0


def test_cond_mlp_ratio_structure() -> None:
    one = _mod(_blocks(_micro())[0])
    assert [type(m) for m in one] == [nn.SiLU, nn.Linear]
    quarter = _mod(_blocks(_micro(cond_mlp_ratio=0.25))[0])
    assert [type(m) for m in quarter] == [nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]
    assert _lin(quarter, 1).out_features == 32 and _lin(quarter, 3).out_features == 6 * 128
    assert torch.count_nonzero(_lin(quarter, 3).weight) == 0  # adaLN-Zero: the last Linear
    assert torch.count_nonzero(_lin(quarter, 1).weight) > 0


def test_class_conditioning_null_class_and_guidance() -> None:
    m = _micro(num_classes=10, adaln_zero=False).eval()
    x, t, y = _inputs(10)
    assert y is not None
    assert m.y_embedder is not None and m.y_embedder.embedding_table.num_embeddings == 11  # + null class
    cond, null = m(x, t, y), m(x, t, None)
    assert not torch.allclose(cond, null)
    forced = m(x, t, y, force_drop_ids=torch.ones(B, dtype=torch.long))
    assert torch.allclose(forced, null, atol=1e-6)
    assert torch.allclose(m.forward_with_cfg(x, t, y, 1.0), cond, atol=1e-5)
    assert torch.allclose(m.forward_with_cfg(x, t, y, 0.0), null, atol=1e-5)
    guided = m.forward_with_cfg(x, t, y, 4.0)
    assert torch.allclose(guided, null + 4.0 * (cond - null), atol=1e-4)
    with pytest.raises(ValueError, match="class-conditional"):
        _micro().forward_with_cfg(x, t, y, 4.0)


def test_label_dropout_only_in_training() -> None:
    m = _micro(num_classes=10, class_dropout=0.5, adaln_zero=False)
    x, t, y = _inputs(10)
    m.eval()
    assert torch.equal(m(x, t, y), m(x, t, y))
    m.train()
    torch.manual_seed(3)
    outs = {m(x, t, y)[:, 0, 0].sum().item() for _ in range(8)}
    assert len(outs) > 1  # some labels were dropped to the null class


def test_features_equal_manual_block_loop() -> None:
    m = _micro(num_classes=10, adaln_zero=False).eval()
    x, t, y = _inputs(10)
    h = m.x_embedder(x) + m.pos_embed
    assert m.y_embedder is not None and y is not None
    c = m.t_embedder(t) + m.y_embedder(y, False)
    expected = {0: h.mean(1)}
    for i, blk in enumerate(m.blocks):
        h = blk(h, c)
        expected[i + 1] = h.mean(1)
    for depth in range(m.depth + 1):
        assert torch.allclose(m.features(x, t, y, depth=depth), expected[depth], atol=1e-5)
    assert torch.allclose(m.features(x, t, y), expected[m.encoder_depth], atol=1e-5)
    assert m.encoder_depth == 3
    with pytest.raises(ValueError):
        m.features(x, t, y, depth=7)


@pytest.mark.parametrize("grid", [7, 4])
def test_quadrant_features_are_the_quadrant_means_of_the_token_grid(grid: int) -> None:
    """features(pool="2x2") on a G x G grid: rows and columns split at ceil(G / 2), each quadrant averaged, in the
    order top-left, top-right, bottom-left, bottom-right; weighted by quadrant size they average to the mean pool."""
    torch.manual_seed(0)
    m = Denoiser(in_dim=3, out_dim=3, num_tokens=grid * grid, width=16, depth=2, heads=2, adaln_zero=False).eval()
    x, t = torch.randn(5, grid * grid, 3), torch.tensor([1, 5, 9, 20, 999])
    with torch.no_grad():
        c = m.t_embedder(t)
        tokens = m.blocks[0](m.x_embedder(x) + m.pos_embed, c).numpy()  # [B, N, C] after the encoder's one block
        got = m.features(x, t, pool="2x2").numpy()
        mean = m.features(x, t).numpy()
    assert got.shape == (5, 4 * 16) and mean.shape == (5, 16)
    img = tokens.reshape(5, grid, grid, 16)  # raster order: token i is row i // G, column i % G
    s = -(-grid // 2)
    blocks = [img[:, :s, :s], img[:, :s, s:], img[:, s:, :s], img[:, s:, s:]]
    if grid == 7:
        assert [b.shape[1:3] for b in blocks] == [(4, 4), (4, 3), (3, 4), (3, 3)]
    for i, b in enumerate(blocks):
        np.testing.assert_allclose(got[:, 16 * i:16 * (i + 1)], b.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    sizes = [b.shape[1] * b.shape[2] for b in blocks]
    weighted = sum(n * got[:, 16 * i:16 * (i + 1)] for i, n in enumerate(sizes)) / grid ** 2
    np.testing.assert_allclose(weighted, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, tokens.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_quadrant_features_need_a_grid_of_two_by_two() -> None:
    m = Denoiser(in_dim=3, out_dim=3, num_tokens=1, width=16, depth=2, heads=2).eval()
    x, t = torch.randn(2, 1, 3), torch.tensor([1, 2])
    assert m.features(x, t).shape == (2, 16)
    with pytest.raises(ValueError, match="2 x 2"):
        m.features(x, t, pool="2x2")
    with pytest.raises(ValueError):
        m.features(x, t, pool="3x3")


def test_fused_and_unfused_attention_agree() -> None:
    fused = _micro(num_classes=10, adaln_zero=False).eval()
    plain = _micro(num_classes=10, adaln_zero=False, fused_attn=False).eval()
    plain.load_state_dict(fused.state_dict())
    assert all(b.attn.fused_attn for b in _blocks(fused)) and not any(b.attn.fused_attn for b in _blocks(plain))
    x, t, y = _inputs(10)
    with torch.no_grad():
        assert torch.allclose(fused(x, t, y), plain(x, t, y), atol=1e-5, rtol=0)


def test_state_dict_keys_exclude_fixed_pos_embed() -> None:
    m = _micro()
    assert "pos_embed" not in m.state_dict()
    pe = get_2d_sincos_pos_embed(128, 4)
    assert pe.shape == (16, 128)
    assert torch.allclose(m.pos_embed[0], torch.tensor(pe, dtype=torch.float32))
    # token (row 0, col 0): every sin is 0 and every cos is 1 (MAE layout: [sin h, cos h, sin w, cos w])
    assert pe[0, :32].max() == 0 and pe[0, 32:64].min() == 1


def _loss(m: Denoiser, num_classes: int) -> torch.Tensor:
    x, t, y = _inputs(num_classes)
    target = torch.randn(B, N, D_OUT, generator=torch.Generator().manual_seed(9))
    return (m(x, t, y) - target).pow(2).mean()


@pytest.mark.parametrize("cond_mlp_ratio", [1.0, 0.25])
def test_every_parameter_gets_a_gradient_without_adaln_zero(cond_mlp_ratio: float) -> None:
    m = _micro(num_classes=10, adaln_zero=False, cond_mlp_ratio=cond_mlp_ratio)
    m.train()
    _loss(m, 10).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_every_parameter_trains_with_adaln_zero() -> None:
    # Zero-init gates and output layer: at step 0 most gradients are exactly zero, but none is missing, and after
    # a few steps the zero layers have moved and every parameter receives a non-zero gradient.
    m = _micro(cond_mlp_ratio=0.25)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    _loss(m, 0).backward()
    assert all(p.grad is not None for p in m.parameters())
    for _ in range(3):
        opt.step()
        opt.zero_grad()
        _loss(m, 0).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="square"):
        create_model("micro", in_dim=4, out_dim=4, num_tokens=15)
    with pytest.raises(ValueError, match="encoder_depth"):
        create_model("micro", in_dim=4, out_dim=4, num_tokens=16, encoder_depth=6)
    with pytest.raises(ValueError, match=r"shape \[B, 16, 4\]"):
        create_model("micro", in_dim=4, out_dim=4, num_tokens=16)(torch.zeros(2, 16, 5), torch.zeros(2))
