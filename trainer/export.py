"""Exporting a pretrained backbone as a plain PyTorch `state_dict` that needs no part of selfsup's trainer.

`export_backbone(checkpoint, output)` writes:

- `output` (e.g. `backbone.pt`): `torch.save` of the backbone's `state_dict`, tensors only, loadable
  with `torch.load(..., weights_only=True)` into `methods.backbones.build_backbone(name, **kwargs)`
  with `strict=True`;
- `output` with the suffix `.json` beside it: {"backbone", "kwargs", "feature_dim", "method",
  "weights", "step", "checkpoint"}, what is needed to build that backbone.

Loading it elsewhere:

    spec = json.load(open("backbone.json"))
    backbone, _ = build_backbone(spec["backbone"], **spec["kwargs"])
    backbone.load_state_dict(torch.load("backbone.pt", weights_only=True), strict=True)

`weights="teacher"` exports the momentum teacher / target / key encoder instead of the online
network, for the methods that keep one (DINO evaluates its teacher).

What a method adds around its backbone is left out, so every export is a plain backbone: SimMIM's
learned mask token (only used to replace masked patches in pretraining) is dropped, and
colorization's lightness-input wrapper is unwrapped into a backbone with `in_channels: 1` in its
kwargs; the sidecar's "input" then says what that one channel holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from selfsup.methods.backbones import build_backbone
from selfsup.pipeline.recipes import IMAGENET_MEAN, IMAGENET_STD
from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.errors import CheckpointError
from selfsup.trainer.config import config_from_dict
from selfsup.trainer.model import backbone_options

TEACHER_PREFIXES = ("teacher_backbone.", "target_backbone.", "momentum_backbone.", "key_backbone.")


def teacher_prefix(state_keys) -> str | None:
    """The prefix of the teacher backbone's entries among a method's `state_dict` keys (the first
    of `TEACHER_PREFIXES` present), or None for a method that keeps no teacher."""
    keys = list(state_keys)
    return next((prefix for prefix in TEACHER_PREFIXES if any(key.startswith(prefix) for key in keys)), None)


def backbone_weights(model_state: dict, weights: str = "student") -> dict[str, torch.Tensor]:
    """The backbone's entries of a method's `state_dict`, without their prefix."""
    if weights == "student":
        prefix = "backbone."
    elif weights == "teacher":
        prefix = teacher_prefix(model_state)
        if prefix is None:
            raise CheckpointError("this method keeps no teacher backbone (no teacher_/target_/momentum_/key_backbone "
                                  "weights); export the student with weights='student'")
    else:
        raise ValueError(f"weights={weights!r}; expected 'student' or 'teacher'")
    return {key[len(prefix):]: value for key, value in model_state.items() if key.startswith(prefix)}


PRETRAINING_ONLY = ("mask_token",)  # parameters a backbone carries only while pretraining
FIRST_LAYERS = ("conv1.weight", "patch_embed.proj.weight")  # ResNet stem, ViT patch projection
LIGHTNESS_INPUT = "one channel: CIE Lab lightness L scaled as (L - 50) / 50"


def plain_backbone(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Backbone weights as the plain registered backbone takes them, and the constructor kwargs
    they need beyond the config's: an input wrapper (`net.` prefix) is unwrapped, pretraining-only
    parameters dropped, and a first layer reading other than 3 channels gives `in_channels`."""
    if weights and all(key.startswith("net.") for key in weights):
        weights = {key[len("net."):]: value for key, value in weights.items()}
    weights = {key: value for key, value in weights.items() if key not in PRETRAINING_ONLY}
    extra = {}
    for name in FIRST_LAYERS:
        if name in weights and weights[name].shape[1] != 3:
            extra["in_channels"] = int(weights[name].shape[1])
    return weights, extra


def export_backbone(checkpoint: str | Path, output: str | Path, weights: str = "student") -> dict:
    """Write the backbone of `checkpoint` to `output` (+ `.json` sidecar); returns the sidecar's content."""
    checkpoint, output = Path(checkpoint), Path(output)
    state = load_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    plain_weights, extra = plain_backbone(backbone_weights(state["model"], weights))
    kwargs = backbone_options(config) | extra
    backbone, feature_dim = build_backbone(config.model.backbone, **kwargs)
    try:
        backbone.load_state_dict(plain_weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{checkpoint}: the backbone weights do not fit {config.model.backbone}: {error}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    torch.save({key: value.detach().cpu().clone() for key, value in backbone.state_dict().items()}, temporary)
    os.replace(temporary, output)
    sidecar = {"backbone": config.model.backbone, "kwargs": kwargs, "feature_dim": feature_dim,
               "method": config.method.name, "weights": weights, "step": int(state.get("step", 0)),
               "checkpoint": str(checkpoint.resolve()),
               "input": LIGHTNESS_INPUT if kwargs.get("in_channels") == 1 else "RGB, normalized with the "
               f"recipe's mean {list(config.data.recipe.get('mean', IMAGENET_MEAN))} and std "
               f"{list(config.data.recipe.get('std', IMAGENET_STD))}"}
    sidecar_path = output.with_suffix(".json")
    temporary = sidecar_path.with_name(f".{sidecar_path.name}.tmp")
    temporary.write_text(json.dumps(sidecar, indent=1) + "\n")
    os.replace(temporary, sidecar_path)
    return sidecar
