"""The generative pretexts' mechanisms on small real backbones: the context encoder's discriminator
sees exactly the filled region, each optimizer step's forward reaches only its own parameters,
super-resolution adds decoded detail to its input and scores it in a frozen feature network's
space, the denoising autoencoder reconstructs the clean view."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from selfsup.methods import denoising_autoencoder, inpainting, super_resolution
from selfsup.methods.backbones import build_backbone, resnet18
from selfsup.methods.dense import feature_map
from selfsup.methods.discriminators import ContextEncoderDiscriminator, SRGANDiscriminator
from selfsup.methods.losses import content_loss, discriminator_loss, generator_adversarial_loss, inpainting_loss


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def square_masks(anchors: list[tuple[int, int]], side: int, size: int = 32) -> torch.Tensor:
    mask = torch.zeros(len(anchors), 1, size, size, dtype=torch.bool)
    for index, (top, left) in enumerate(anchors):
        mask[index, :, top:top + side, left:left + side] = True
    return mask


def inpainting_batch(anchors=((8, 8), (0, 16), (16, 3))) -> dict[str, torch.Tensor]:
    target = torch.randn(len(anchors), 3, 32, 32)
    mask = square_masks(list(anchors), 16)
    return {"inpaint_input": target.masked_fill(mask, 0.0), "inpaint_target": target, "inpaint_mask": mask}


def adversarial_inpainting(weight: float = 0.001) -> inpainting.Inpainting:
    options = inpainting.InpaintingOptions(decoder_width=16, overlap_pixels=2, adversarial_weight=weight,
                                           discriminator_width=8, discriminator_lr_multiplier=0.5)
    return inpainting.build_inpainting(options, resnet18(), 512)


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> set[str]:
    """The names of the parameters `loss` gives a gradient."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name for name, parameter in model.named_parameters() if parameter.grad is not None}


def test_region_crops_are_the_masked_squares():
    images = torch.randn(3, 3, 32, 32)
    anchors = [(8, 8), (0, 16), (16, 3)]
    crops = inpainting.region_crops(images, square_masks(anchors, 16))
    assert crops.shape == (3, 3, 16, 16)
    for crop, image, (top, left) in zip(crops, images, anchors):
        assert torch.equal(crop, image[:, top:top + 16, left:left + 16])


def test_without_adversarial_weight_the_context_encoder_is_as_before():
    model = adversarial_inpainting(weight=0.0)
    assert model.discriminator is None and model.optimizer_steps() == []
    assert {key.split(".")[0] for key in model.state_dict()} == {"backbone", "decoder"}
    batch = inpainting_batch()
    model.eval()
    outputs = model(batch)
    assert set(outputs) == {"loss", "inpainting"}
    reconstruction = model.decoder(model.backbone.forward_features(batch["inpaint_input"]))
    expected = inpainting_loss(reconstruction, batch["inpaint_target"], batch["inpaint_mask"], 10.0, 2)
    assert torch.equal(outputs["loss"], expected)
    with pytest.raises(ValueError, match="steps are \\['generator'\\]"):
        model(batch, step="discriminator")


def test_each_inpainting_step_reaches_only_its_own_parameters():
    model = adversarial_inpainting()
    discriminator_step, generator_step = model.optimizer_steps()
    assert discriminator_step.lr_multiplier == 0.5 and generator_step.lr_multiplier == 1.0
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    discriminator = {names[id(p)] for p in discriminator_step.parameters}
    assert discriminator == {name for name in names.values() if name.startswith("discriminator.")}
    batch = inpainting_batch()
    # the discriminator's loss on the detached reconstruction: no gradient reaches the generator
    assert gradients(model, model(batch, step="discriminator")["discriminator_loss"]) == discriminator
    # the generator's: every generator parameter (the backbone through the adversarial term too)
    reached = gradients(model, model(batch)["loss"])
    assert {names[id(p)] for p in generator_step.parameters} <= reached


def test_the_discriminator_judges_the_filled_region_only():
    model = adversarial_inpainting(weight=0.25)
    model.eval()
    batch = inpainting_batch()
    outputs = model(batch, step="discriminator")
    real = model.discriminator(inpainting.region_crops(batch["inpaint_target"], batch["inpaint_mask"]))
    with torch.no_grad():
        filled = model.decoder(model.backbone.forward_features(batch["inpaint_input"]))
    fake = model.discriminator(inpainting.region_crops(filled, batch["inpaint_mask"]))
    assert torch.allclose(outputs["discriminator_loss"], discriminator_loss(real, fake))
    # outside the region the target does not matter to the discriminator
    changed = dict(batch, inpaint_target=batch["inpaint_target"].masked_fill(~batch["inpaint_mask"], 5.0))
    assert torch.allclose(model(changed, step="discriminator")["discriminator_loss"], outputs["discriminator_loss"])
    generator = model(batch)
    joint = 0.75 * generator["inpainting"] + 0.25 * generator_adversarial_loss(fake.detach())
    assert torch.allclose(generator["loss"].detach(), joint) and torch.allclose(generator["adversarial"],
                                                                               generator_adversarial_loss(fake))


