"""selfsup: self-supervised visual pretraining at scale.

The Python API, for notebooks and scripts (the `selfsup` command line calls the same functions):

    import selfsup

    selfsup.convert("photos/", "data/photos", val_fraction=0.02)        # image folder -> shards
    selfsup.index("hub/imagenet-wds")                                   # shards made elsewhere, in place
    summary = selfsup.train("simclr", "runs/simclr", data="data/photos",  # in this process, no Ray
                            overrides=["trainer.epochs=100"])
    summary = selfsup.train("simclr", "runs/simclr", data="data/photos", workers=4)  # Ray Train DDP
    backbone = selfsup.load_backbone("runs/simclr")                     # a torch.nn.Module
    selfsup.embed("runs/simclr", "photos.parquet", data="data/photos")  # one row per image

The subpackages: `selfsup.pipeline` (shards, DALI views, the loader), `selfsup.methods`
(backbones, heads, losses, one file per method), `selfsup.trainer` (the training loop,
evaluation, export) and `selfsup.cluster` (Ray Train, Tune and Jobs). Importing `selfsup` imports
none of them; each API function imports what it needs when called.
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.2.0"
__all__ = ["__version__", "convert", "embed", "index", "load_backbone", "train", "verify"]

# In a source checkout the subpackages are the repository's top-level folders (pipeline/,
# methods/, trainer/, cluster/, configs/), mapped into this namespace as the installed wheel maps
# them (pyproject.toml's package-dir). A checkout shipped as a Ray job's working directory
# imports this package first, so it must find them without an install.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "trainer" / "loop.py").is_file() and not (_Path(__file__).parent / "trainer").is_dir():
    __path__.append(str(_checkout))


def __getattr__(name: str):
    """The API functions, imported on first use so that `import selfsup` stays cheap."""
    if name in ("convert", "embed", "index", "load_backbone", "train", "verify"):
        from selfsup import api

        return getattr(api, name)
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
