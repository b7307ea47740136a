"""What a run shows: TensorBoard scalars, text, hparams and view images; a progress bar or one line
per epoch; and `losses.jsonl`, every step's loss terms.

Only rank 0 writes; other ranks get a logger that does nothing. On a terminal a tqdm bar with
ETA; elsewhere (Ray workers, CI logs) one summary line per epoch. A resumed run drops the
TensorBoard events and loss lines after its starting step (they belong to the interrupted run's
lost steps), so both show each step once.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm


class RunLogger:
    def __init__(self, log_dir: Path | None, total_steps: int, steps_per_epoch: int, start_step: int,
                 config_text: str = "", enabled: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        purge = {"purge_step": start_step + 1} if start_step else {}
        self.writer = SummaryWriter(str(log_dir), **purge) if enabled and log_dir is not None else None
        if self.writer is not None and config_text:
            self.writer.add_text("config", f"```\n{config_text}\n```", global_step=start_step)
        interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=not interactive)
        self.epoch_started = time.perf_counter()

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, global_step=step)
        if self.enabled:
            self.bar.set_postfix({key: f"{metrics[key]:.4g}" for key in ("loss", "lr") if key in metrics},
                                 refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.enabled:
            self.bar.update(steps)

    def epoch_line(self, epoch: int, epochs: int, step: int, metrics: dict[str, float]) -> None:
        """One summary line per epoch when no progress bar is shown."""
        if not self.enabled or not self.bar.disable:
            return
        parts = [f"epoch {epoch}/{epochs}", f"step {step}/{self.total_steps}"]
        for key, fmt in (("loss", "{:.4f}"), ("lr", "{:.4g}"), ("images_per_second", "{:.0f} img/s"),
                         ("data_wait_fraction", "data-wait {:.0%}")):
            if key in metrics:
                parts.append((f"{key} " if key in ("loss", "lr") else "") + fmt.format(metrics[key]))
        print("  ".join(parts), flush=True)

    def hyperparameters(self, config: dict, metrics: tuple[str, ...] = ("train/loss", "eval/knn_top1")) -> None:
        """The flattened config in TensorBoard's HPARAMS tab, against the named scalar tags."""
        if self.writer is None:
            return
        values = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
                  for key, value in flatten(config).items()}
        for summary in hparams(values, {name: 0.0 for name in metrics}):
            self.writer.file_writer.add_summary(summary)

    def views(self, batch: dict[str, torch.Tensor], mean, std, step: int, count: int = 16) -> None:
        """One image grid per view of `batch` (the first `count` samples), denormalized."""
        if self.writer is None:
            return
        for key in sorted(batch):
            images = batch[key]
            if images.dim() == 4 and images.shape[1] == 3 and images.is_floating_point():
                grid = image_grid(denormalize(images[:count].detach().float().cpu(), mean, std))
                self.writer.add_image(f"views/{key}", grid, global_step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, global_step=step)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if not self.bar.disable else print)(text)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 0.3}} -> {'optim.lr': 0.3}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(N, 3, H, W) normalized by mean/std (in [0, 1] units) -> values in [0, 1]."""
    mean = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def image_grid(images: torch.Tensor, columns: int = 8, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) -> (C, rows * (H + p) + p, columns * (W + p) + p): the images in rows, white gaps."""
    count, channels, height, width = images.shape
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    grid = torch.ones(channels, rows * (height + padding) + padding, columns * (width + padding) + padding,
                      dtype=images.dtype)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[:, top:top + height, left:left + width] = images[index]
    return grid


class LossLog:
    """`losses.jsonl`: one JSON line per step, {"step": s, "loss": ..., other terms}, written by rank 0.

    Opening it for a run that starts at `start_step` keeps only the lines of steps <= start_step;
    `start_terms` holds the terms of the line of `start_step` itself ({} if none, or not rank 0).
    """

    def __init__(self, path: Path, start_step: int, enabled: bool = True):
        self.handle = None
        self.start_terms: dict[str, float] = {}
        if not enabled:
            return
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    step = int(entry["step"])
                except (ValueError, KeyError, TypeError):
                    continue
                if step <= start_step:
                    kept.append(line)
                if step == start_step and start_step > 0:
                    self.start_terms = {name: value for name, value in entry.items() if name != "step"}
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        temporary.replace(path)
        self.handle = open(path, "a", encoding="utf-8", buffering=1)  # line-buffered: readable while running

    def write(self, step: int, terms: dict[str, float]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps({"step": step, **terms}) + "\n")

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
