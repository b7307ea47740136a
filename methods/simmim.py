"""SimMIM: a simple framework for masked image modeling (Xie et al., CVPR 2022, arXiv:2111.09886).

A random 60% of 32x32 mask cells is masked. Unlike MAE the encoder sees every patch: the
embeddings of masked patches are replaced by a learned mask token (Sec. 3.1), and a one-layer
linear head predicts the raw pixels of every patch (Sec. 3.3). The loss is the L1 error on the
masked pixels only (Sec. 3.4), against the input image (normalized as it enters the network),
or, with `target_window` (an odd size in pixels), against the image standardized over each
pixel's neighbourhood, the official code's later ``NORM_TARGET`` (47 px at 192 px; see
`normalize_locally`).

The mask is drawn per sample in the data graph (the `simmim` recipe: `mask`, bool, True =
masked, on the grid of mask cells of `patch_size` pixels, 32 in the paper, a multiple of the
ViT patch size, which the config check enforces; `mask_ratio` and `patch_size` are recipe
options); it is upsampled here to the ViT's patch grid. The backbone gets its learned mask
token here (``use_mask_token``).
``random_cell_mask`` draws the same kind of mask in torch, for tests.

Batch: `view_0` (B, 3, S, S), `mask` (B, cells). Output: `loss`, `reconstruction`, `mask_ratio`.
ViT backbones only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.losses import normalize_locally, simmim_loss, unpatchify
from selfsup.methods.protocol import OptimizerStep


@dataclass
class SimMIMOptions:
    name: str = "simmim"
    target_window: int = 0  # 0: raw pixels (the paper); odd: locally normalized target


def random_cell_mask(batch: int, grid: tuple[int, int], ratio: float,
                     device: torch.device) -> torch.Tensor:
    """(B, rows * columns) bool, True = masked: ceil(ratio * cells) random cells per sample."""
    cells = grid[0] * grid[1]
    masked = min(max(int(-(-ratio * cells // 1)), 1), cells)
    ranks = torch.rand(batch, cells, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < masked


def upsample_mask(mask: torch.Tensor, cell_grid: tuple[int, int], scale: int) -> torch.Tensor:
    """A (B, r * c) mask on a cell grid -> (B, r*s * c*s) on a grid `scale` times finer."""
    batch = mask.shape[0]
    grid = mask.reshape(batch, *cell_grid)
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return grid.reshape(batch, -1)


class SimMIM(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, target_window: int = 0):
        super().__init__()
        if target_window and (target_window < 3 or target_window % 2 == 0):
            raise ValueError(f"method.target_window={target_window}: expected 0 (raw pixels) or an odd "
                             "window of 3 or more pixels")
        self.target_window = target_window
        if backbone.kind != "vit":
            raise ValueError(f"simmim needs a ViT backbone (vit_tiny, vit_small, vit_base), not a {backbone.kind}")
        if backbone.mask_token is None:  # the learned token that replaces masked patch embeddings
            backbone.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
            nn.init.trunc_normal_(backbone.mask_token, std=0.02)
        self.backbone = backbone
        self.patch_size = backbone.patch_size
        self.decoder = nn.Linear(feature_dim, self.patch_size ** 2 * 3)  # the one-layer head

    def patch_mask(self, batch: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """The recipe's mask upsampled to the model's patch grid: (B, N) bool."""
        if "mask" not in batch:
            raise KeyError("simmim needs the recipe's mask (batch key 'mask'); the batch has "
                           f"{sorted(batch)}")
        rows, columns = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        mask = batch["mask"].bool().reshape(images.shape[0], -1)
        if mask.shape[1] == rows * columns:
            return mask
        scale = int(round((rows * columns / mask.shape[1]) ** 0.5))
        if scale < 1 or mask.shape[1] * scale * scale != rows * columns:
            raise ValueError(f"simmim: a mask of {mask.shape[1]} cells does not fit the {rows}x{columns} "
                             f"patch grid; data.recipe.patch_size must be a multiple of the ViT patch "
                             f"size ({self.patch_size}) and divide the image size")
        return upsample_mask(mask, (rows // scale, columns // scale), scale)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["view_0"]
        mask = self.patch_mask(batch, images)
        tokens = self.backbone.forward_tokens(images, mask, mask_token=True)[:, 1:]  # (B, N, D)
        reconstruction = unpatchify(self.decoder(tokens), self.patch_size, tuple(images.shape[-2:]))
        target = normalize_locally(images, self.target_window) if self.target_window else images.float()
        loss = simmim_loss(reconstruction.float(), target, mask, self.patch_size)
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


def build_simmim(options: SimMIMOptions, backbone: nn.Module, feature_dim: int) -> SimMIM:
    return SimMIM(backbone, feature_dim, options.target_window)
