"""Training steps fed by the real DALI loader against the same steps fed from memory.

    python -m benchmarks.train_step                       # defaults for this machine (GPU or CPU)
    python -m benchmarks.train_step --json                # one JSON object: loader_ips, memory_ips, ...
    python -m benchmarks.train_step --data OUT --set model.backbone=resnet50 --set data.image_size=224

One process, one model and optimizer, the trainer's own step (`trainer.step`: forward, backward,
optimizer step, one host sync per step as in the loop). Mode "loader": batches come from the
trainer's `DataStream` (the DALI graph of the method's recipe, rebuilt each epoch, exactly as
`train()` reads them). Mode "memory": the same number of steps over a few batches taken from the
loader beforehand and kept on the training device, so the data costs nothing. The two modes
alternate (first one, then the other first) for `--rounds` rounds after warm-up steps; each
mode's best round is reported (the medians too), and
`ratio = loader_ips / memory_ips` (1.0 = the loader costs nothing).

Defaults: on a GPU, SimCLR with ResNet-50 at 224 px, batch 128, bf16 (the target: ratio >= 0.95);
on a CPU-only machine, ResNet-18 at 64 px, batch 32. Without `--data`, a demo dataset (10 shape
classes x 100 images of 96 px) is made and converted once into `--workdir`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_train_loader, default_threads
from selfsup.trainer.config import load_config
from selfsup.trainer.data import DataStream
from selfsup.trainer.model import build_model, prepare_model, recipe_for, seed_everything, to_channels_last
from selfsup.trainer.optimizers import build_optimizer
from selfsup.trainer.step import accumulate_gradients, apply_update

ROOT = Path(__file__).resolve().parent.parent
GPU_DEFAULTS = ["model.backbone=resnet50", "data.image_size=224", "data.batch_size=128"]
CPU_DEFAULTS = ["model.backbone=resnet18", "data.image_size=64", "data.batch_size=32",
                "method.projection_hidden_dim=512"]


def demo_dataset(workdir: Path) -> Path:
    from selfsup.pipeline.convert import convert
    from selfsup.pipeline.demo_images import make_demo_folder

    output = workdir / "shards"
    if not (output / "dataset.json").exists():
        folder = make_demo_folder(workdir / "images", images_per_class=100, size=96, seed=0)
        convert(folder, output, shard_size="1MB", val_fraction=0.0, workers=None, seed=0, progress=False)
    return output


def timed_steps(model, optimizer, next_batch, steps: int, *, precision: str, device: torch.device,
                channels_last: bool) -> float:
    """Seconds for `steps` optimizer steps (the loop's step: forward/backward, update, host sync)."""
    fetch = (lambda: to_channels_last(next_batch())) if channels_last else next_batch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        terms = accumulate_gradients(model, model, fetch, 1, autocast_precision=precision, device=device)
        torch.isfinite(terms["loss"]).item()  # the loop's one host sync per step
        apply_update(optimizer, model.parameters(), grad_clip=None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "simclr.yaml"))
    parser.add_argument("--data", default=None, help="a converted dataset (default: a demo one in --workdir)")
    parser.add_argument("--workdir", default="/tmp/selfsup-bench-train-step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before the rounds, per mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-batches", type=int, default=4, help="distinct batches kept in memory")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    data = Path(args.data) if args.data else demo_dataset(Path(args.workdir))
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    config = load_config(args.config, [*defaults, "optim.warmup_epochs=0", f"data.path={data}", *args.set])
    seed_everything(config.seed)
    dataset = load_dataset_info(config.data.path)
    recipe = recipe_for(config)

    def build(epoch: int, dali_checkpoint: bytes | None):
        return build_train_loader(dataset, recipe, batch_size=config.data.batch_size, seed=config.seed, device=device,
                                  num_threads=config.data.num_threads or default_threads(),
                                  prefetch_depth=config.data.prefetch_depth,
                                  shuffle_buffer=config.data.shuffle_buffer, epoch=epoch, resumable=True,
                                  dali_checkpoint=dali_checkpoint)

    model = prepare_model(build_model(config), sync_batchnorm=False, channels_last=config.trainer.channels_last,
                          world_size=1, device=device)
    optimizer = build_optimizer(config.optim.name, model, lr=1e-4, weight_decay=config.optim.weight_decay,
                                momentum=config.optim.momentum, betas=config.optim.betas)
    forward = torch.compile(model) if config.trainer.compile else model
    stream = DataStream(build)
    memory = [{key: value.clone() for key, value in next(stream).items()} for _ in range(args.memory_batches)]
    cycle = itertools.cycle(memory)
    options = {"precision": config.trainer.precision, "device": device, "channels_last": config.trainer.channels_last}
    results: dict[str, list[float]] = {"loader": [], "memory": []}
    try:
        timed_steps(forward, optimizer, lambda: next(stream), args.warmup, **options)
        timed_steps(forward, optimizer, lambda: next(cycle), args.warmup, **options)
        modes = [("loader", lambda: next(stream)), ("memory", lambda: next(cycle))]
        for round_index in range(args.rounds):  # alternate which mode goes first
            for mode, next_batch in (modes if round_index % 2 == 0 else modes[::-1]):
                seconds = timed_steps(forward, optimizer, next_batch, args.steps, **options)
                results[mode].append(args.steps * config.data.batch_size / seconds)
    finally:
        stream.close()
    loader_ips, memory_ips = max(results["loader"]), max(results["memory"])
    summary = {
        "loader_ips": round(loader_ips, 2), "memory_ips": round(memory_ips, 2),
        "ratio": round(loader_ips / memory_ips, 4), "loader_cost_percent": round(100 * (1 - loader_ips / memory_ips), 1),
        "rounds": {mode: [round(value, 2) for value in values] for mode, values in results.items()},
        "median": {mode: round(statistics.median(values), 2) for mode, values in results.items()},
        "method": config.method.name, "backbone": config.model.backbone, "image_size": config.data.image_size,
        "batch_size": config.data.batch_size, "views": len(recipe.views), "steps": args.steps,
        "steps_per_epoch": stream.batches_per_epoch, "precision": config.trainer.precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(), "dali_threads": config.data.num_threads or default_threads(),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['method']} {summary['backbone']} {summary['image_size']} px, batch {summary['batch_size']}, "
              f"{summary['device']}")
        print(f"loader-fed: {loader_ips:.1f} img/s   memory-fed: {memory_ips:.1f} img/s   "
              f"ratio {summary['ratio']:.3f} (loader costs {summary['loader_cost_percent']}%)")
    return summary


if __name__ == "__main__":
    main()
