"""BEiT's tokenizer from the trainer side: `method.tokenizer` names a dvae run that is checked
before launch (there, a dvae, BEiT's patch grid: each a one-line ConfigError), its sizes go into
the run's config, its encoder's weights into BEiT's state (frozen, outside the optimizer), so a
BEiT checkpoint is evaluated and exported after the tokenizer's run is gone."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from selfsup.api import check_before_launch, load_backbone_and_config, resolve_run_config, train
from selfsup.cli.main import main
from selfsup.errors import ConfigError
from selfsup.trainer.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.trainer.evaluate import load_backbone
from selfsup.trainer.export import export_backbone
from selfsup.trainer.model import check_buildable
from tests.trainer.training_run import OneTorchThread

# The tiny dvae's grid (tests/conftest.py TINY_DVAE): 32 px views, 8 px patches.
TINY_BEIT = ["model.backbone=vit_tiny", "data.image_size=32", "model.patch_size=8", "data.batch_size=8",
             "data.num_threads=1", "trainer.log_every=1"]


def beit_config(data, tokenizer, *overrides):
    return resolve_run_config("beit", data=data, overrides=[*TINY_BEIT, f"method.tokenizer={tokenizer}", *overrides])


@pytest.fixture(scope="module")
def beit_run(demo_shards, tokenizer_run, tmp_path_factory):
    """BEiT trained for two steps over a copy of the tiny dvae, and that copy (removed by the tests)."""
    folder = tmp_path_factory.mktemp("beit")
    tokenizer = shutil.copytree(tokenizer_run, folder / "dvae")
    with OneTorchThread():
        train("beit", folder / "beit", data=demo_shards,
              overrides=[*TINY_BEIT, f"method.tokenizer={tokenizer}", "trainer.max_steps=2"])
    return folder / "beit", tokenizer


def test_the_tokenizer_is_checked_and_its_sizes_resolved_before_launch(demo_shards, tokenizer_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tokenizer_run.parent)
    config = check_before_launch(beit_config(demo_shards, tokenizer_run.name), tmp_path / "run")
    assert config.method.tokenizer == str(tokenizer_run.resolve())  # workers elsewhere find it
    assert (config.method.tokenizer_codebook_size, config.method.tokenizer_hidden_dim) == (64, 32)


def test_a_missing_tokenizer_is_one_config_error(demo_shards, tmp_path):
    with pytest.raises(ConfigError, match=r"method.tokenizer: .*no checkpoint there.*selfsup train --config dvae"):
        check_buildable(beit_config(demo_shards, tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="method.tokenizer: "):
        check_buildable(beit_config(demo_shards, tmp_path / "empty"))


def test_a_run_of_another_method_is_not_a_tokenizer(demo_shards, beit_run):
    with pytest.raises(ConfigError, match="a beit run, not a dvae tokenizer"):
        check_buildable(beit_config(demo_shards, beit_run[0]))


def test_the_command_line_refuses_a_missing_or_unfit_tokenizer_in_one_line_before_ray(
        demo_shards, tokenizer_run, tmp_path, capsys):
    arguments = ["train", "--config", "beit", "--data", str(demo_shards), "--output", str(tmp_path / "run")]
    for setting in TINY_BEIT:
        arguments += ["--set", setting]
    for tokenizer, extra, message in ((tmp_path / "nothing", [], "method.tokenizer: "),
                                      (tokenizer_run, ["--set", "model.patch_size=16"], "its grid is 4x4 cells")):
        status = main(arguments + ["--set", f"method.tokenizer={tokenizer}", *extra])
        error = capsys.readouterr().err.strip()
        assert status == 2 and message in error and "selfsup: error:" in error
        assert len(error.splitlines()) == 1, error
    assert not ("ray" in sys.modules and sys.modules["ray"].is_initialized())


@pytest.mark.parametrize("overrides, message", [
    (["model.patch_size=16"], r"its grid is 4x4 cells of 8 px \(32 px images\), the ViT's 2x2 patches of 16 px"),
    (["data.image_size=64"], r"the ViT's 8x8 patches of 8 px \(64 px\); train the tokenizer with "
                             r"data.image_size=64 model.patch_size=8"),
    (["method.tokenizer_codebook_size=128"], r"method.tokenizer_codebook_size=128, but the tokenizer .* has 64"),
])
def test_a_tokenizer_that_does_not_fit_the_vit_is_refused(demo_shards, tokenizer_run, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_buildable(beit_config(demo_shards, tokenizer_run, *overrides))


def test_the_tokenizer_run_is_a_backbone_for_evaluation_and_export(tokenizer_run, tmp_path):
    encoder, config = load_backbone_and_config(tokenizer_run)
    assert config.method.name == "dvae" and encoder.kind == "conv" and encoder.codebook_size == 64
    images = torch.randn(2, 3, 32, 32)
    assert encoder(images).shape == (2, 32) and encoder.codes(images).shape == (2, 16)
    sidecar = export_backbone(latest_checkpoint(tokenizer_run / "checkpoints"), tmp_path / "encoder.pt")
    assert sidecar["backbone"] == "dvae_encoder"
    assert sidecar["kwargs"] == {"patch_size": 8, "codebook_size": 64, "hidden_dim": 32}


def test_beit_keeps_its_frozen_tokenizer_and_is_evaluated_and_exported_without_its_run(beit_run, tmp_path):
    run, tokenizer = beit_run
    dvae_weights = load_checkpoint(latest_checkpoint(tokenizer / "checkpoints"))["model"]
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["step"] == 2
    assert state["config"]["method"]["tokenizer_codebook_size"] == 64
    tokenizer_keys = [key for key in state["model"] if key.startswith("tokenizer.")]
    assert tokenizer_keys and all(torch.equal(state["model"][key], dvae_weights["backbone." + key[len("tokenizer."):]])
                                  for key in tokenizer_keys)  # the dvae's encoder, untouched by two steps
    trained = len(state["model"]) - len(tokenizer_keys)  # every other entry is a parameter here
    assert sum(len(group["params"]) for group in state["optimizer"]["param_groups"]) == trained

    shutil.rmtree(tokenizer)
    backbone, config = load_backbone(latest_checkpoint(run / "checkpoints"))
    assert config.method.name == "beit" and backbone.kind == "vit"
    assert all(torch.equal(value, state["model"]["backbone." + key]) for key, value in backbone.state_dict().items())
    random_backbone, _ = load_backbone(latest_checkpoint(run / "checkpoints"), random_init=True)
    assert not torch.equal(random_backbone.pos_embed, backbone.pos_embed)
    sidecar = export_backbone(latest_checkpoint(run / "checkpoints"), tmp_path / "backbone.pt")
    assert sidecar["backbone"] == "vit_tiny" and sidecar["method"] == "beit"
