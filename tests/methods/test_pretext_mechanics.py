"""The pretext tasks' mechanisms on tiny backbones (fast): rotation classifies every rotation of
every image, jigsaw embeds each tile alone, relative location pairs centre and neighbour,
colorization reads lightness and rebalances its bins, inpainting scores the removed region.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.methods import colorization, inpainting, jigsaw, relative_location, rotation
from selfsup.methods.backbones import resnet18
from tests.methods.tiny_models import SIZE, TinyBackbone, sgd_step


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class RecordingBackbone(TinyBackbone):
    """TinyBackbone that remembers the shape of every input it sees."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return super().forward(x)


def test_rotation_classifies_every_rotation_of_every_image():
    backbone = RecordingBackbone()
    model = rotation.build_rotation(rotation.RotationOptions(), backbone, 16)
    images = torch.randn(2, 3, SIZE, SIZE)
    views = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(4)], dim=1)  # (2, 4, ...)
    batch = {"view_0": views, "rotation_label": torch.arange(4).repeat(2, 1)}
    for _ in range(30):
        outputs = sgd_step(model, batch, lr=0.5)
    assert backbone.shapes[0] == (8, 3, SIZE, SIZE)  # the 4 rotations of both images together
    assert float(outputs["accuracy"]) == 1.0
    single = model({"view_0": views[:, 1], "rotation_label": torch.tensor([1, 1])})  # mode "one"
    assert torch.isfinite(single["loss"])


def test_jigsaw_embeds_each_tile_alone_and_concatenates_in_order():
    backbone = RecordingBackbone()
    model = jigsaw.build_jigsaw(jigsaw.JigsawOptions(num_permutations=5, head_hidden_dim=8),
                                backbone, 16)
    tiles = torch.randn(2, 9, 3, 6, 6)
    outputs = model({"jigsaw_tiles": tiles, "jigsaw_label": torch.tensor([0, 4])})
    assert backbone.shapes == [(18, 3, 6, 6)]
    assert model.classifier.layers[0].in_features == 9 * 16
    assert torch.isfinite(outputs["loss"])
    with pytest.raises(ValueError, match="permutation_count"):
        model({"jigsaw_tiles": tiles, "jigsaw_label": torch.tensor([0, 5])})


def test_relative_location_pairs_centre_and_neighbour():
    backbone = RecordingBackbone()
    model = relative_location.build_relative_location(
        relative_location.RelativeLocationOptions(head_hidden_dim=8), backbone, 16)
    batch = {"patch_a": torch.randn(3, 3, 6, 6), "patch_b": torch.randn(3, 3, 6, 6),
             "relative_label": torch.tensor([0, 3, 7])}
    outputs = model(batch)
    assert backbone.shapes == [(6, 3, 6, 6)]  # both patches through the same (Siamese) backbone
    assert model.classifier.layers[-1].out_features == 8
    assert torch.isfinite(outputs["loss"])


def normalized(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(colorization.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(colorization.IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


def test_colorization_lightness_of_rgb_matches_cie_lab():
    grey = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    lightness = colorization.rgb_to_lightness(normalized(grey))[:, 0, 0, 0]
    # L* of sRGB black, 50% grey (Y = 0.2140) and white
    assert lightness.tolist() == pytest.approx([-50.0, 53.389 - 50.0, 50.0], abs=1e-2)
    red = normalized(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
    assert float(colorization.rgb_to_lightness(red)) == pytest.approx(53.24 - 50.0, abs=0.05)


def test_colorization_reads_lightness_and_rebalances_with_the_seen_bins():
    model = colorization.build_colorization(
        colorization.ColorizationOptions(num_bins=5, head_hidden_dim=8), resnet18(), 512)
    assert model.backbone.net.conv1.in_channels == 1
    rgb = normalized(torch.rand(2, 3, 32, 32))
    lightness = colorization.rgb_to_lightness(rgb)
    model.eval()
    assert torch.allclose(model.backbone(rgb), model.backbone(lightness), atol=1e-5)  # RGB -> L inside
    model.train()
    bins = torch.zeros(2, 8, 8, dtype=torch.long)
    bins[:, :2] = 3
    outputs = model({"lab_l": lightness, "ab_bins": bins})
    assert torch.isfinite(outputs["loss"])
    assert model.bin_counts.tolist() == [96.0, 0.0, 0.0, 32.0, 0.0]
    logits = F.interpolate(model.head(model.backbone.net.forward_features(lightness / 50)), size=(8, 8),
                           mode="bilinear", align_corners=False)
    weights = 1.0 / (0.5 * torch.tensor([0.75, 0, 0, 0.25, 0]) + 0.5 / 5)
    weights = weights / (torch.tensor([0.75, 0, 0, 0.25, 0]) * weights).sum()
    expected = (F.cross_entropy(logits, bins, reduction="none") * weights[bins]).mean()
    assert float(outputs["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-4)


def test_inpainting_reconstructs_the_full_image_and_scores_the_region():
    model = inpainting.build_inpainting(inpainting.InpaintingOptions(decoder_width=16,
                                                                     overlap_pixels=2),
                                        resnet18(), 512)
    target = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[:, :, 8:24, 8:24] = True
    context = target.masked_fill(mask, 0.0)
    batch = {"inpaint_input": context, "inpaint_target": target, "inpaint_mask": mask}
    model.eval()
    outputs = model(batch)
    far = target.clone()
    far[:, :, :4, :] = 100.0  # outside the region and its 2-pixel band: not scored
    with torch.no_grad():
        far_loss = float(model(dict(batch, inpaint_target=far))["loss"])
    assert far_loss == pytest.approx(float(outputs["loss"].detach()))
    reconstruction = model.decoder(model.backbone.forward_features(context))
    assert reconstruction.shape == target.shape
