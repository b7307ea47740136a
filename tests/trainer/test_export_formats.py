"""`selfsup export --format timm|onnx`: a timm model folder whose config fields and safetensors keys
are timm's (loaded by timm itself where it is installed), and an ONNX graph that onnxruntime
runs to PyTorch's features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from selfsup.cli.main import main
from selfsup.errors import ConfigError
from selfsup.methods.backbones import build_backbone
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_eval_loader
from selfsup.pipeline.recipes import EvalRecipe
from selfsup.trainer.evaluate import load_backbone
from selfsup.trainer.export_formats import write_onnx, write_timm_folder
from selfsup.trainer.loop import train
from selfsup.trainer.resume import find_checkpoint
from tests.trainer.training_run import OneTorchThread, tiny_config

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _norm(name: str) -> list[str]:
    return [f"{name}.{field}" for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def timm_resnet_keys(layers: tuple[int, ...], bottleneck: bool) -> set[str]:
    """The state_dict keys of timm's `ResNet` (timm/models/resnet.py) with num_classes=0: a stem conv1/bn1,
    then layerN.M blocks with conv1..conv2 (BasicBlock) or conv1..conv3 (Bottleneck), each followed by
    bnK, and a downsample Sequential(conv, norm) where a block changes the shape."""
    keys = {"conv1.weight", *_norm("bn1")}
    for stage, blocks in enumerate(layers, start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}."
            for index in range(1, 4 if bottleneck else 3):
                keys |= {f"{prefix}conv{index}.weight", *_norm(f"{prefix}bn{index}")}
            if block == 0 and (stage > 1 or bottleneck):
                keys |= {f"{prefix}downsample.0.weight", *_norm(f"{prefix}downsample.1")}
    return keys


def timm_vit_keys(depth: int) -> set[str]:
    """The state_dict keys of timm's `VisionTransformer` (timm/models/vision_transformer.py) with
    num_classes=0 and a class token: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2} and the final norm."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for block in range(depth):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{block}.{layer}.weight", f"blocks.{block}.{layer}.bias"}
    return keys


@pytest.fixture(scope="module")
def trained_run(demo_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("export-formats") / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=2"), run)
    return run


def test_timm_folder_of_a_trained_run(trained_run, tmp_path, capsys):
    folder = tmp_path / "timm"
    assert main(["export", "--checkpoint", str(trained_run), "--format", "timm", "--output", str(folder)]) == 0
    assert f'timm.create_model("local-dir:{folder}", pretrained=True)' in capsys.readouterr().out
    config = json.loads((folder / "config.json").read_text())
    assert {key: config[key] for key in ("architecture", "num_classes", "num_features", "global_pool")} == {
        "architecture": "resnet18", "num_classes": 0, "num_features": 512, "global_pool": "avg"}
    pretrained = config["pretrained_cfg"]
    assert pretrained["input_size"] == [3, 32, 32] and pretrained["first_conv"] == "conv1"
    assert pretrained["classifier"] == "fc" and pretrained["num_classes"] == 0
    assert (pretrained["mean"], pretrained["std"]) == (MEAN, STD) and config["model_args"] == {}
    tensors = load_file(folder / "model.safetensors")
    assert set(tensors) == timm_resnet_keys((2, 2, 2, 2), bottleneck=False)
    backbone, _ = load_backbone(find_checkpoint(trained_run))
    assert all(torch.equal(tensors[key], value) for key, value in backbone.state_dict().items())


@pytest.mark.parametrize("name, expected", [
    ("resnet50", timm_resnet_keys((3, 4, 6, 3), bottleneck=True)),
    ("vit_small", timm_vit_keys(12)),
])
def test_timm_keys_and_shapes_of_the_larger_backbones(name, expected, tmp_path):
    kwargs = ({"small_input": False, "dilated_stages": 0} if name.startswith("resnet") else
              {"img_size": 32, "patch_size": 8, "global_pool": "token"})
    backbone, feature_dim = build_backbone(name, **kwargs)
    config = write_timm_folder(backbone, name, kwargs, tmp_path, image_size=32, mean=MEAN, std=STD)
    tensors = load_file(tmp_path / "model.safetensors")
    assert set(tensors) == expected
    if name == "resnet50":
        assert config["architecture"] == "resnet50" and config["num_features"] == feature_dim == 2048
        assert tensors["conv1.weight"].shape == (64, 3, 7, 7) and tensors["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    else:
        assert config["architecture"] == "vit_small_patch16_224" and config["num_features"] == 384
        assert config["model_args"] == {"img_size": 32, "patch_size": 8, "global_pool": "token", "fc_norm": False}
        assert config["pretrained_cfg"]["fixed_input_size"] is True
        assert tensors["pos_embed"].shape == (1, 1 + 16, 384) and tensors["blocks.0.attn.qkv.weight"].shape == (1152, 384)
        assert tensors["patch_embed.proj.weight"].shape == (384, 3, 8, 8)


def test_timm_loads_the_folder_when_installed(trained_run, tmp_path):
    timm = pytest.importorskip("timm")
    main(["export", "--checkpoint", str(trained_run), "--format", "timm", "--output", str(tmp_path)])
    model = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    backbone, _ = load_backbone(find_checkpoint(trained_run))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone.eval()(images), atol=1e-5, rtol=1e-5)


def test_a_layout_timm_builds_otherwise_is_refused(tmp_path):
    backbone, _ = build_backbone("resnet18", small_input=True)
    with pytest.raises(ConfigError, match="model.small_input=True .* timm builds only the ImageNet stem"):
        write_timm_folder(backbone, "resnet18", {"small_input": True, "dilated_stages": 0}, tmp_path,
                          image_size=32, mean=MEAN, std=STD)
    assert not (tmp_path / "config.json").exists()


def test_onnx_matches_pytorch_on_real_images_at_another_batch_size(trained_run, demo_shards, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    output = tmp_path / "backbone.onnx"
    assert main(["export", "--checkpoint", str(trained_run), "--format", "onnx", "--output", str(output)]) == 0
    assert "onnxruntime agrees with PyTorch" in capsys.readouterr().out
    batch = next(iter(build_eval_loader(load_dataset_info(demo_shards), EvalRecipe(size=32), batch_size=5,
                                        split="val")))
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (features,) = session.run(["features"], {"images": batch["image"].numpy()})
    backbone, _ = load_backbone(find_checkpoint(trained_run))
    with torch.no_grad():
        expected = backbone.eval()(batch["image"]).numpy()
    assert features.shape == (5, 512)
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=1e-4)


def test_onnx_of_a_vision_transformer(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    backbone, _ = build_backbone("vit_tiny", img_size=32, patch_size=8)
    difference = write_onnx(backbone, (2, 3, 32, 32), tmp_path / "vit.onnx")
    assert difference is not None and difference < 1e-4
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    (features,) = session.run(["features"], {"images": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(features, backbone.eval()(images).numpy(), atol=1e-4, rtol=1e-4)
