"""The method registry: a plain dict from a config name to how the method is built.

Each entry names the method's options dataclass (the typed `method:` section of a config), the
builder that turns those options into plain constructor arguments, and the name of the view
recipe in `pipeline.recipes` that feeds it. The shared registry test builds every entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from methods import simclr


@dataclass(frozen=True)
class MethodEntry:
    options: type  # dataclass with a `name` field and the method's hyperparameters
    build: Callable[..., nn.Module]  # build(options, backbone, feature_dim) -> nn.Module
    recipe: str  # a key of pipeline.recipes.RECIPES
    description: str


METHODS: dict[str, MethodEntry] = {
    "simclr": MethodEntry(simclr.SimCLROptions, simclr.build_simclr, "simclr",
                          "contrastive: two views, NT-Xent over the global batch (Chen et al. 2020)"),
}


def method_entry(name: str) -> MethodEntry:
    """The entry for `name`; an unknown name lists the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]
