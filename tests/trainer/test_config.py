"""The typed config: YAML and overrides in, checked dataclasses out, clear errors on typos."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from selfsup.errors import ConfigError
from selfsup.methods.simclr import SimCLROptions
from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.trainer.config import config_from_dict, config_to_dict, load_config, save_config, shipped_configs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIMCLR = CONFIGS / "simclr.yaml"


def test_shipped_simclr_config_loads_typed():
    config = load_config(SIMCLR)
    assert isinstance(config.method, SimCLROptions)
    assert config.method.temperature == 0.1
    assert config.model.backbone == "resnet50"
    assert config.optim.betas == (0.9, 0.999)
    assert config.trainer.max_steps is None


def test_overrides_are_parsed_and_typed():
    config = load_config(SIMCLR, ["optim.lr=0.6", "trainer.max_steps=5", "method.temperature=0.2",
                                  "data.recipe={scale: [0.2, 1.0]}", "optim.weight_decay=1e-5"])
    assert config.optim.lr == 0.6 and isinstance(config.optim.lr, float)
    assert config.trainer.max_steps == 5
    assert config.method.temperature == 0.2
    assert config.data.recipe == {"scale": (0.2, 1.0)}  # typed as the simclr recipe's option
    assert config.optim.weight_decay == 1e-5


def test_typo_names_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lrr.*valid keys in optim: name, lr"):
        load_config(SIMCLR, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key method\.temprature.*temperature"):
        load_config(SIMCLR, ["method.temprature=0.1"])


def test_wrong_type_and_unknown_method_are_refused():
    with pytest.raises(ConfigError, match=r"trainer\.epochs: expected an integer, got 'ten'"):
        load_config(SIMCLR, ["trainer.epochs=ten"])
    with pytest.raises(ConfigError, match=r"unknown method 'simclrr'; known methods: .*simclr"):
        load_config(SIMCLR, ["method.name=simclrr"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(SIMCLR, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"model\.global_pool: expected one of 'token', 'avg', got 'max'"):
        load_config(SIMCLR, ["model.global_pool=max"])
    assert load_config(SIMCLR, ["model.global_pool=avg"]).model.global_pool == "avg"
    with pytest.raises(ConfigError, match=r"model\.dilated_stages: expected one of 0, 1, 2, got 3"):
        load_config(SIMCLR, ["model.dilated_stages=3"])


def test_dilated_stages_reach_the_resnet_and_are_refused_for_a_vit():
    from selfsup.trainer.model import build_model, check_buildable

    model = build_model(load_config(SIMCLR, ["model.backbone=resnet18", "model.dilated_stages=2"]))
    assert model.backbone.output_stride == 8 and model.backbone.layer4[1].conv2.dilation == (4, 4)
    with pytest.raises(ConfigError, match="model.dilated_stages=1: only ResNets have stages to dilate, not vit_tiny"):
        check_buildable(load_config(SIMCLR, ["model.backbone=vit_tiny", "model.dilated_stages=1"]))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such file and no shipped config of that name; "
                                          "shipped configs: barlow_twins, .*byol"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_plain_dict_and_yaml(tmp_path):
    config = load_config(SIMCLR, ["trainer.max_steps=7"])
    plain = config_to_dict(config)
    assert plain["optim"]["betas"] == [0.9, 0.999]
    assert config_from_dict(plain) == config
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["method"]["name"] == "simclr"


@pytest.mark.parametrize("method", ["npid", "deepcluster_v2", "deepcluster", "odc"])
def test_a_memory_bank_is_sized_from_the_training_split(method, demo_shards, tmp_path):
    """The shipped configs say memory_bank_size 0: the bank gets one row per training image of the
    dataset at hand (the 120 of demo_shards), in the saved config too; an explicit size that differs
    is refused with one line before Ray starts (the command's pre-flight check) and in `train`."""
    from selfsup.api import check_before_launch
    from selfsup.trainer.loop import train

    train_samples = 120  # the demo_shards train split
    small = ["model.backbone=resnet18", "data.image_size=32", "data.batch_size=8", "data.num_threads=1",
             "trainer.max_steps=1", "optim.warmup_epochs=0"]
    if method == "deepcluster_v2":
        small += ["method.projection_hidden_dim=64", "method.num_prototypes=10", "method.num_heads=1",
                  "data.recipe={local_size: 16, local_crops: 2}"]
    if method in ("deepcluster", "odc"):
        small += ["method.num_clusters=10"]
    config = load_config(f"{method}", [f"data.path={demo_shards}", *small])
    assert config.method.memory_bank_size == 0
    assert check_before_launch(config, tmp_path / "run").method.memory_bank_size == train_samples
    train(config, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000001")
    assert state["config"]["method"]["memory_bank_size"] == train_samples
    wrong = load_config(f"{method}", [f"data.path={demo_shards}", *small, "method.memory_bank_size=1281167"])
    for attempt in (lambda: check_before_launch(wrong, tmp_path / "other"), lambda: train(wrong, tmp_path / "other")):
        with pytest.raises(ConfigError, match=rf"memory_bank_size=1281167.*has {train_samples} samples; "
                                              rf"set method.memory_bank_size={train_samples}"):
            attempt()
    assert not (tmp_path / "other" / "checkpoints").exists() or not any((tmp_path / "other" / "checkpoints").iterdir())


def test_supervised_must_have_the_dataset_s_classes(demo_shards, tmp_path):
    """The trainer itself refuses it (not only the command line), before the first step."""
    from selfsup.trainer.loop import train

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "supervised.yaml", [f"data.path={demo_shards}"])
    with pytest.raises(ConfigError, match=r"method.num_classes=1000, but .* has 10 classes; set method.num_classes=10"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert set(shipped_configs()) >= {"simclr", "dino", "mae"}
    by_name, by_file = load_config("simclr"), load_config(SIMCLR)
    assert by_name == by_file and load_config("simclr.yaml") == by_file
    (tmp_path / "simclr").write_text("method: {name: byol}\n")  # a file of that name wins over the shipped one
    assert load_config("simclr").method.name == "byol"
    with pytest.raises(ConfigError, match="config simclrr: no such file"):
        load_config("simclrr")


@pytest.mark.parametrize("override, message", [
    ("trainer.precision=bf61", "trainer.precision: expected one of 'auto', 'bf16', 'fp16', 'fp32', got 'bf61'"),
    ("optim.name=adam", "optim.name: expected one of 'lars', 'sgd', 'adamw', 'lamb', got 'adam'"),
    ("optim.lr_scaling=cubic", "optim.lr_scaling: expected one of 'linear', 'sqrt', 'none', got 'cubic'"),
    ("data.batch_size=0", "data.batch_size=0: expected 1 or more"),
    ("data.batch_size=-4", "data.batch_size=-4: expected 1 or more"),
    ("trainer.max_steps=-1", "trainer.max_steps=-1: expected 1 or more"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints=0: expected 1 or more"),
    ("trainer.keep_checkpoints=two", "trainer.keep_checkpoints: expected an integer, got 'two'"),
    ("optim.lr=-0.1", "optim.lr=-0.1: expected 0 or more"),
])
def test_a_bad_value_is_refused_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(SIMCLR, [override])


@pytest.mark.parametrize("config, override, message", [
    ("simclr", "data.recipe.blurr=0.1",
     "unknown config key data.recipe.blurr; valid keys in data.recipe: solarize_probability, scale, ratio"),
    ("simclr", "data.recipe.scale=0.5", "data.recipe.scale: expected a list of 2 values, got 0.5"),
    ("simclr", "data.recipe.hue=strong", "data.recipe.hue: expected a number, got 'strong'"),
    ("rotation", "data.recipe.mode=two", "data.recipe.mode: expected one of 'all', 'one', got 'two'"),
    ("inpainting", "data.recipe.region=corner", "data.recipe.region: expected one of 'center', 'random', got 'corner'"),
    ("jigsaw", "data.recipe.permutation_count=many", "data.recipe.permutation_count: expected an integer, got 'many'"),
    # multi-crop recipes set scale, blur and solarize per crop (global_scale, local_blur, ...)
    ("dino", "data.recipe.scale=[0.2, 1.0]", "unknown config key data.recipe.scale; valid keys in data.recipe: "
                                             "local_crops, local_size, global_scale, local_scale, global_blur"),
    ("swav", "data.recipe.blur_probability=0.5", "unknown config key data.recipe.blur_probability"),
])
def test_a_bad_recipe_option_is_refused_when_the_config_is_read(config, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(CONFIGS / f"{config}.yaml", [override])


def test_recipe_options_are_typed_as_the_methods_recipe_takes_them():
    config = load_config(CONFIGS / "dino.yaml", ["data.recipe.local_crops=2.0", "data.recipe.local_blur=1"])
    assert config.data.recipe["local_crops"] == 2 and isinstance(config.data.recipe["local_crops"], int)
    assert config.data.recipe["local_blur"] == 1.0 and isinstance(config.data.recipe["local_blur"], float)
    assert config.data.recipe["global_scale"] == (0.4, 1.0)  # from the YAML list
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("method", ["mae", "beit"])
def test_a_masked_recipe_takes_its_patch_size_from_the_model(method):
    """MAE and BEiT mask the ViT's own patches (BEiT's blocks are counted in them)."""
    from selfsup.trainer.model import recipe_for

    config = load_config(CONFIGS / f"{method}.yaml", ["model.patch_size=8", "data.image_size=32"])
    assert "patch_size" not in config.data.recipe
    assert recipe_for(config).pretext.patch_size == 8  # not the recipe's default of 16
    same = load_config(CONFIGS / f"{method}.yaml", ["model.patch_size=8", "data.image_size=32",
                                                   "data.recipe.patch_size=8"])
    assert recipe_for(same) == recipe_for(config)  # the same value twice is allowed (older configs have it)
    with pytest.raises(ConfigError, match=re.escape(f"data.recipe.patch_size=16, but the {method} recipe takes it "
                                                    "from model.patch_size=8; leave data.recipe.patch_size out")):
        load_config(CONFIGS / f"{method}.yaml", ["model.patch_size=8", "data.recipe.patch_size=16"])


def test_simmim_mask_cells_must_be_a_multiple_of_the_vit_patch():
    from selfsup.trainer.model import recipe_for

    config = load_config(CONFIGS / "simmim.yaml", ["model.patch_size=8", "data.image_size=48",
                                                   "data.recipe.patch_size=16"])
    assert recipe_for(config).pretext.patch_size == 16  # cells of 2 x 2 patches
    with pytest.raises(ConfigError, match=re.escape("data.recipe.patch_size=12: SimMIM's mask cells must be a "
                                                    "multiple of model.patch_size=8")):
        load_config(CONFIGS / "simmim.yaml", ["model.patch_size=8", "data.recipe.patch_size=12"])
