"""Backbones: registry-driven shape tests, parameter counts, position-embedding resizing, masking."""

from __future__ import annotations

import pytest
import torch

from selfsup.methods.backbones import BACKBONES, build_backbone
from selfsup.methods.vision_transformer import VisionTransformer, resize_position_embeddings

FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "vit_tiny": 192, "vit_small": 384, "vit_base": 768,
                "dvae_encoder": 256}


def small_kwargs(name: str) -> dict:
    return {"img_size": 32} if name.startswith("vit") else {}


def test_registry_names():
    assert set(BACKBONES) == set(FEATURE_DIMS)


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_build_and_shapes(name):
    torch.manual_seed(0)
    module, dim = build_backbone(name, **small_kwargs(name))
    assert dim == FEATURE_DIMS[name] == module.feature_dim
    assert isinstance(module.feature_dim, int)
    module.eval()
    sizes = [32] if name == "vit_base" else [32, 64]
    with torch.no_grad():
        for size in sizes:
            assert module(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_unknown_backbone_lists_known_names():
    with pytest.raises(KeyError, match="resnet18"):
        build_backbone("resnet1000")


# ----------------------------------------------------------------------------- ResNet


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnet_parameter_counts_match_torchvision():
    # torchvision resnet18 / resnet50 totals minus their fc layers (513,000 and 2,049,000)
    assert parameter_count(build_backbone("resnet18")[0]) == 11_176_512
    assert parameter_count(build_backbone("resnet50")[0]) == 23_508_032


def test_resnet_small_input_stem_keeps_resolution():
    module, dim = build_backbone("resnet18", small_input=True)
    module.eval()
    with torch.no_grad():
        features = module.forward_features(torch.randn(2, 3, 32, 32))
        assert features.shape == (2, 512, 4, 4)  # 32 / 8: no stride-2 stem, no max-pool
        assert module(torch.randn(2, 3, 64, 64)).shape == (2, dim)
    default, _ = build_backbone("resnet18")
    with torch.no_grad():
        assert default.eval().forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("dilated_stages, step", [(1, 2), (2, 4)])
def test_dilated_stages_compute_the_strided_map_at_a_finer_stride(name, dilated_stages, step):
    """A dilated stage (stride 1, dilation 2) evaluated at every `step`-th position is the strided
    network itself: same weights, same state-dict layout, finer map."""
    torch.manual_seed(0)
    plain, _ = build_backbone(name)
    dilated, feature_dim = build_backbone(name, dilated_stages=dilated_stages)
    assert [(k, v.shape) for k, v in dilated.state_dict().items()] == [(k, v.shape) for k, v in plain.state_dict().items()]
    dilated.load_state_dict(plain.state_dict())
    plain.eval(), dilated.eval()
    x = torch.randn(2, 3, 96, 96)  # 3 x 3 at stride 32
    with torch.no_grad():
        coarse, fine = plain.forward_features(x), dilated.forward_features(x)
    assert coarse.shape == (2, feature_dim, 3, 3) and fine.shape == (2, feature_dim, 3 * step, 3 * step)
    assert dilated.output_stride == 32 // step and plain.output_stride == 32
    torch.testing.assert_close(fine[..., ::step, ::step], coarse, rtol=1e-4, atol=1e-4)


def test_dilated_stages_with_the_small_stem_and_bad_values():
    backbone, _ = build_backbone("resnet18", small_input=True, dilated_stages=2)
    assert backbone.output_stride == 2
    assert backbone.forward_features(torch.randn(1, 3, 48, 48)).shape == (1, 512, 24, 24)
    with pytest.raises(ValueError, match="dilated_stages=3: expected 0, 1 or 2"):
        build_backbone("resnet18", dilated_stages=3)


@pytest.mark.parametrize("name, last_norm", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual(name, last_norm):
    module, _ = build_backbone(name, zero_init_residual=True)
    block = module.layer2[0]
    assert torch.count_nonzero(getattr(block, last_norm).weight) == 0
    assert torch.all(block.bn1.weight == 1)
    plain, _ = build_backbone(name)
    assert torch.all(getattr(plain.layer2[0], last_norm).weight == 1)


# ----------------------------------------------------------------------------- ViT


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                             use_mask_token=True).eval()


def test_vit_attributes():
    module, _ = build_backbone("vit_small", img_size=224)
    assert module.patch_size == 16 and module.num_patches == 196
    assert module.pos_embed.shape == (1, 197, 384)
    assert module.patch_embed.proj.kernel_size == (16, 16)
    assert module.mask_token is None  # opt-in, so DDP sees no unused parameter


def test_vit_tokens_and_multiple_resolutions(vit):
    with torch.no_grad():
        assert vit.forward_tokens(torch.randn(2, 3, 32, 32)).shape == (2, 1 + 4, 32)
        assert vit.forward_tokens(torch.randn(2, 3, 64, 48)).shape == (2, 1 + 12, 32)
        assert vit(torch.randn(2, 3, 96, 96)).shape == (2, 32)
    with pytest.raises(ValueError, match="multiple"):
        vit(torch.randn(1, 3, 40, 40))


def test_position_embedding_resize_is_identity_on_the_native_grid(vit):
    table = vit.pos_embed[:, 1:].detach()
    resized = resize_position_embeddings(table, (2, 2))
    assert torch.allclose(resized, table, atol=1e-6)
    # hence forcing the resize path at img_size gives the native output
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        native = vit(x)
        original = vit.patch_position_embeddings
        vit.patch_position_embeddings = lambda h, w: resize_position_embeddings(
            vit.pos_embed[:, 1:], (h, w)
        )
        try:
            forced = vit(x)
        finally:
            vit.patch_position_embeddings = original
    assert torch.allclose(native, forced, atol=1e-5)
    larger = resize_position_embeddings(table, (4, 3))
    assert larger.shape == (1, 12, 32)


def manual_encoder(vit, x, kept_indices):
    """Reference MAE encoder: embed, add positions, gather kept patches by index, run blocks."""
    grid = x.shape[-1] // vit.patch_size
    tokens = vit.patch_embed(x) + vit.patch_position_embeddings(grid, grid)
    index = kept_indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    tokens = torch.gather(tokens, 1, index)
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    tokens = torch.cat([cls, tokens], dim=1)
    for block in vit.blocks:
        tokens = block(tokens)
    return vit.norm(tokens)


def test_mae_masking_drops_exactly_the_masked_patches(vit):
    x = torch.randn(3, 3, 64, 64)  # 16 patches
    generator = torch.Generator().manual_seed(0)
    kept = torch.stack([torch.randperm(16, generator=generator)[:4].sort().values for _ in range(3)])
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[torch.arange(3).unsqueeze(1), kept] = False
    with torch.no_grad():
        tokens = vit.forward_tokens(x, mask)
        assert tokens.shape == (3, 1 + 4, 32)
        assert torch.allclose(tokens, manual_encoder(vit, x, kept), atol=1e-5)
        assert torch.allclose(vit(x, mask), tokens[:, 0])
        # the content of masked patches cannot matter
        noisy = x.clone()
        for b in range(3):
            for patch in mask[b].nonzero().flatten().tolist():
                row, column = divmod(patch, 4)
                noisy[b, :, row * 16 : (row + 1) * 16, column * 16 : (column + 1) * 16] = 100.0
        assert torch.allclose(vit.forward_tokens(noisy, mask), tokens, atol=1e-5)


def test_simmim_mask_token_replaces_masked_patches(vit):
    x = torch.randn(2, 3, 32, 32)
    mask = torch.tensor([[True, False, False, True], [False, False, False, True]])
    with torch.no_grad():
        tokens = vit.forward_tokens(x, mask, mask_token=True)
        assert tokens.shape == (2, 5, 32)
        embedded = vit.patch_embed(x)
        embedded[mask] = vit.mask_token[0, 0]
        reference = torch.cat(
            [(vit.cls_token + vit.pos_embed[:, :1]).expand(2, -1, -1), embedded + vit.pos_embed[:, 1:]], 1
        )
        for block in vit.blocks:
            reference = block(reference)
        assert torch.allclose(tokens, vit.norm(reference), atol=1e-5)
        noisy = x.clone()
        noisy[0, :, :16, :16] = 50.0  # patch 0 of sample 0 is masked
        assert torch.allclose(vit.forward_tokens(noisy, mask, mask_token=True), tokens, atol=1e-5)


def test_bad_masks_raise(vit):
    x = torch.randn(2, 3, 32, 32)
    uneven = torch.tensor([[True, False, False, False], [True, True, False, False]])
    with pytest.raises(ValueError, match="same number"):
        vit.forward_tokens(x, uneven)
    with pytest.raises(ValueError, match="shape"):
        vit.forward_tokens(x, torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        vit.forward_tokens(x, torch.zeros(2, 4))
    plain = VisionTransformer(img_size=32, embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="use_mask_token"):
        plain.forward_tokens(x, uneven, mask_token=True)


def test_vit_gradients_reach_every_parameter():
    module = VisionTransformer(img_size=32, embed_dim=16, depth=2, num_heads=2, drop_path_rate=0.1)
    module.train()
    module(torch.randn(2, 3, 48, 48)).sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_vit_global_pool_is_the_class_token_or_the_mean_of_the_patch_tokens():
    torch.manual_seed(0)
    token = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2).eval()
    average = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                global_pool="avg").eval()
    average.load_state_dict(token.state_dict())  # pooling adds no parameter
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = token.forward_tokens(x)  # (2, 1 + 16, 16)
        assert torch.equal(token(x), tokens[:, 0])
        assert torch.allclose(average(x), tokens[:, 1:].mean(dim=1))
        kept = torch.zeros(2, 16, dtype=torch.bool)
        kept[:, :12] = True  # MAE style: 4 visible patches; the mean covers only those
        assert torch.allclose(average(x, kept), average.forward_tokens(x, kept)[:, 1:].mean(dim=1))
    with pytest.raises(ValueError, match="global_pool"):
        VisionTransformer(img_size=32, embed_dim=16, depth=1, num_heads=2, global_pool="max")
