"""Multi-crop batches (SwAV, Caron et al. 2020; DINO, Caron et al. 2021): views of several sizes.

* ``batch_views(batch)``: the views ``view_0, view_1, ...`` of a batch, in order.
* ``same_size_runs(views)``: consecutive views of the same size concatenated along the batch,
  so a backbone runs once per resolution (the 2 global crops together, the local crops
  together), as in the official ``MultiCropWrapper``. The outputs, concatenated in run order,
  are in view order: (V * B, ...).
"""

from __future__ import annotations

import torch


def batch_views(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """[batch["view_0"], batch["view_1"], ...] up to the first missing index."""
    views = []
    while f"view_{len(views)}" in batch:
        views.append(batch[f"view_{len(views)}"])
    if not views:
        raise KeyError(f"batch has no views (view_0, view_1, ...); keys: {sorted(batch)}")
    return views


def same_size_runs(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate consecutive views with the same (H, W): V x (B, C, H, W) -> runs of (n * B, ...)."""
    runs: list[list[torch.Tensor]] = []
    for view in views:
        if runs and runs[-1][0].shape[-2:] == view.shape[-2:]:
            runs[-1].append(view)
        else:
            runs.append([view])
    return [torch.cat(run) if len(run) > 1 else run[0] for run in runs]
