"""Helpers for the trainer tests that run `trainer.loop.train` in-process on the demo shards."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from selfsup.trainer.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
# resnet18 with the ImageNet stem at 32 px, batch 8: 15 steps per epoch over the 120 train samples.
TINY = ["model.backbone=resnet18", "model.small_input=false", "data.image_size=32", "data.batch_size=8",
        "data.num_threads=1", "trainer.log_every=1", "trainer.checkpoint_every=1000"]
SMALL_HEADS = {"simclr": ["method.projection_hidden_dim=64"],
               "byol": ["method.projection_hidden_dim=64", "method.prediction_hidden_dim=64"],
               "dino": ["method.output_dim=256", "method.hidden_dim=64", "method.bottleneck_dim=32"]}


def tiny_config(data: Path, *overrides: str, method: str = "simclr") -> Config:
    return load_config(ROOT / "configs" / f"{method}.yaml",
                       [*TINY, *SMALL_HEADS.get(method, []), f"data.path={data}", *overrides])


def merge_optimizer_groups(step: Path) -> tuple[list[dict], dict]:
    """Rewrite the checkpoint in `step` as an older version of a method might have written it: its
    optimizer's parameter groups merged into one named "all". Returns (the original groups, the merged one)."""
    from selfsup.trainer.checkpoint import load_checkpoint

    state = load_checkpoint(step)
    groups = state["optimizer"]["param_groups"]
    merged = dict(groups[0], params=[index for group in groups for index in group["params"]], name="all")
    torch.save(dict(state, optimizer=dict(state["optimizer"], param_groups=[merged])), step / "state.pt")
    return groups, merged


def read_losses(run: Path) -> dict[int, float]:
    """{step: loss} from the run's losses.jsonl."""
    lines = (run / "losses.jsonl").read_text().splitlines()
    return {int(entry["step"]): entry["loss"] for entry in map(json.loads, lines)}


class OneTorchThread:
    """Context manager: torch on one thread (the test machine's two cores are shared with DALI)."""

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)
