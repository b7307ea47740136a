"""MAE: masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022, arXiv:2111.06377).

A random 75% of the patches are masked. The ViT encoder sees only the visible 25% (the masked
patches are dropped, not replaced: Sec. 3 "MAE encoder"); a light decoder (8 blocks of width
512) gets the encoded visible tokens back in their places, a shared learned mask token in every
masked place, fixed 2-D sine-cosine position embeddings, and predicts the pixels of each patch.
The loss is the mean squared error on the masked patches only, against per-patch normalized
pixels (``norm_pix_loss``, Sec. 3 "Reconstruction target").

The mask is drawn per sample in the data graph (the `mae` recipe: `mask`, (B, N) bool, True =
masked, the same count in every sample, on the ViT's patch grid; `mask_ratio` is a recipe
option, the patch size is the model's: the trainer builds the recipe with ``model.patch_size``).
``random_mask`` draws the same kind of mask in torch, for tests.

Batch: `view_0` (B, 3, S, S), `mask` (B, N). Output: `loss`, `reconstruction`, `mask_ratio`.
ViT backbones only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.vision_transformer import Block
from selfsup.methods.losses import mae_loss
from selfsup.methods.protocol import OptimizerStep


@dataclass
class MAEOptions:
    name: str = "mae"
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    normalize_pixels: bool = True  # norm_pix_loss


def random_mask(batch: int, num_patches: int, ratio: float, device: torch.device) -> torch.Tensor:
    """(B, N) bool, True = masked: round(ratio * N) patches per sample, uniformly at random."""
    masked = int(round(ratio * num_patches))
    masked = min(max(masked, 1), num_patches - 1)  # keep at least one visible, one hidden
    ranks = torch.rand(batch, num_patches, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < masked


def sincos_position_embeddings(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embeddings of a (rows, columns) patch grid: (rows * columns, dim).

    Half of the dimensions encode the row, half the column; each half is
    [sin(pos * w_k), cos(pos * w_k)] with w_k = 1 / 10000^(k / (dim / 4)) (MAE / MoCo v3).
    """
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, columns = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                   torch.arange(grid[1], dtype=torch.float64), indexing="ij")

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = values.reshape(-1, 1) * frequencies  # (rows * columns, dim / 4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(columns)], dim=1).float()


def patch_mask(batch: dict[str, torch.Tensor], num_patches: int, patch_size: int) -> torch.Tensor:
    """The recipe's mask, checked against the ViT's patch grid: (B, N) bool."""
    if "mask" not in batch:
        raise KeyError(f"mae needs the recipe's patch mask (batch key 'mask'); the batch has {sorted(batch)}")
    mask = batch["mask"].bool()
    if mask.shape[1] != num_patches:
        raise ValueError(f"mae: the mask has {mask.shape[1]} cells but the ViT sees {num_patches} "
                         f"patches; the recipe's patch_size must be the ViT's ({patch_size})")
    return mask


class MAE(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, *, decoder_dim: int,
                 decoder_depth: int, decoder_heads: int,
                 normalize_pixels: bool):
        super().__init__()
        if backbone.kind != "vit":
            raise ValueError(f"mae needs a ViT backbone (vit_tiny, vit_small, vit_base), not a {backbone.kind}")
        self.backbone = backbone
        self.patch_size = backbone.patch_size
        self.normalize_pixels = normalize_pixels
        self.decoder_embed = nn.Linear(feature_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def decode(self, encoded: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Encoded (B, 1 + N_visible, D) + mask (B, N) -> pixel predictions (B, N, p * p * 3)."""
        tokens = self.decoder_embed(encoded)  # (B, 1 + N_vis, Dd)
        cls, visible = tokens[:, :1], tokens[:, 1:]
        batch, num_patches = mask.shape
        # visible tokens back in their places (ascending patch order), the mask token elsewhere
        placed = visible.new_zeros(batch, num_patches, visible.shape[-1])
        placed = placed.masked_scatter(~mask.unsqueeze(-1), visible)
        full = torch.where(mask.unsqueeze(-1), self.mask_token.to(placed.dtype), placed)
        position = sincos_position_embeddings(grid, full.shape[-1]).to(full.device, full.dtype)
        full = torch.cat([cls, full + position], dim=1)  # (B, 1 + N, Dd); cls position = 0
        for block in self.decoder_blocks:
            full = block(full)
        return self.decoder_pred(self.decoder_norm(full))[:, 1:]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["view_0"]
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        num_patches = grid[0] * grid[1]
        mask = patch_mask(batch, num_patches, self.patch_size)
        encoded = self.backbone.forward_tokens(images, mask)  # the visible patches only
        predictions = self.decode(encoded, mask, grid)  # (B, N, p * p * 3)
        loss = mae_loss(predictions.float(), images.float(), mask, self.patch_size,
                        normalize_pixels=self.normalize_pixels)
        return {"loss": loss, "reconstruction": loss.detach(),
                "mask_ratio": mask.float().mean().detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Nothing changes between steps."""

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_mae(options: MAEOptions, backbone: nn.Module, feature_dim: int) -> MAE:
    return MAE(backbone, feature_dim, decoder_dim=options.decoder_dim, decoder_depth=options.decoder_depth,
               decoder_heads=options.decoder_heads, normalize_pixels=options.normalize_pixels)

