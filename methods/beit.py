"""BEiT: BERT pre-training of image transformers (Bao et al., ICLR 2022, arXiv:2106.08254).

Masked image modeling with visual tokens. A tokenizer maps every 16 x 16 patch of the view to
one of K discrete codes (Sec. 2.2; the paper uses DALL-E's dVAE, here the `dvae` method's
encoder, trained first: ``selfsup train --config dvae``). About 40% of the patches are masked
block-wise (Sec. 2.5, Algorithm 1: the `beit` recipe's `mask`, drawn per sample in the data
graph); the ViT sees every patch, the embeddings of the masked ones replaced by a learned mask
token (Sec. 2.3), and a linear head over its final tokens predicts, for each masked patch, the
tokenizer's code of that patch: cross-entropy over the K codes on the masked positions
(``losses.beit_loss``, Eq. 1).

The tokenizer runs inside the step, on the training device, under ``torch.no_grad`` and in eval
mode (``train()`` leaves it there), in float32 (no autocast, so that the codes are the argmax of
the tokenizer's exact logits), on the same view the ViT sees: its grid of cells is the ViT's
patch grid (the builder refuses another patch size). It is a frozen submodule: its parameters
take no gradient (the optimizer skips them) but are in ``state_dict``, so a BEiT checkpoint
resumes with the very tokenizer it started with and is evaluated and exported without the
tokenizer's run (``trainer.model.build_model`` builds its architecture from the config's
`tokenizer_codebook_size` and `tokenizer_hidden_dim`, which are filled from the tokenizer's
checkpoint before launch).

Batch: `view_0` (B, 3, S, S), `mask` (B, N) bool on the ViT's patch grid. Output: `loss`,
`beit`, `accuracy` (masked patches whose most likely code is the tokenizer's), `mask_ratio`.
ViT backbones only. State: `tokenizer.` (frozen), `backbone.mask_token`, `head.`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.methods.protocol import OptimizerStep
from selfsup.methods.discrete_vae import DVAEEncoder
from selfsup.methods.losses import beit_loss


@dataclass
class BEiTOptions:
    name: str = "beit"
    tokenizer: str = "runs/dvae"  # the dvae run (or checkpoint) whose encoder gives the codes
    tokenizer_codebook_size: int = 0  # 0: the tokenizer's, read from its checkpoint before launch
    tokenizer_hidden_dim: int = 0  # 0: the tokenizer's, read from its checkpoint before launch


def frozen(module: nn.Module) -> nn.Module:
    """`module` in eval mode with no parameter taking a gradient (in place; returns it)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


class BEiT(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, tokenizer: DVAEEncoder):
        super().__init__()
        if backbone.kind != "vit":
            raise ValueError(f"beit needs a ViT backbone (vit_tiny, vit_small, vit_base), not a {backbone.kind}")
        if not isinstance(tokenizer, DVAEEncoder):
            raise ValueError(f"beit's tokenizer must be a dvae encoder, not a {type(tokenizer).__name__}")
        if tokenizer.patch_size != backbone.patch_size:
            raise ValueError(f"the tokenizer gives one code per {tokenizer.patch_size} px cell, the ViT sees "
                             f"{backbone.patch_size} px patches; train the tokenizer with model.patch_size="
                             f"{backbone.patch_size}")
        if backbone.mask_token is None:  # the learned token that replaces masked patch embeddings
            backbone.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
            nn.init.trunc_normal_(backbone.mask_token, std=0.02)
        self.backbone = backbone
        self.patch_size = backbone.patch_size
        self.tokenizer = frozen(tokenizer)
        self.codebook_size = tokenizer.codebook_size
        self.head = nn.Linear(feature_dim, self.codebook_size)  # the masked image modeling head
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> "BEiT":
        """Train mode for everything but the tokenizer, which stays in eval mode."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N) int64: the tokenizer's code of every patch, in reading order."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.tokenizer.codes(images.float())

    def patch_mask(self, batch: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """The recipe's mask, checked against the ViT's patch grid: (B, N) bool."""
        if "mask" not in batch:
            raise KeyError(f"beit needs the recipe's patch mask (batch key 'mask'); the batch has {sorted(batch)}")
        mask = batch["mask"].bool().reshape(images.shape[0], -1)
        patches = (images.shape[-2] // self.patch_size) * (images.shape[-1] // self.patch_size)
        if mask.shape[1] != patches:
            raise ValueError(f"beit: the mask has {mask.shape[1]} cells but the ViT sees {patches} patches; "
                             f"the recipe's patch_size must be the ViT's ({self.patch_size})")
        return mask

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["view_0"]
        mask = self.patch_mask(batch, images)
        codes = self.tokenize(images)  # (B, N)
        tokens = self.backbone.forward_tokens(images, mask, mask_token=True)[:, 1:]  # (B, N, D)
        masked_logits = self.head(tokens[mask]).float()  # (M, K), the masked patches only
        loss = beit_loss(masked_logits, codes, mask)
        with torch.no_grad():
            accuracy = (masked_logits.argmax(dim=1) == codes[mask]).float().mean()
        return {"loss": loss, "beit": loss.detach(), "accuracy": accuracy,
                "mask_ratio": mask.float().mean().detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Nothing changes between steps (the tokenizer is frozen)."""

    def teacher_backbone(self) -> None:
        return None

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        return []

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def optimizer_steps(self) -> list[OptimizerStep]:
        """One optimizer over every trainable parameter, minimising "loss"."""
        return []


def build_beit(options: BEiTOptions, backbone: nn.Module, feature_dim: int, tokenizer: DVAEEncoder) -> BEiT:
    """BEiT over `tokenizer`, the encoder of the dvae run `options.tokenizer` (loaded, or built to be
    loaded from a BEiT checkpoint, by ``trainer.model.build_model``)."""
    for field, value in (("tokenizer_codebook_size", tokenizer.codebook_size),
                         ("tokenizer_hidden_dim", tokenizer.hidden_dim)):
        if getattr(options, field) not in (0, value):
            raise ValueError(f"method.{field}={getattr(options, field)}, but the tokenizer {options.tokenizer} "
                             f"has {value}; leave it 0 to take the tokenizer's")
    return BEiT(backbone, feature_dim, tokenizer)
