"""Typed run configuration: YAML -> dataclasses, strict keys, `--set key=value` overrides.

A config is a tree of dataclasses. `load_config` reads a YAML file, applies command-line
overrides and checks every key and type; a typo raises `ConfigError` naming the valid keys.
The method section is typed by the method's own options dataclass, looked up in
`methods.registry.METHODS` by `method.name`; `data.recipe`, a mapping, by the options dataclass
of that method's view recipe (`pipeline.recipes.recipe_options_type`), and checked against the
model section where the two meet (`RECIPE_OPTIONS_FROM_MODEL`, SimMIM's mask cells). `config_to_dict` turns a config back into plain
Python values for checkpoints, `config.yaml` and TensorBoard.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from selfsup.methods.registry import METHODS, method_entry
from selfsup.errors import ConfigError
from selfsup.pipeline.recipes import recipe_options_type


@dataclass
class DataConfig:
    path: str = ""  # a converted dataset folder (set by `--data`)
    batch_size: int = 256  # per worker
    image_size: int = 224
    num_threads: int = 0  # DALI threads per worker; 0 = this worker's share of the cores
    shuffle_buffer: int = 1024
    prefetch_depth: int = 2
    skip_corrupt: bool = False  # leave out samples that do not decode (or whose .cls is no class index) instead of stopping
    recipe: dict = field(default_factory=dict)  # options of the method's view recipe (checked, typed values)


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    small_input: bool = False  # CIFAR-style stem for images of 64 px or less (ResNets)
    dilated_stages: Literal[0, 1, 2] = 0  # ResNets: 1 or 2 last stages dilated instead of strided (finer maps for dense pretexts)
    patch_size: int = 16  # ViTs: pixels per patch side (8 suits images of 32-64 px)
    global_pool: Literal["token", "avg"] = "token"  # ViTs: features from the class token or the patch mean
    sync_batchnorm: bool = False  # BatchNorm statistics over all ranks (CUDA, more than one rank)


@dataclass
class OptimConfig:
    name: Literal["lars", "sgd", "adamw", "lamb"] = "lars"
    lr: float = 0.3  # for a global batch of `reference_batch_size`, scaled by `lr_scaling`
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    reference_batch_size: int = 256
    final_lr: float = 0.0  # absolute, reached at the last step
    warmup_epochs: float = 10.0
    weight_decay: float = 1e-6
    final_weight_decay: float | None = None  # None = constant weight decay
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    exclude_bias_and_norm: bool = True


@dataclass
class TrainerConfig:
    epochs: int = 100
    max_steps: int | None = None  # overrides epochs when set
    checkpoint_every: int = 1000  # steps; a checkpoint is always written at the end
    keep_checkpoints: int = 3
    log_every: int = 10
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU; fp16 with a grad scaler
    grad_clip: float | None = None  # max global gradient norm
    accumulate_steps: int = 1  # micro-batches of data.batch_size per optimizer step
    skip_nonfinite: bool = False  # skip a step whose loss is NaN/inf instead of stopping the run
    freeze_last_layer_epochs: float = 0.0  # no updates to the method's `last_layer_parameters()` at first
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # channels-last memory layout for model and views (faster convs on GPU)
    resume: str | None = None  # a checkpoint to continue from (`--resume`); the run's own newer intact ones win


@dataclass
class EvalConfig:
    knn_k: int = 20
    knn_temperature: float = 0.07
    batch_size: int = 256
    online_knn_every_epochs: int = 0  # kNN on the val split every N epochs during training (0 = off)


@dataclass
class Config:
    method: Any = None  # the method's options dataclass (has a `name`)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert one YAML value to the annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(repr(choice) for choice in choices)}, "
                              f"got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value, where)
    if origin is tuple:
        item_types = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{where}: expected a list of {len(item_types)} values, got {value!r}")
        return tuple(_coerce(item, item_type, f"{where}[{index}]")
                     for index, (item, item_type) in enumerate(zip(value, item_types)))
    if annotation is Any:
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {annotation!r}")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys{' in ' + where if where else ''}: "
            f"{', '.join(names)}"
        )
    values = {key: _coerce(value, hints[key], f"{where}.{key}" if where else key)
              for key, value in data.items()}
    return cls(**values)


def _method_from_dict(data: Any) -> Any:
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"method: expected a mapping with a 'name' (one of {', '.join(sorted(METHODS))})")
    try:
        entry = method_entry(data["name"])
    except KeyError as error:
        raise ConfigError(f"method.name: {error.args[0]}") from None
    return _from_dict(entry.options, data, "method")


# The smallest value each numeric key may take (None: no such key limit): checked by
# `config_from_dict`, so a bad value stops the command before Ray or any worker starts.
MINIMUMS = {
    "seed": 0, "data.batch_size": 1, "data.image_size": 1, "data.num_threads": 0, "data.shuffle_buffer": 0,
    "data.prefetch_depth": 1, "model.patch_size": 1, "optim.lr": 0, "optim.reference_batch_size": 1, "optim.final_lr": 0,
    "optim.warmup_epochs": 0, "optim.weight_decay": 0, "optim.final_weight_decay": 0, "optim.momentum": 0,
    "trainer.epochs": 1, "trainer.max_steps": 1, "trainer.checkpoint_every": 1, "trainer.keep_checkpoints": 1,
    "trainer.log_every": 1, "trainer.accumulate_steps": 1, "trainer.freeze_last_layer_epochs": 0,
    "trainer.grad_clip": 0, "eval.knn_k": 1, "eval.knn_temperature": 0, "eval.batch_size": 1,
    "eval.online_knn_every_epochs": 0,
}


def _check_minimums(config: Config) -> None:
    for key, minimum in MINIMUMS.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(config, section) if section else config, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{key}={value!r}: expected {minimum} or more")


# Recipe options that the model section sets, per recipe: {recipe option: model field}. MAE and BEiT
# mask the ViT's own patches, so their recipe's patch_size is model.patch_size (see
# trainer.model.recipe_for).
RECIPE_OPTIONS_FROM_MODEL = {"mae": {"patch_size": "patch_size"}, "beit": {"patch_size": "patch_size"}}


def _recipe_from_dict(config: Config) -> dict:
    """`data.recipe` read into the options dataclass of the method's recipe (known keys, their
    types) and checked against the model section; returns the given options with typed values."""
    recipe, given = method_entry(config.method.name).recipe, config.data.recipe
    options = _from_dict(recipe_options_type(recipe), given, "data.recipe")
    for option, model_field in RECIPE_OPTIONS_FROM_MODEL.get(recipe, {}).items():
        model_value = getattr(config.model, model_field)
        if option in given and getattr(options, option) != model_value:
            raise ConfigError(f"data.recipe.{option}={getattr(options, option)!r}, but the {recipe} recipe takes "
                              f"it from model.{model_field}={model_value!r}; leave data.recipe.{option} out")
    if recipe == "simmim" and options.patch_size % config.model.patch_size:
        raise ConfigError(f"data.recipe.patch_size={options.patch_size}: SimMIM's mask cells must be a multiple "
                          f"of model.patch_size={config.model.patch_size}")
    return {key: getattr(options, key) for key in given}


def config_from_dict(data: dict) -> Config:
    """A checked Config from plain values (a parsed YAML file or a checkpoint's config): known
    keys, the annotated types (one of the `Literal` choices where a value is one of a few), the
    `MINIMUMS`, and `data.recipe` read as the method's recipe's options."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    method = _method_from_dict(data.pop("method", None))
    config = _from_dict(Config, data, "")
    config.method = method
    _check_minimums(config)
    config.data.recipe = _recipe_from_dict(config)
    return config


def config_to_dict(config: Config) -> dict:
    """Plain nested dicts/lists/scalars (tuples become lists), safe for YAML and weights_only."""
    def plain(value):
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value
    return plain(dataclasses.asdict(config))


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `dotted.key=value` (value parsed as YAML) to a plain config dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. optim.lr=0.3")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def shipped_configs() -> dict[str, Path]:
    """The configs installed with selfsup (`configs/*.yaml` of the source tree): name -> file."""
    folder = resources.files("selfsup.configs")
    return {Path(entry.name).stem: Path(str(entry)) for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file: `name_or_path` itself when it is a file, else the shipped config of that name
    (`simclr` or `simclr.yaml`); a ConfigError naming the shipped ones otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.name[:-len(".yaml")] if path.name.endswith(".yaml") else path.name
    if len(path.parts) == 1 and name in shipped:
        return shipped[name]
    raise ConfigError(f"config {name_or_path}: no such file and no shipped config of that name; "
                      f"shipped configs: {', '.join(shipped)} (`selfsup configs` lists them)")


def read_config_file(name_or_path: str | Path) -> dict:
    """The YAML of a config file or shipped config, as a plain dict."""
    path = resolve_config_path(name_or_path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Read a YAML config (a file, or a shipped config's name such as `simclr`; or start from
    `base`), apply overrides, check everything."""
    if path is not None:
        data = read_config_file(path)
    else:
        data = dict(base or {})
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path else str(error)) from None


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    temporary.replace(path)
