"""Vision Transformer encoder (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

A class token, learned position embeddings and pre-norm blocks, in the timm / DINO / MAE
parameter layout. It accepts crops of any size that is a multiple of the patch size (position
embeddings are bicubically resized to the input grid, as in DINO) and masked inputs: MAE style
(masked patches are dropped) or SimMIM style (masked patches replaced by a learned mask token).
`vit_tiny`, `vit_small` and `vit_base` are registered in `methods.backbones.BACKBONES`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.protocol import BackboneKind


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> linear embeddings: (B, C, H, W) -> (B, H/p * W/p, D).

    Patches are numbered row-major over the (H/p, W/p) grid.
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


class Attention(nn.Module):
    """Multi-head self-attention with ``scaled_dot_product_attention``: (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head_dim)
        x = F.scaled_dot_product_attention(query, key, value)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); optional drop-path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))
        self.drop_path = drop_path

    def _residual(self, branch: torch.Tensor) -> torch.Tensor:
        """Stochastic depth (Huang et al. 2016): drop the whole branch per sample in training."""
        if not self.training or self.drop_path == 0.0:
            return branch
        keep = 1.0 - self.drop_path
        shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
        return branch * branch.new_empty(shape).bernoulli_(keep) / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._residual(self.attn(self.norm1(x)))
        return x + self._residual(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT encoder with a class token and learned position embeddings.

    * ``forward(x, mask=None) -> (B, D)``: pooled features after the final norm: the class token
      (``global_pool="token"``, ViT/DINO/MoCo v3) or the mean of the patch tokens
      (``global_pool="avg"``, as MAE and SimMIM evaluate their encoders; their class token gets
      no training signal of its own).
    * ``forward_tokens(x, mask=None, mask_token=False) -> (B, 1 + N_kept, D)``: all tokens after
      the final norm; token 0 is the class token.

    ``x`` is (B, C, H, W) with H, W multiples of ``patch_size`` (any size; position embeddings are
    resized bicubically to the (H/p, W/p) grid). ``mask`` is a bool tensor (B, N) with N =
    (H/p) * (W/p), patches numbered row-major, True = masked-out patch.

    * MAE style (``mask_token=False``): masked patches are dropped before the blocks; every sample
      must mask the same number of patches; kept patches stay in ascending index order, so
      N_kept = N - masked count.
    * SimMIM style (``mask_token=True``, needs ``use_mask_token=True`` at construction): masked
      patch embeddings are replaced by a learned token before adding position embeddings;
      N_kept = N. The token is opt-in so that methods not using it have no unused parameter
      (DDP would complain).
    """

    kind: BackboneKind = "vit"

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        use_mask_token: bool = False,
        global_pool: str = "token",
    ):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' (the class token) or 'avg' (the mean of the "
                             f"patch tokens), got {global_pool!r}")
        self.global_pool = global_pool
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.feature_dim: int = embed_dim
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.patch_embed = PatchEmbedding(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        drop_rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # linear
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, drop_rates[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # patch projection initialised like a linear layer over flattened patches (as in MAE)
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(embed_dim, -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def patch_position_embeddings(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """Position embeddings of the patches for a (grid_height, grid_width) grid: (1, h*w, D).

        The learned table is used as is for the native grid, resized otherwise (DINO).
        """
        table = self.pos_embed[:, 1:]
        if (grid_height, grid_width) == (self.grid_size, self.grid_size):
            return table
        return resize_position_embeddings(table, (grid_height, grid_width))

    def forward_tokens(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: bool = False
    ) -> torch.Tensor:
        batch = x.shape[0]
        grid_height, grid_width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x)  # (B, N, D)
        num_patches = tokens.shape[1]
        if mask is not None:
            _check_mask(mask, batch, num_patches)
        if mask is not None and mask_token:
            if self.mask_token is None:
                raise ValueError("mask_token=True needs a backbone built with use_mask_token=True")
            weight = mask.unsqueeze(-1).to(tokens.dtype)  # (B, N, 1), 1 = masked
            tokens = tokens * (1.0 - weight) + self.mask_token.to(tokens.dtype) * weight
        tokens = tokens + self.patch_position_embeddings(grid_height, grid_width)
        if mask is not None and not mask_token:
            kept_counts = (~mask).sum(dim=1)
            if not bool((kept_counts == kept_counts[0]).all()):
                raise ValueError(
                    "every sample must keep the same number of patches when masked patches are "
                    f"dropped; got kept counts {kept_counts.tolist()}"
                )
            # boolean indexing keeps row-major order within each sample: (B * N_kept, D)
            tokens = tokens[~mask].reshape(batch, int(kept_counts[0]), self.embed_dim)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)  # (B, 1 + N_kept, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: bool = False
    ) -> torch.Tensor:
        tokens = self.forward_tokens(x, mask, mask_token)
        return tokens[:, 0] if self.global_pool == "token" else tokens[:, 1:].mean(dim=1)


def resize_position_embeddings(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a square grid of patch position embeddings (as DINO does).

    Shapes: table (1, g*g, D) -> (1, grid[0] * grid[1], D). Resizing to the same grid returns
    the table unchanged (up to float rounding).
    """
    _, num_positions, dim = table.shape
    side = int(round(num_positions**0.5))
    if side * side != num_positions:
        raise ValueError(f"{num_positions} position embeddings do not form a square grid")
    image = table.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    image = F.interpolate(image, size=grid, mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


def _check_mask(mask: torch.Tensor, batch: int, num_patches: int) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if tuple(mask.shape) != (batch, num_patches):
        raise ValueError(
            f"mask must have shape (B, N) = ({batch}, {num_patches}), got {tuple(mask.shape)}"
        )


def vit_tiny(**kwargs) -> VisionTransformer:
    """ViT-Ti/16: dim 192, depth 12, 3 heads (5.5M parameters at 224 px)."""
    return VisionTransformer(embed_dim=192, depth=12, num_heads=3, **kwargs)


def vit_small(**kwargs) -> VisionTransformer:
    """ViT-S/16: dim 384, depth 12, 6 heads (21.7M parameters at 224 px)."""
    return VisionTransformer(embed_dim=384, depth=12, num_heads=6, **kwargs)


def vit_base(**kwargs) -> VisionTransformer:
    """ViT-B/16: dim 768, depth 12, 12 heads (85.8M parameters at 224 px)."""
    return VisionTransformer(embed_dim=768, depth=12, num_heads=12, **kwargs)
