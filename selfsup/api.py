"""The public Python API: `selfsup.convert`, `selfsup.index`, `selfsup.verify`, `selfsup.train`,
`selfsup.load_backbone`, `selfsup.embed`.

Each turns plain arguments into calls of the packages below; the command line calls these same
functions. Nothing here imports Ray unless `train` is asked for workers.

The run folder's lock lives here, in `train` (and, for a search folder, in
`selfsup.cluster.tune.run_search`): `train` holds it (`selfsup.locks.hold_output_folder`) from
before it reads the run's checkpoints until the run has ended, in this process or as the driver
of the Ray workers that write into the folder. `selfsup.trainer.loop.train`, which those workers,
Tune trials and tests call, takes no lock: it runs under its caller's (the workers, in other
processes, would be refused it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from selfsup.errors import ConfigError

TRAIN_LOCK_PURPOSE = "selfsup train"  # how a refused second run names the holder of a run folder


def convert(source: str | Path, output: str | Path, *, shard_size: int | str = "256MB",
            max_side: int | None = None, val_fraction: float = 0.0, workers: int | None = None,
            seed: int = 0, progress: bool = True, ray_address: str | None = None, use_ray: bool = False,
            masks: str | Path | None = None):
    """Convert the image folder `source` into WebDataset shards in `output` (resumable); returns
    the `ConvertSummary` (`format_summary` in `selfsup.pipeline.convert` prints it).

    `use_ray`: read the images in Ray tasks (a cluster's CPUs, `ray_address="auto"`), writing the
    shards here as the local path does. `masks`: a folder of PNG label maps mirroring `source`,
    carried as each sample's `KEY.seg.png` (for `selfsup eval segment`).

    Raises DatasetError for bad input (a class folder that cannot be listed, OUT holding something
    else) and for a write that fails (a full or read-only disk: run again to finish), and
    FolderLockedError when another conversion is writing into `output`. Entries of `source` that
    cannot be read are skipped and listed in `output/errors.jsonl`."""
    from selfsup.pipeline.convert import convert as convert_folder

    map_in_order = None
    if use_ray:
        from selfsup.cluster.convert_tasks import ray_map_in_order
        from selfsup.cluster.local_ray import ensure_ray

        ensure_ray(ray_address, dashboard=False)
        map_in_order = ray_map_in_order
    return convert_folder(source, output, shard_size=shard_size, max_side=max_side, val_fraction=val_fraction,
                          workers=workers, seed=seed, progress=progress, map_in_order=map_in_order, masks=masks)


def index(shards: str | Path, *, label_field: str | None = None, unlabeled: bool = False,
          split_patterns: dict[str, str] | None = None, val_fraction: float = 0.0, workers: int | None = None,
          progress: bool = True):
    """Adopt the WebDataset shards under the folder `shards` (made elsewhere: img2dataset, the Hub) in
    place: writes each tar's `.idx`, `manifest.parquet`, `errors.jsonl` and `dataset.json` beside
    them and leaves the tars untouched; returns the `IndexSummary` (`format_index_summary` in
    `selfsup.pipeline.index` prints it). Every image is decoded; those that do not decode are
    listed and left out of the index, so the loader never reads them.

    Labels come from the `.cls` members, or from `label_field` of each `.json` member;
    `unlabeled` ignores them. Every shard is `train` unless `split_patterns` ({"val": "*val*"},
    globs on the shard paths) or `val_fraction` (the last shards, whole) say otherwise."""
    from selfsup.pipeline.index import index as index_shards

    return index_shards(shards, label_field=label_field, unlabeled=unlabeled, split_patterns=split_patterns,
                        val_fraction=val_fraction, workers=workers, progress=progress)


def verify(dataset: str | Path, *, progress: bool = False):
    """Read every shard of a converted dataset back and decode every image; the `VerifyReport`
    (`.ok`, and each bad shard and key). Never raises on corrupt data."""
    from selfsup.pipeline.verify import verify as verify_dataset

    return verify_dataset(dataset, progress=progress)


def data_location(data: str | Path) -> str:
    """A dataset as the workers should see it: a URI (s3://, gs://, file://) as given, a path made absolute."""
    from selfsup.pipeline.staging import is_uri

    return str(data) if is_uri(str(data)) else str(Path(data).resolve())


def resolve_run_config(config, *, data: str | Path | None = None, overrides: Sequence[str] = (),
                       resume: str | Path | None = None):
    """The typed `Config` of a run: `config` is a shipped config's name (`"simclr"`), a YAML path,
    or a `Config`; `data` sets data.path, `resume` trainer.resume, then `overrides` (`key=value`)."""
    from selfsup.trainer.config import Config, config_to_dict, load_config
    from selfsup.trainer.resume import find_checkpoint

    extra = list(overrides)
    if data:
        extra.append(f"data.path={data_location(data)}")
    if resume:
        extra.append(f"trainer.resume={find_checkpoint(resume).resolve()}")
    if isinstance(config, Config):
        resolved = load_config(None, extra, base=config_to_dict(config))
    else:
        resolved = load_config(config, extra)
    if not resolved.data.path:
        raise ConfigError("no dataset: pass --data OUT (a folder written by `selfsup convert`)")
    return resolved


def check_before_launch(config, output: str | Path):
    """Catch a bad dataset or recipe, a memory bank sized for another dataset, a missing or unfit
    tokenizer (BEiT's), or a checkpoint in `output` (or trainer.resume) that does not fit the run,
    now, with a one-line error, before any worker starts. Returns `config` with its memory bank
    sized to the data (`size_memory_bank`) and its tokenizer's sizes (`resolve_tokenizer`)."""
    from selfsup.trainer.loop import check_resume_fits

    config = check_config_before_launch(config)
    check_resume_fits(config, output)
    return config


def check_config_before_launch(config):
    """The part of `check_before_launch` that reads no run folder: the dataset, the recipe, the
    model, the memory bank (sized to the data in the config returned), the tokenizer."""
    from selfsup.pipeline.dataset import load_dataset_info
    from selfsup.pipeline.staging import is_uri
    from selfsup.trainer.model import check_buildable, check_labels, resolve_tokenizer, size_memory_bank

    if not is_uri(str(config.data.path)):  # a URI is checked, and its bank sized, by each node as it stages it
        dataset = load_dataset_info(config.data.path)
        check_labels(config, dataset)
        config = size_memory_bank(config, dataset.split("train").count)
    config = resolve_tokenizer(config)
    check_buildable(config)
    return config


def train(config, output: str | Path, *, data: str | Path | None = None, overrides: Sequence[str] = (),
          resume: str | Path | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
          cpus_per_worker: float = 1.0, address: str | None = None, max_failures: int = 0,
          storage: str | None = None, spread: bool = False) -> dict:
    """Pretrain as `config` says into the run folder `output`; returns the run's summary (its
    "step", "loss" and the other last metrics, and "stopped" when a signal stopped it early).

    `workers=None` trains in this process, without Ray (one device: the GPU when there is one).
    `workers=N` runs N DDP ranks through Ray Train, on a local Ray or the cluster at `address`,
    each with `gpus_per_worker` GPUs and `cpus_per_worker` CPUs; `max_failures`, `storage` and
    `spread` are Ray's fault tolerance, checkpoint storage and placement. Running the same call
    again continues from the run's latest checkpoint, exactly.

    The call holds the run folder's lock throughout (see the module docstring): while one run
    writes into `output`, another `train` into it raises FolderLockedError at once, naming the
    holder (host, pid, since when). A lock left by a run that was killed is taken over."""
    from selfsup.locks import hold_output_folder
    from selfsup.trainer.config import save_config
    from selfsup.trainer.loop import check_resume_fits

    resolved = resolve_run_config(config, data=data, overrides=overrides, resume=resume)
    resolved = check_config_before_launch(resolved)  # before the run folder is made: a bad config leaves none
    run = Path(output)
    with hold_output_folder(run.resolve(), TRAIN_LOCK_PURPOSE):
        check_resume_fits(resolved, run)  # under the lock: no other run is writing checkpoints now
        if workers is None:
            from selfsup.trainer.loop import train as train_here

            save_config(resolved, run / "config.yaml")
            return train_here(resolved, run)
        from selfsup.cluster.train_job import run_training

        return run_training(resolved, output, workers=workers, use_gpu=gpus_per_worker > 0,
                            gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, address=address,
                            max_failures=max_failures, storage=storage, spread=spread)


def load_backbone(run_or_checkpoint: str | Path, *, weights: str = "student", random_init: bool = False):
    """The pretrained backbone of a run folder or checkpoint, a plain `torch.nn.Module` in eval
    mode (strictly loaded). `weights="teacher"`: the momentum teacher of the methods that keep
    one; `random_init`: the same architecture untrained, the baseline to compare against."""
    backbone, _ = load_backbone_and_config(run_or_checkpoint, weights=weights, random_init=random_init)
    return backbone.eval()


def load_backbone_and_config(run_or_checkpoint: str | Path, *, weights: str = "student",
                             random_init: bool = False):
    """`load_backbone`, with the run's typed `Config` (the evaluation commands need its sizes)."""
    from selfsup.trainer.evaluate import load_backbone as load_from_checkpoint
    from selfsup.trainer.resume import find_checkpoint

    return load_from_checkpoint(find_checkpoint(run_or_checkpoint), random_init=random_init, weights=weights)


def embed(run_or_checkpoint: str | Path, output: str | Path, *, data: str | Path | None = None,
          images: str | Path | None = None, splits: Sequence[str] | None = None, weights: str = "student",
          random_init: bool = False, image_size: int | None = None, batch_size: int | None = None,
          device: str | None = None, progress: bool = False) -> dict:
    """Write one parquet row per image (key, split, source, label, label_name, embedding) of a
    converted dataset `data` (its `splits`, default all) or of a folder `images`, embedded by the
    backbone of a run folder or checkpoint (`weights`/`random_init` as in `load_backbone`), through
    the eval recipe at the run's image size. Streams: memory stays bounded for any number of
    images. Returns {"output", "rows", "dimension", "source"}."""
    import torch

    from selfsup.trainer.embed import embed_images

    backbone, config = load_backbone_and_config(run_or_checkpoint, weights=weights, random_init=random_init)
    return embed_images(backbone, output, data=data, images=images, splits=list(splits) if splits else None,
                        image_size=image_size or config.data.image_size,
                        batch_size=batch_size or config.eval.batch_size,
                        device=device or ("cuda" if torch.cuda.is_available() else "cpu"), progress=progress)
