"""Building the method module a config describes, and seeding every generator.

`build_model(config)` builds the backbone from `methods.backbones` with `backbone_options(config)`
and hands it to the method's builder from the registry; `recipe_for(config)` builds the method's
view recipe from `data.recipe` and the options the model section sets (MAE's patch size: every
caller that builds a recipe from a config goes through it, so the two cannot disagree);
`check_buildable(config)` builds both, the model on the meta device, to refuse a config before
anything is launched; `size_memory_bank` and `check_labels` hold the config against the dataset.
A method whose options name a `tokenizer` (BEiT) gets it from here, since methods import no
trainer: `resolve_tokenizer(config)` checks the dvae run it names (a run folder or checkpoint:
there, a dvae run, the grid of the config's ViT) and fills in its sizes, which the launcher
and `build_run` do before anything is built, so that a run's saved config builds its whole model;
`build_model` builds the tokenizer's encoder from them and loads its weights from that run
(`load_tokenizer`), or leaves that to the checkpoint that is loaded next (evaluation, export and
the resume check, which need no tokenizer run: a BEiT checkpoint holds its tokenizer).
`prepare_model` applies the options that change how the model runs rather than what it is:
SyncBatchNorm across ranks and channels-last memory layout.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from selfsup.methods.backbones import build_backbone
from selfsup.methods.registry import method_entry
from selfsup.pipeline.dataset import DatasetInfo
from selfsup.pipeline.recipes import Recipe, build_recipe
from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.trainer.config import RECIPE_OPTIONS_FROM_MODEL, Config, config_from_dict
from selfsup.trainer.resume import find_checkpoint
from selfsup.errors import CheckpointError, ConfigError, DatasetError

TOKENIZER_BACKBONE = "dvae_encoder"  # the dvae method's encoder, BEiT's tokenizer
TOKENIZER_PREFIX = "backbone."  # where the dvae method keeps its encoder in its state_dict


def backbone_options(config: Config) -> dict:
    """Constructor arguments for the configured backbone."""
    if config.model.backbone.startswith("resnet"):
        return {"small_input": config.model.small_input, "dilated_stages": config.model.dilated_stages}
    if config.model.dilated_stages:
        raise ConfigError(f"model.dilated_stages={config.model.dilated_stages}: only ResNets have stages to "
                          f"dilate, not {config.model.backbone}")
    if config.model.backbone == TOKENIZER_BACKBONE:
        if config.method.name != "dvae":
            raise ConfigError(f"model.backbone={TOKENIZER_BACKBONE} is the dvae method's encoder (its logits are "
                              f"over method.codebook_size); {config.method.name} takes a resnet or vit backbone")
        return {"patch_size": config.model.patch_size, "codebook_size": config.method.codebook_size,
                "hidden_dim": config.method.hidden_dim}
    return {"img_size": config.data.image_size, "patch_size": config.model.patch_size,
            "global_pool": config.model.global_pool}


def build_model(config: Config, load_tokenizer: bool = True) -> torch.nn.Module:
    """The method module (with its `backbone`) described by a config. A method with a tokenizer
    (BEiT) gets it built from `resolve_tokenizer`'s sizes, with the weights of the tokenizer's run
    when `load_tokenizer` (False where a checkpoint's state is loaded next)."""
    backbone, feature_dim = build_backbone(config.model.backbone, **backbone_options(config))
    entry = method_entry(config.method.name)
    if hasattr(config.method, "tokenizer"):
        return entry.build(config.method, backbone, feature_dim, build_tokenizer(config, load_tokenizer))
    return entry.build(config.method, backbone, feature_dim)


def tokenizer_run(config: Config) -> tuple[Config, dict]:
    """The config and state of the dvae checkpoint that `method.tokenizer` names, checked: there,
    a dvae run, and tokenizing the config's ViT patch grid. Raises ConfigError naming the key."""
    path = config.method.tokenizer
    try:
        state = load_checkpoint(find_checkpoint(path))
        tokenizer_config = config_from_dict(state["config"])
    except (CheckpointError, ConfigError, KeyError) as error:
        raise ConfigError(f"method.tokenizer: {error}; train the tokenizer first: "
                          f"selfsup train --config dvae --data DATA --output {path}") from None
    if tokenizer_config.method.name != "dvae":
        raise ConfigError(f"method.tokenizer={path}: a {tokenizer_config.method.name} run, not a dvae tokenizer "
                          f"(selfsup train --config dvae)")
    theirs, ours = tokenizer_config.data.image_size, config.data.image_size
    cell, patch = tokenizer_config.model.patch_size, config.model.patch_size
    if (theirs // cell, cell) != (ours // patch, patch):
        raise ConfigError(f"method.tokenizer={path}: its grid is {theirs // cell}x{theirs // cell} cells of {cell} px "
                          f"({theirs} px images), the ViT's {ours // patch}x{ours // patch} patches of {patch} px "
                          f"({ours} px); train the tokenizer with data.image_size={ours} model.patch_size={patch}")
    return tokenizer_config, state


def resolve_tokenizer(config: Config) -> Config:
    """`config` with its tokenizer's path made absolute and its sizes (`tokenizer_codebook_size`,
    `tokenizer_hidden_dim`) read from the dvae run (see `tokenizer_run`); an explicit size that
    differs is a ConfigError. A config without a tokenizer is returned as it is."""
    if not hasattr(config.method, "tokenizer"):
        return config
    tokenizer_config = tokenizer_run(config)[0]
    sizes = {"tokenizer_codebook_size": tokenizer_config.method.codebook_size,
             "tokenizer_hidden_dim": tokenizer_config.method.hidden_dim}
    for key, value in sizes.items():
        if getattr(config.method, key) not in (0, value):
            raise ConfigError(f"method.{key}={getattr(config.method, key)}, but the tokenizer "
                              f"{config.method.tokenizer} has {value}; set 0 to take the tokenizer's")
    path = str(Path(config.method.tokenizer).resolve())
    return dataclasses.replace(config, method=dataclasses.replace(config.method, tokenizer=path, **sizes))


def build_tokenizer(config: Config, load_weights: bool) -> torch.nn.Module:
    """The encoder of the config's dvae tokenizer, sized by `resolve_tokenizer` (done here when the
    config's sizes are unset), with the dvae run's weights when `load_weights`."""
    options = config.method
    if not (options.tokenizer_codebook_size and options.tokenizer_hidden_dim):
        options = resolve_tokenizer(config).method
    tokenizer, _ = build_backbone(TOKENIZER_BACKBONE, patch_size=config.model.patch_size,
                                  codebook_size=options.tokenizer_codebook_size,
                                  hidden_dim=options.tokenizer_hidden_dim)
    if load_weights:
        model_state = tokenizer_run(config)[1]["model"]
        weights = {key[len(TOKENIZER_PREFIX):]: value for key, value in model_state.items()
                   if key.startswith(TOKENIZER_PREFIX)}
        try:
            tokenizer.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise ConfigError(f"method.tokenizer={options.tokenizer}: its encoder does not fit "
                              f"method.tokenizer_codebook_size={options.tokenizer_codebook_size} and "
                              f"method.tokenizer_hidden_dim={options.tokenizer_hidden_dim}: {error}") from None
    return tokenizer


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
    A tokenizer (BEiT's) must be a dvae run there that fits the ViT (`resolve_tokenizer`).
    Raises ConfigError (or the recipe's RecipeError, a ValueError)."""
    recipe_for(config)
    config = resolve_tokenizer(config)
    try:
        with torch.device("meta"):
            build_model(config, load_tokenizer=False)
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
