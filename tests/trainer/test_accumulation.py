"""Gradient accumulation: k micro-batches give the gradient of one k-times larger batch (for a model
without batch statistics), and the loop consumes k micro-batches per optimizer step."""

from __future__ import annotations

import torch
from torch import nn

from tests.trainer.training_run import OneTorchThread, read_losses, tiny_config
from selfsup.trainer.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.trainer.loop import train
from selfsup.trainer.step import accumulate_gradients, apply_update


class TinyRegression(nn.Module):
    """BatchNorm-free: a mean squared error of a small MLP, so the loss is a mean over samples."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 1))

    def forward(self, batch):
        loss = ((self.backbone(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()
        return {"loss": loss, "mse": loss.detach()}


def gradients(model, batches):
    model.zero_grad(set_to_none=True)
    iterator = iter(batches)
    terms = accumulate_gradients(model, model, lambda: next(iterator), len(batches), autocast_precision="fp32",
                                 device=torch.device("cpu"))
    return terms, [parameter.grad.clone() for parameter in model.parameters()]


def test_four_micro_batches_equal_one_big_batch():
    torch.manual_seed(0)
    model = TinyRegression()
    x, y = torch.randn(16, 6), torch.randn(16)
    big_terms, big = gradients(model, [{"x": x, "y": y}])
    small_terms, small = gradients(model, [{"x": x[i:i + 4], "y": y[i:i + 4]} for i in range(0, 16, 4)])
    for expected, accumulated in zip(big, small):
        torch.testing.assert_close(accumulated, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(small_terms["loss"], big_terms["loss"])
    torch.testing.assert_close(small_terms["mse"], big_terms["mse"])


def test_frozen_parameters_are_not_updated():
    torch.manual_seed(0)
    model = TinyRegression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    last = list(model.backbone[2].parameters())
    before = [parameter.detach().clone() for parameter in model.parameters()]
    gradients(model, [{"x": torch.randn(4, 6), "y": torch.randn(4)}])
    apply_update(optimizer, list(model.parameters()), grad_clip=1.0, frozen=last)
    after = list(model.parameters())
    assert not torch.equal(after[0], before[0])  # first layer moved
    assert torch.equal(after[2], before[2]) and torch.equal(after[3], before[3])  # last layer frozen


def test_loop_takes_k_micro_batches_per_step(demo_shards, tmp_path):
    with OneTorchThread():
        summary = train(tiny_config(demo_shards, "trainer.max_steps=2", "trainer.accumulate_steps=2"), tmp_path)
    assert summary["step"] == 2 and sorted(read_losses(tmp_path)) == [1, 2]
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["ranks"][0]["data"]["batches"] == 4  # 2 steps x 2 micro-batches of 8
