"""What a run shows: TensorBoard scalars and text, and a progress bar or one line per epoch.

Only rank 0 writes; other ranks get a logger that does nothing. On a terminal a tqdm bar with
ETA; elsewhere (Ray workers, CI logs) one summary line per epoch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


class RunLogger:
    def __init__(self, log_dir: Path | None, total_steps: int, steps_per_epoch: int, start_step: int,
                 config_text: str = "", enabled: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.writer = SummaryWriter(str(log_dir)) if enabled and log_dir is not None else None
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

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if not self.bar.disable else print)(text)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