def test_discriminators_give_one_logit_per_image_and_refuse_regions_too_small():
    assert ContextEncoderDiscriminator(8)(torch.randn(2, 3, 64, 64)).shape == (2,)
    assert ContextEncoderDiscriminator(8)(torch.randn(2, 3, 24, 24)).shape == (2,)
    with pytest.raises(ValueError, match="too small for 4 stride-2 stages"):
        ContextEncoderDiscriminator(8)(torch.randn(2, 3, 8, 8))
    assert SRGANDiscriminator(8)(torch.randn(2, 3, 96, 96)).shape == (2,)


def super_resolution_model(**changes) -> super_resolution.SuperResolution:
    options = super_resolution.SuperResolutionOptions(decoder_width=16, discriminator_width=8, **changes)
    return super_resolution.build_super_resolution(options, resnet18(), 512)


def test_super_resolution_adds_decoded_detail_to_its_bicubic_input():
    model = super_resolution_model()
    upscaled, target = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    model.eval()
    detail = F.interpolate(model.decoder(model.backbone.forward_features(upscaled)), size=(32, 32),
                           mode="bilinear", align_corners=False)
    assert torch.allclose(model.super_resolve(upscaled), upscaled + detail)
    torch.nn.init.zeros_(model.decoder[-1].weight)
    torch.nn.init.zeros_(model.decoder[-1].bias)
    outputs = model({"sr_input": upscaled, "sr_target": target})
    assert float(outputs["pixel"]) == pytest.approx(float(F.mse_loss(upscaled, target)))  # no detail: bicubic
    assert set(outputs) == {"loss", "pixel", "adversarial"}
    assert torch.allclose(outputs["loss"].detach(), outputs["pixel"] + 1e-3 * outputs["adversarial"])
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    discriminator = {names[id(p)] for p in model.optimizer_steps()[0].parameters}
    loss = model({"sr_input": upscaled, "sr_target": target}, step="discriminator")["discriminator_loss"]
    assert gradients(model, loss) == discriminator


def test_srresnet_without_adversarial_weight_has_one_optimizer():
    model = super_resolution_model(adversarial_weight=0.0)
    assert model.discriminator is None and model.optimizer_steps() == []
    outputs = model({"sr_input": torch.randn(2, 3, 32, 32), "sr_target": torch.randn(2, 3, 32, 32)})
    assert set(outputs) == {"loss", "pixel"}


def test_content_loss_in_an_exported_feature_network_that_stays_frozen(tmp_path):
    network, _ = build_backbone("resnet18", small_input=True)
    torch.save(network.state_dict(), tmp_path / "backbone.pt")
    (tmp_path / "backbone.json").write_text(json.dumps({"backbone": "resnet18", "kwargs": {"small_input": True}}))
    model = super_resolution_model(content_network=str(tmp_path / "backbone.pt"), content_weight=0.5)
    assert all(not parameter.requires_grad for parameter in model.content_network.parameters())
    assert all(id(p) not in {id(q) for q in model.content_network.parameters()}
               for step in model.optimizer_steps() for p in step.parameters)
    statistics = model.content_network.bn1.running_mean.clone()
    model.train()
    upscaled, target = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    outputs = model({"sr_input": upscaled, "sr_target": target})
    assert torch.equal(model.content_network.bn1.running_mean, statistics)  # evaluated, not trained
    network.eval()
    with torch.no_grad():
        generated = model.super_resolve(upscaled)
        expected = content_loss(feature_map(network, generated), feature_map(network, target))
    assert float(outputs["content"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(outputs["loss"].detach()) == pytest.approx(
        float(outputs["pixel"] + 0.5 * outputs["content"] + 1e-3 * outputs["adversarial"]), rel=1e-6)
    with pytest.raises(ValueError, match="expected an exported backbone"):
        super_resolution_model(content_network=str(tmp_path / "missing.pt"))


def test_denoising_autoencoder_reconstructs_the_clean_view():
    options = denoising_autoencoder.DenoisingAutoencoderOptions(decoder_width=16)
    model = denoising_autoencoder.build_denoising_autoencoder(options, resnet18(), 512)
    clean = torch.randn(2, 3, 32, 32)
    corrupted = clean * (torch.rand(2, 1, 32, 32) > 0.25)
    model.eval()
    outputs = model({"denoise_input": corrupted, "denoise_target": clean})
    reconstruction = model.decoder(model.backbone.forward_features(corrupted))
    assert reconstruction.shape == clean.shape
    assert torch.allclose(outputs["loss"], F.mse_loss(reconstruction, clean))
    assert model.optimizer_steps() == []
