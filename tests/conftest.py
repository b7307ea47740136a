"""Shared fixtures: a small labeled image folder converted into real WebDataset shards."""

from __future__ import annotations

import pytest

from selfsup.pipeline.demo_images import make_demo_folder


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory):
    """10 shape classes x 16 images of 64 px, as JPEG files in class folders."""
    return make_demo_folder(tmp_path_factory.mktemp("images") / "shapes", images_per_class=16, size=64, seed=1)


@pytest.fixture(scope="session")
def demo_shards(demo_folder, tmp_path_factory):
    """The demo folder converted: 120 train + 40 val samples over several small shards."""
    from selfsup.pipeline.convert import convert

    output = tmp_path_factory.mktemp("shards") / "shapes"
    convert(demo_folder, output, shard_size="64KB", val_fraction=0.25, workers=1, seed=0, progress=False)
    return output


@pytest.fixture(scope="session")
def demo_masks_folder(tmp_path_factory):
    """The demo folder's images (the same as `demo_folder`'s) with each shape's label map:
    `(images, masks)`, masks/CLASS/NNNN.png holding 0 (background) or the class index + 1."""
    root = tmp_path_factory.mktemp("masked")
    images = make_demo_folder(root / "shapes", images_per_class=16, size=64, seed=1, masks=root / "masks")
    return images, root / "masks"


@pytest.fixture(scope="session")
def demo_masked_shards(demo_masks_folder, tmp_path_factory):
    """`demo_shards` converted with --masks: 120 train + 40 val samples, each with KEY.seg.png."""
    from selfsup.pipeline.convert import convert

    images, masks = demo_masks_folder
    output = tmp_path_factory.mktemp("masked_shards") / "shapes"
    convert(images, output, shard_size="64KB", val_fraction=0.25, workers=1, seed=0, progress=False, masks=masks)


# A tiny dvae tokenizer: 32 px views, 8 px cells (a 4 x 4 grid), 64 codes of width 32.
TINY_DVAE = ["data.image_size=32", "data.batch_size=8", "model.patch_size=8", "method.codebook_size=64",
             "method.hidden_dim=32"]


@pytest.fixture(scope="session")
def tokenizer_run(demo_shards, tmp_path_factory):
    """A run folder of the tiny dvae trained for two steps on the demo shards (`selfsup.train`, in
    this process): the tokenizer BEiT's tests name in method.tokenizer."""
    from selfsup.api import train
    from tests.trainer.training_run import OneTorchThread

    output = tmp_path_factory.mktemp("tokenizer") / "dvae"
    with OneTorchThread():
        train("dvae", output, data=demo_shards,
              overrides=TINY_DVAE + ["data.num_threads=1", "trainer.max_steps=2", "trainer.log_every=1"])
    return output
