"""Two optimizers stepped in turn (the context encoder with its discriminator, method.adversarial_weight
> 0): each update is what plain PyTorch gives for its own loss alone (no gradient of the other
step leaks in), accumulated over the same micro-batches; a stopped and resumed run logs the same
terms, bit for bit, as a straight one; checkpoints keep each optimizer's state by name and older
single-optimizer checkpoints still load."""

from __future__ import annotations

import copy
import math
import json
from pathlib import Path

import pytest
import torch

from selfsup.errors import CheckpointError
from selfsup.trainer.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.trainer.distributed import current_context
from selfsup.trainer.export import export_backbone
from selfsup.trainer.loop import train, train_step
from selfsup.trainer.preemption import StopRequest
from selfsup.trainer.run import build_run
from tests.trainer.training_run import OneTorchThread, read_losses, tiny_config

ADVERSARIAL = ["method.decoder_width=16", "method.adversarial_weight=0.001", "method.discriminator_width=8",
               "method.discriminator_lr_multiplier=0.5", "optim.lr_scaling=none", "optim.lr=1.0e-3",
               "optim.warmup_epochs=0.2"]


@pytest.fixture(autouse=True)
def one_thread():
    with OneTorchThread():
        yield


def adversarial_config(data: Path, *overrides: str):
    return tiny_config(data, *ADVERSARIAL, *overrides, method="inpainting")


def loss_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]


class RecordedBatches:
    """The loop's batch source (a callable with `waited`) that keeps every batch it hands out."""

    def __init__(self, run):
        self.data, self.waited, self.drawn = run.data, 0.0, []

    def __call__(self) -> dict[str, torch.Tensor]:
        batch = next(self.data)
        self.drawn.append(batch)
        return batch


def test_each_optimizer_steps_on_its_own_loss_over_the_same_micro_batches(demo_shards, tmp_path):
    """Two steps with accumulate_steps=2, replayed in plain PyTorch: discriminator on
    "discriminator_loss", then generator on "loss" against the updated discriminator, both over the
    step's two micro-batches; the discriminator's backward gives the generator no gradient."""
    config = adversarial_config(demo_shards, "trainer.max_steps=2", "trainer.accumulate_steps=2")
    run = build_run(config, tmp_path, current_context())
    try:
        reference = copy.deepcopy(run.model)
        steps = reference.optimizer_steps()
        optimizers = {step.name: torch.optim.AdamW(step.parameters, lr=1.0, betas=(0.5, 0.999), weight_decay=0.0)
                      for step in steps}
        generator = [id(parameter) for parameter in steps[1].parameters]
        batches = RecordedBatches(run)
        for step in range(2):
            terms = train_step(run, step, StopRequest(), batches).terms
            micro_batches = batches.drawn[-2:]
            assert len(batches.drawn) == 2 * (step + 1)  # two micro-batches per step, shared by both optimizers
            for optimizer_step in steps:
                for group in optimizers[optimizer_step.name].param_groups:
                    group["lr"] = float(run.lr_schedule[step]) * optimizer_step.lr_multiplier
                reference.zero_grad(set_to_none=True)
                total = 0.0
                for batch in micro_batches:
                    loss = reference(batch, step=optimizer_step.name)[optimizer_step.loss] / 2
                    loss.backward()
                    total += float(loss.detach())
                assert terms[optimizer_step.loss] == pytest.approx(total, rel=1e-6)
                if optimizer_step.name == "discriminator":
                    assert all(p.grad is None for p in reference.parameters() if id(p) in generator)
                optimizers[optimizer_step.name].step()
            for (name, trained), replayed in zip(run.model.named_parameters(), reference.parameters()):
                torch.testing.assert_close(trained, replayed, rtol=1e-5, atol=1e-7, msg=name)
        assert [entry.optimizer.param_groups[0]["lr"] for entry in run.optimizers] == pytest.approx(
            [0.5 * float(run.lr_schedule[1]), float(run.lr_schedule[1])])
    finally:
        run.close()


