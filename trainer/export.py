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
network (the method's `teacher_backbone()`), for the methods that keep one (DINO evaluates its
teacher). Which entries of the checkpoint's model state are the backbone is read from the method
built on the meta device (no memory, no weights).

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
from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.errors import CheckpointError
from selfsup.trainer.config import Config, config_from_dict
from selfsup.trainer.model import backbone_options, build_model, recipe_for


def backbone_prefix(config: Config, weights: str = "student") -> str:
    """The prefix of the backbone's entries in the `state_dict` of `config`'s method: its `backbone`
    ("student") or its `teacher_backbone()` ("teacher"), found on the method built on the meta device."""
    if weights not in ("student", "teacher"):
        raise ValueError(f"weights={weights!r}; expected 'student' or 'teacher'")
    with torch.device("meta"):
        model = build_model(config, load_tokenizer=False)
    backbone = model.backbone if weights == "student" else model.teacher_backbone()
    if backbone is None:
        raise CheckpointError(f"{config.method.name} keeps no teacher backbone; export the student with "
                              "weights='student'")
    return next(name for name, module in model.named_modules() if module is backbone) + "."


def backbone_weights(model_state: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a method's `state_dict` under `prefix` (see `backbone_prefix`), without it."""
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


def load_plain_backbone(checkpoint: str | Path, weights: str = "student"):
    """(the plain backbone of `checkpoint`, strictly loaded, in eval mode; its feature dimension;
    the run's config; the backbone's kwargs; the checkpoint's state): what every export format
    writes (wrappers and pretraining-only parameters removed)."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    try:
        prefix = backbone_prefix(config, weights)
    except CheckpointError as error:
        raise CheckpointError(f"{checkpoint}: {error}") from None
    plain_weights, extra = plain_backbone(backbone_weights(state["model"], prefix))
    kwargs = backbone_options(config) | extra
    backbone, feature_dim = build_backbone(config.model.backbone, **kwargs)
    try:
        backbone.load_state_dict(plain_weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{checkpoint}: the backbone weights do not fit {config.model.backbone}: {error}") from None
    return backbone.eval(), feature_dim, config, kwargs, state


def export_backbone(checkpoint: str | Path, output: str | Path, weights: str = "student") -> dict:
    """Write the backbone of `checkpoint` to `output` (+ `.json` sidecar); returns the sidecar's content."""
    checkpoint, output = Path(checkpoint), Path(output)
    backbone, feature_dim, config, kwargs, state = load_plain_backbone(checkpoint, weights)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    torch.save({key: value.detach().cpu().clone() for key, value in backbone.state_dict().items()}, temporary)
    os.replace(temporary, output)
    sidecar = {"backbone": config.model.backbone, "kwargs": kwargs, "feature_dim": feature_dim,
               "method": config.method.name, "weights": weights, "step": int(state.get("step", 0)),
               "checkpoint": str(checkpoint.resolve()), "input": _input_description(config, kwargs)}
    sidecar_path = output.with_suffix(".json")
    temporary = sidecar_path.with_name(f".{sidecar_path.name}.tmp")
    temporary.write_text(json.dumps(sidecar, indent=1) + "\n")
    os.replace(temporary, sidecar_path)
    return sidecar


def _input_description(config: Config, kwargs: dict) -> str:
    """What the exported backbone reads: one lightness channel, or RGB normalized as the recipe did."""
    if kwargs.get("in_channels") == 1:
        return LIGHTNESS_INPUT
    recipe = recipe_for(config)
    return f"RGB, normalized with the recipe's mean {list(recipe.mean)} and std {list(recipe.std)}"
