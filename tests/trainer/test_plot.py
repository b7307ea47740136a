"""`selfsup eval plot`: a t-SNE map of real embeddings, coloured by label, as a PNG (and in the run's
TensorBoard when drawn from a checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from selfsup.cli.main import main
from selfsup.errors import ConfigError
from selfsup.methods.backbones import build_backbone
from selfsup.trainer.embed import embed_images
from selfsup.trainer.loop import train
from selfsup.trainer.plot import PALETTE, plot_embeddings
from tests.trainer.training_run import OneTorchThread, tiny_config


@pytest.fixture(scope="module")
def embeddings(demo_shards, tmp_path_factory):
    torch.manual_seed(0)
    output = tmp_path_factory.mktemp("plot") / "embeddings.parquet"
    with OneTorchThread():
        embed_images(build_backbone("resnet18")[0], output, data=demo_shards, image_size=32)
    return output


def test_every_class_is_drawn_in_its_colour(embeddings, tmp_path):
    summary = plot_embeddings(tmp_path / "map.png", embeddings=embeddings, max_points=100)
    assert summary == {"output": str(tmp_path / "map.png"), "method": "tsne", "points": 100, "labels": 10}
    pixels = np.asarray(Image.open(tmp_path / "map.png").convert("RGB"))
    points = pixels[:, :800].reshape(-1, 3)  # the map, left of the legend
    for colour in PALETTE[:10]:
        assert (points == colour).all(axis=1).sum() > 0  # some point of every class
    assert not (points == PALETTE[10]).all(axis=1).any()  # no eleventh class


def test_a_map_from_a_checkpoint_reaches_tensorboard(demo_shards, tmp_path, capsys):
    run = tmp_path / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=1"), run)
        assert main(["eval", "plot", "--checkpoint", str(run), "--data", str(demo_shards), "--output",
                     str(tmp_path / "val.png")]) == 0
    assert "tsne map of 40 embeddings (10 labels)" in capsys.readouterr().out
    events = EventAccumulator(str(run / "tensorboard" / "eval"))
    events.Reload()
    assert [event.step for event in events.Images("embeddings/tsne")] == [1]


def test_bad_plot_requests(embeddings, tmp_path):
    with pytest.raises(ConfigError, match="give either --embeddings"):
        plot_embeddings(tmp_path / "x.png")
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="--method umap needs the umap-learn package"):
            plot_embeddings(tmp_path / "x.png", embeddings=embeddings, method="umap")
    assert not (tmp_path / "x.png").exists()