def test_stopped_and_resumed_adversarial_run_matches_an_uninterrupted_one(demo_shards, tmp_path):
    config = adversarial_config(demo_shards, "trainer.max_steps=8")
    train(config, tmp_path / "straight")
    stop = StopRequest()

    def report(metrics):
        if metrics["step"] == 3:
            stop.request("test")

    assert train(config, tmp_path / "resumed", report=report, stop=stop)["step"] == 4
    state = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step-00000004")
    assert "optimizer" not in state and list(state["optimizers"]) == ["discriminator", "generator"]
    assert state["grad_scalers"] == {"discriminator": None, "generator": None}  # fp32 on the CPU
    for optimizer in state["optimizers"].values():
        assert {int(entry["step"]) for entry in optimizer["state"].values()} == {4}  # each stepped every step
    assert train(config, tmp_path / "resumed")["step"] == 8

    straight, resumed = loss_lines(tmp_path / "straight"), loss_lines(tmp_path / "resumed")
    assert [line["step"] for line in resumed] == list(range(1, 9))
    assert {"loss", "inpainting", "adversarial", "discriminator_loss", "discriminator_real",
            "discriminator_fake"} <= set(resumed[0])
    assert resumed == straight  # every term of every step, floats compared exactly


def test_a_single_optimizer_checkpoint_from_before_the_option_still_continues(demo_shards, tmp_path):
    """An inpainting checkpoint whose config has no adversarial options (written before they existed)
    continues at adversarial_weight 0, and is refused by a run that would add a discriminator."""
    plain = ["method.decoder_width=16", "optim.lr_scaling=none", "optim.lr=1.0e-3"]
    train(tiny_config(demo_shards, *plain, "trainer.max_steps=2", method="inpainting"), tmp_path / "run")
    step = tmp_path / "run" / "checkpoints" / "step-00000002"
    state = load_checkpoint(step)
    assert "optimizer" in state and "optimizers" not in state
    older = {key: value for key, value in state["config"]["method"].items() if "adversarial" not in key
             and "discriminator" not in key}
    torch.save(dict(state, config=dict(state["config"], method=older)), step / "state.pt")
    assert train(tiny_config(demo_shards, *plain, "trainer.max_steps=3", method="inpainting"),
                 tmp_path / "run")["step"] == 3
    with pytest.raises(CheckpointError, match=r"method\.adversarial_weight: checkpoint has 0\.0, this run has 0\.001"):
        train(adversarial_config(demo_shards, *plain, "trainer.max_steps=4"), tmp_path / "run")


def test_a_checkpoint_with_other_optimizers_is_refused_by_name(demo_shards, tmp_path):
    train(adversarial_config(demo_shards, "trainer.max_steps=1"), tmp_path / "run")
    step = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = load_checkpoint(step)
    torch.save(dict(state, optimizers={"generator": state["optimizers"]["generator"]}), step / "state.pt")
    with pytest.raises(CheckpointError, match=r"it has the optimizers \[generator\], this run's Inpainting steps "
                                              r"\[discriminator, generator\]"):
        train(adversarial_config(demo_shards, "trainer.max_steps=2"), tmp_path / "run")


def test_super_resolution_trains_with_a_content_loss_in_an_exported_backbone(demo_shards, tmp_path):
    """SRGAN with all three terms: the content network is a backbone exported from another run."""
    train(tiny_config(demo_shards, "trainer.max_steps=1"), tmp_path / "simclr")
    export_backbone(latest_checkpoint(tmp_path / "simclr" / "checkpoints"), tmp_path / "backbone.pt")
    config = tiny_config(demo_shards, "trainer.max_steps=2", "method.decoder_width=16",
                         "method.discriminator_width=8", f"method.content_network={tmp_path / 'backbone.pt'}",
                         method="super_resolution")
    summary = train(config, tmp_path / "sr")
    assert summary["step"] == 2
    line = loss_lines(tmp_path / "sr")[-1]
    assert {"loss", "pixel", "content", "adversarial", "discriminator_loss"} <= set(line)
    assert line["loss"] == pytest.approx(line["pixel"] + line["content"] + 1e-3 * line["adversarial"], rel=1e-5)
    assert read_losses(tmp_path / "sr")[2] == line["loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_keeps_one_grad_scaler_per_optimizer_and_resumes_them(demo_shards, tmp_path):
    config = adversarial_config(demo_shards, "trainer.max_steps=4", "trainer.precision=fp16")
    stop = StopRequest()

    def report(metrics):
        if metrics["step"] == 2:
            stop.request("test")

    train(config, tmp_path / "run", report=report, stop=stop)
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert list(state["grad_scalers"]) == ["discriminator", "generator"]
    assert all(scaler["scale"] > 0 for scaler in state["grad_scalers"].values())
    assert train(config, tmp_path / "run")["step"] == 4
    assert all(math.isfinite(value) for line in loss_lines(tmp_path / "run") for key, value in line.items()
               if key != "step")
