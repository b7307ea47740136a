"""Building the method module a config describes, and seeding every generator.

`build_model(config)` builds the backbone from `methods.backbones` with `backbone_options(config)`
and hands it to the method's builder from the registry; `recipe_for(config)` builds the method's
view recipe from `data.recipe` and the options the model section sets (MAE's patch size: every
caller that builds a recipe from a config goes through it, so the two cannot disagree);
`check_buildable(config)` builds both, the model on the meta device, to refuse a config before
anything is launched; `size_memory_bank` and `check_labels` hold the config
against the dataset.
`prepare_model` applies the options that change how the model runs rather than what it is:
SyncBatchNorm across ranks and channels-last memory layout.
"""

from __future__ import annotations

import dataclasses

import random

import numpy as np
import torch

from selfsup.methods.backbones import build_backbone
from selfsup.methods.registry import method_entry
from selfsup.pipeline.dataset import DatasetInfo
from selfsup.pipeline.recipes import Recipe, build_recipe
from selfsup.trainer.config import RECIPE_OPTIONS_FROM_MODEL, Config
from selfsup.errors import ConfigError, DatasetError


def backbone_options(config: Config) -> dict:
    """Constructor arguments for the configured backbone."""
    if config.model.backbone.startswith("resnet"):
        return {"small_input": config.model.small_input, "dilated_stages": config.model.dilated_stages}
    if config.model.dilated_stages:
        raise ConfigError(f"model.dilated_stages={config.model.dilated_stages}: only ResNets have stages to "
                          f"dilate, not {config.model.backbone}")
    return {"img_size": config.data.image_size, "patch_size": config.model.patch_size,
            "global_pool": config.model.global_pool}


def build_model(config: Config) -> torch.nn.Module:
    """The method module (with its `backbone`) described by a config."""
    backbone, feature_dim = build_backbone(config.model.backbone, **backbone_options(config))
    return method_entry(config.method.name).build(config.method, backbone, feature_dim)


def recipe_arguments(config: Config) -> dict:
    """The options of the config's view recipe: `data.recipe`, with those the model section sets
    (`RECIPE_OPTIONS_FROM_MODEL`: MAE's mask follows `model.patch_size`)."""
    recipe = method_entry(config.method.name).recipe
    from_model = {option: getattr(config.model, model_field)
                  for option, model_field in RECIPE_OPTIONS_FROM_MODEL.get(recipe, {}).items()}
    return {**config.data.recipe, **from_model}


def recipe_for(config: Config) -> Recipe:
    """The view recipe that feeds the config's method, at `data.image_size` (raises RecipeError)."""
    return build_recipe(method_entry(config.method.name).recipe, config.data.image_size, **recipe_arguments(config))


def check_buildable(config: Config) -> None:
    """Build the view recipe, and the model on the meta device (no memory, no weights), so that an
    option no recipe or constructor accepts (an image size that is not a multiple of the ViT patch
    size, an unknown loss) is a one-line error before any worker starts, not a traceback in each.
    Raises ConfigError (or the recipe's RecipeError, a ValueError)."""
    recipe_for(config)
    try:
        with torch.device("meta"):
            build_model(config)
    except (ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise ConfigError(f"{config.model.backbone} + {config.method.name}: {message}") from error
    except (NotImplementedError, RuntimeError):  # a constructor that needs real tensors: the workers build it
        pass


def size_memory_bank(config: Config, train_samples: int) -> Config:
    """`config` with the memory bank of a method that keeps one row per training image (NPID,
    DeepCluster-v2) sized to the training split: `method.memory_bank_size: 0`, the shipped
    configs' value, becomes `train_samples`. An explicit size must equal it: fewer rows fail at the
    first unseen index, more leave rows that are never written (and DeepCluster's k-means would no
    longer run once per epoch), so a different one is a ConfigError naming both."""
    size = getattr(config.method, "memory_bank_size", None)
    if size is None:
        return config
    if size == 0:
        return dataclasses.replace(config, method=dataclasses.replace(config.method, memory_bank_size=train_samples))
    if size != train_samples:
        raise ConfigError(f"method.memory_bank_size={size}, but the training split of {config.data.path} "
                          f"has {train_samples} samples; set method.memory_bank_size={train_samples}, or 0 "
                          "to size the bank from the data")
    return config


def check_labels(config: Config, dataset: DatasetInfo) -> None:
    """A method that trains on the class labels (its options have `num_classes`: `supervised`)
    needs a labeled dataset with exactly that many classes: without labels the batch has no
    `label`, with more classes a label falls outside the classifier, with fewer some outputs
    are never trained."""
    num_classes = getattr(config.method, "num_classes", None)
    if num_classes is None:
        return
    if not dataset.labeled:
        raise DatasetError(f"{dataset.root}: method {config.method.name} trains on class labels, but this dataset "
                           "has none (converted from a flat folder); convert a folder of class folders")
    if num_classes != len(dataset.classes):
        raise ConfigError(f"method.num_classes={num_classes}, but {dataset.root} has {len(dataset.classes)} "
                          f"classes; set method.num_classes={len(dataset.classes)}")


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, numpy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_model(model: torch.nn.Module, *, sync_batchnorm: bool, channels_last: bool, world_size: int,
                  device: torch.device) -> torch.nn.Module:
    """Move `model` to `device`; SyncBatchNorm when asked, on CUDA with more than one rank; channels-last.

    SyncBatchNorm replaces BatchNorm layers in place of the module tree (the returned module is
    the one to keep); its parameters and buffers keep their names, so checkpoints load either way.
    """
    if sync_batchnorm and world_size > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_channels_last(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every 4-D tensor of a batch in channels-last memory layout (others unchanged)."""
    return {key: value.contiguous(memory_format=torch.channels_last) if value.dim() == 4 else value
            for key, value in batch.items()}
