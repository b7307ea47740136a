"""Exporting a pretrained backbone for other libraries: a timm model folder, or an ONNX graph.

`export_timm(checkpoint, folder)` writes what `timm.create_model("local-dir:FOLDER",
pretrained=True)` loads (timm's `_hub.load_model_config_from_path` and `load_state_dict_from_path`):

- `FOLDER/model.safetensors`: the backbone's `state_dict` under timm's names, which are ours
  for `resnet18`/`resnet50` (the torchvision layout, without `fc`) and the ViTs (timm's
  `VisionTransformer` layout, without `head`);
- `FOLDER/config.json`: {"architecture" (timm's model name), "num_classes": 0 (no classifier:
  the model returns pooled features), "num_features", "global_pool", "model_args" (what differs
  from timm's defaults: the ViT's image and patch size and pooling, a one-channel input),
  "pretrained_cfg" (input size, mean, std, crop, first conv, classifier)}.

Only layouts timm builds the same way are exported: a ResNet with the small-input (CIFAR) stem or
dilated stages is refused (timm has no such stem; export `state_dict` or `onnx` instead).

`export_onnx(checkpoint, output)` traces the backbone at (batch, C, S, S) with a dynamic batch
axis (input "images", output "features", opset 17) with torch's TorchScript-based exporter
(`dynamo=False`: the torch.export-based one needs the onnxscript package), and, when onnxruntime
is installed, checks onnxruntime's output against PyTorch's before the file takes its name.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from selfsup.errors import ConfigError
from selfsup.files import write_atomically
from selfsup.pipeline.recipes import IMAGENET_MEAN, IMAGENET_STD
from selfsup.trainer.config import Config
from selfsup.trainer.export import load_plain_backbone

TIMM_ARCHITECTURES = {"resnet18": "resnet18", "resnet50": "resnet50", "vit_tiny": "vit_tiny_patch16_224",
                      "vit_small": "vit_small_patch16_224", "vit_base": "vit_base_patch16_224"}
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-3  # largest absolute difference to PyTorch's features accepted


def exported_backbone(checkpoint: str | Path, weights: str = "student") -> tuple[torch.nn.Module, Config, dict]:
    """(the plain backbone of `checkpoint` in eval mode, the run's config, the backbone's kwargs),
    as `trainer.export.export_backbone` builds it (wrappers and pretraining-only parameters removed)."""
    backbone, _, config, kwargs, _ = load_plain_backbone(checkpoint, weights)
    return backbone, config, kwargs


def input_statistics(config: Config, channels: int) -> tuple[list[float], list[float]]:
    """The normalization the backbone expects: the recipe's RGB mean/std, or for a lightness input
    (colorization) L/100 normalized by 0.5/0.5, i.e. (L - 50) / 50."""
    if channels == 1:
        return [0.5], [0.5]
    return (list(config.data.recipe.get("mean", IMAGENET_MEAN)), list(config.data.recipe.get("std", IMAGENET_STD)))


def timm_config(name: str, kwargs: dict, feature_dim: int, image_size: int, mean: list[float],
                std: list[float]) -> dict:
    """The `config.json` of a timm model folder for backbone `name` built with `kwargs`."""
    if name not in TIMM_ARCHITECTURES:
        raise ConfigError(f"{name}: no timm architecture with this layout; export --format state_dict or onnx")
    channels = int(kwargs.get("in_channels", 3))
    is_vit = name.startswith("vit")
    if not is_vit and (kwargs.get("small_input") or kwargs.get("dilated_stages")):
        raise ConfigError(f"{name} with model.small_input={kwargs.get('small_input')} and model.dilated_stages="
                          f"{kwargs.get('dilated_stages')}: timm builds only the ImageNet stem without dilated "
                          "stages the same way; export --format state_dict or onnx instead")
    model_args = {"in_chans": channels} if channels != 3 else {}
    if is_vit:
        model_args |= {"img_size": image_size, "patch_size": int(kwargs["patch_size"]),
                       "global_pool": kwargs["global_pool"], "fc_norm": False}
    return {
        "architecture": TIMM_ARCHITECTURES[name],
        "num_classes": 0,
        "num_features": feature_dim,
        "global_pool": kwargs["global_pool"] if is_vit else "avg",
        "model_args": model_args,
        "pretrained_cfg": {
            "tag": "selfsup", "custom_load": False, "input_size": [channels, image_size, image_size],
            "fixed_input_size": is_vit, "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center",
            "mean": list(mean), "std": list(std), "num_classes": 0,
            "first_conv": "patch_embed.proj" if is_vit else "conv1", "classifier": "head" if is_vit else "fc",
        },
    }


def write_timm_folder(backbone: torch.nn.Module, name: str, kwargs: dict, folder: str | Path, *, image_size: int,
                      mean: list[float], std: list[float]) -> dict:
    """`folder/model.safetensors` (the backbone's state_dict) and, last, `folder/config.json`
    (`timm_config`); returns the config."""
    from safetensors.torch import save_file

    description = timm_config(name, kwargs, int(backbone.feature_dim), image_size, mean, std)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; --format timm writes a folder")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in backbone.state_dict().items()}
    partial = folder / "model.safetensors.partial"
    save_file(tensors, str(partial), metadata={"format": "pt"})
    os.replace(partial, folder / "model.safetensors")
    write_atomically(folder / "config.json", (json.dumps(description, indent=2) + "\n").encode("utf-8"))
    return description


def export_timm(checkpoint: str | Path, folder: str | Path, weights: str = "student") -> dict:
    """The backbone of `checkpoint` as a timm model folder (`write_timm_folder`); returns its config."""
    backbone, config, kwargs = exported_backbone(checkpoint, weights)
    mean, std = input_statistics(config, int(kwargs.get("in_channels", 3)))
    return write_timm_folder(backbone, config.model.backbone, kwargs, folder, image_size=config.data.image_size,
                             mean=mean, std=std)


def write_onnx(backbone: torch.nn.Module, input_shape: tuple[int, int, int, int], output: str | Path) -> float | None:
    """Trace `backbone` at `input_shape` into the ONNX file `output` (a dynamic batch axis), checked
    with onnxruntime first; returns the largest difference to PyTorch (None without onnxruntime)."""
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        with warnings.catch_warnings():  # the tracer's notes on Python branches over shapes: fixed for one size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(backbone.eval(), (example,), str(partial), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    except Exception as error:  # the tracer and the exporter raise many types
        partial.unlink(missing_ok=True)
        raise ConfigError(f"{type(backbone).__name__} at {tuple(input_shape[1:])} cannot be exported to ONNX "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from error
    difference = onnx_difference(partial, backbone, example)
    if difference is not None and difference > ONNX_TOLERANCE:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"{output}: onnxruntime's features differ from PyTorch's by up to {difference:.2e} "
                          f"(accepted: {ONNX_TOLERANCE}); the graph was not written")
    os.replace(partial, output)
    return difference


def export_onnx(checkpoint: str | Path, output: str | Path, weights: str = "student",
                image_size: int | None = None) -> dict:
    """Write the backbone of `checkpoint` as an ONNX graph to `output` (`write_onnx`) at the run's
    image size (or `image_size`); returns a summary with onnxruntime's largest difference."""
    backbone, config, kwargs = exported_backbone(checkpoint, weights)
    size = image_size or config.data.image_size
    shape = (2, int(kwargs.get("in_channels", 3)), size, size)
    difference = write_onnx(backbone, shape, output)
    return {"backbone": config.model.backbone, "input_shape": list(shape), "feature_dim": int(backbone.feature_dim),
            "opset": ONNX_OPSET, "max_difference": difference, "output": str(output)}


@torch.no_grad()
def onnx_difference(path: str | Path, backbone: torch.nn.Module, images: torch.Tensor) -> float | None:
    """The largest absolute difference between onnxruntime's output for `images` and the backbone's;
    None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (features,) = session.run(["features"], {"images": images.numpy()})
    return float((torch.from_numpy(features) - backbone(images)).abs().max())
