"""What a run shows: TensorBoard scalars (lr, weight decay, throughput, data wait), the first
views as images, the config's hparams, and the online kNN monitor at the end of an epoch."""

from __future__ import annotations

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.trainer.training_run import OneTorchThread, tiny_config
from selfsup.trainer.loop import train
from selfsup.trainer.progress import denormalize, image_grid


def test_image_grid_layout_and_denormalize():
    images = torch.zeros(5, 3, 4, 6)
    images[3] = 1.0
    grid = image_grid(images, columns=2, padding=1)
    assert grid.shape == (3, 3 * 5 + 1, 2 * 7 + 1)
    assert grid[:, 6 + 5, 1 + 7].eq(1).all() and grid[:, 6 + 5, 1].eq(0).all()  # image 3: row 1, column 1
    restored = denormalize((torch.full((1, 3, 1, 1), 0.5) - 0.4) / 0.2, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2))
    torch.testing.assert_close(restored, torch.full((1, 3, 1, 1), 0.5))


def test_tensorboard_extras_and_online_knn(demo_shards, tmp_path):
    reports = []
    with OneTorchThread():
        summary = train(tiny_config(demo_shards, "trainer.max_steps=15", "trainer.log_every=5",
                                    "eval.online_knn_every_epochs=1", "eval.batch_size=40"),
                        tmp_path, report=reports.append)
    assert 0.0 <= summary["knn_top1"] <= 100.0
    assert [report["step"] for report in reports] == [5, 10, 15] and "knn_top1" in reports[-1]

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/nt_xent", "train/lr", "train/weight_decay", "train/images_per_second",
                "train/data_wait_fraction", "eval/knn_top1", "eval/knn_top5"):
        assert tag in scalars, tag
    assert [event.step for event in events.Scalars("eval/knn_top1")] == [15]
    assert {"views/view_0", "views/view_1"} <= set(events.Tags()["images"])
    image = events.Images("views/view_0")[0]
    assert image.step == 0 and image.width > 32 * 4
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
