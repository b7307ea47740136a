"""One stage of the scale benchmark, in a fresh process: `python benchmarks/scale_stages.py STAGE JSON`.

Run by `benchmarks/scale.py`, one process per stage and size, so that the parent reads each
stage's own peak RSS (`os.wait4`). Imports only `selfsup` (from PYTHONPATH: the checkout being
measured) and prints one JSON object as its last line: {"seconds": time of the work itself, ...}.
The arguments (JSON): {"work": the size's folder, "images": ..., "test": the query set, "threads": N}.

`CLOCK` marks where each stage's work starts and stops, in wall time and in this process's CPU
time; the parent takes the CPU time of the whole process tree from `os.wait4` and removes what
was spent before the start (imports) and after the stop, which leaves the work's CPU seconds,
its workers' included: a cost that the other jobs of a shared machine disturb far less than
wall time.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

FEATURE_BACKBONE = "resnet18"  # at FEATURE_SIZE px with the ImageNet stem: 512-d features
FEATURE_SIZE = 32
LOADER_SIZE = 32
LOADER_BATCH = 256
KMEANS_DIM, KMEANS_CLUSTERS, KMEANS_ITERATIONS = 128, 3000, 10  # DeepCluster-v2's bank and k, one head


class Clock:
    """Wall and CPU time at the start and the stop of a stage's work."""

    def __init__(self):
        self.started = self.cpu_at_start = self.cpu_at_stop = 0.0

    def start(self) -> None:
        self.cpu_at_start, self.started = time.process_time(), time.perf_counter()

    def stop(self) -> float:
        """Wall seconds since `start`."""
        seconds = time.perf_counter() - self.started
        self.cpu_at_stop = time.process_time()
        return seconds


CLOCK = Clock()


def stage_listing(arguments: dict) -> dict:
    """What `convert` does before reading any image (list the candidates, stat each for the
    fingerprint), then, untimed by CLOCK and after ours is freed, a bare `os.walk` and `os.walk` +
    `os.stat` of the same folder for comparison."""
    from selfsup.pipeline.convert_plan import scan_source, source_fingerprint

    images = Path(arguments["images"])
    CLOCK.start()
    files, _, _ = scan_source(images)
    source_fingerprint(images, files, {})
    seconds = CLOCK.stop()
    count = len(files)
    del files
    started = time.perf_counter()
    names = [os.path.join(folder, name) for folder, _, found in os.walk(images) for name in found]
    walk = time.perf_counter() - started
    for name in names:
        os.stat(name)
    walk_stat = time.perf_counter() - started
    return {"seconds": seconds, "samples": count, "walk_seconds": walk, "walk_stat_seconds": walk_stat}


def stage_convert(arguments: dict) -> dict:
    from selfsup.pipeline.convert import convert

    CLOCK.start()
    summary = convert(arguments["images"], Path(arguments["work"]) / "shards", shard_size="16MB",
                      workers=arguments["threads"], progress=False)
    return {"seconds": CLOCK.stop(), "samples": sum(summary.counts.values())}


def stage_verify(arguments: dict) -> dict:
    from selfsup.pipeline.verify import verify

    CLOCK.start()
    report = verify(Path(arguments["work"]) / "shards")
    seconds = CLOCK.stop()
    if not report.ok:
        raise SystemExit(f"verify found problems: {report.problems[:3]}")
    return {"seconds": seconds, "samples": report.samples_checked}


def stage_index(arguments: dict) -> dict:
    from selfsup.pipeline.index import index

    CLOCK.start()
    summary = index(Path(arguments["work"]) / "foreign", workers=arguments["threads"], progress=False)
    return {"seconds": CLOCK.stop(), "samples": sum(summary.counts.values())}


def resident_mib() -> float:
    """This process's current resident set (VmRSS), in MiB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return 0.0


def stage_loader(arguments: dict) -> dict:
    from selfsup.pipeline.dataset import load_dataset_info
    from selfsup.pipeline.loader import build_train_loader
    from selfsup.pipeline.recipes import simclr_recipe

    CLOCK.start()
    started = CLOCK.started
    dataset = load_dataset_info(Path(arguments["work"]) / "shards")
    batch_size = arguments.get("loader_batch", LOADER_BATCH)
    loader = build_train_loader(dataset, simclr_recipe(image_size=LOADER_SIZE), batch_size=batch_size,
                                num_threads=arguments["threads"], seed=0)
    batches = iter(loader)
    next(batches)
    first_batch = time.perf_counter() - started
    at_first_batch = resident_mib()
    for _ in range(loader.steps_per_epoch - 1):
        next(batches)
    seconds = CLOCK.stop()
    at_end = resident_mib()
    loader.close()
    read = loader.steps_per_epoch * batch_size
    return {"seconds": seconds, "first_batch_seconds": first_batch, "samples": read,
            "epoch_images_per_second": (read - batch_size) / max(seconds - first_batch, 1e-9),
            "rss_first_batch_mib": at_first_batch, "rss_end_mib": at_end, "batches": loader.steps_per_epoch}


def _backbone():
    import torch

    from selfsup.methods.backbones import build_backbone

    torch.manual_seed(0)
    backbone, dimension = build_backbone(FEATURE_BACKBONE, small_input=False)
    return backbone.eval(), dimension


def stage_features(arguments: dict) -> dict:
    import torch

    from selfsup.pipeline.dataset import load_dataset_info
    from selfsup.trainer.evaluate import extract_features

    torch.set_num_threads(arguments["threads"])
    backbone, dimension = _backbone()
    queries, query_labels = extract_features(backbone, load_dataset_info(arguments["test"]), "train",
                                             FEATURE_SIZE, 256, torch.device("cpu"))
    CLOCK.start()
    bank, labels = extract_features(backbone, load_dataset_info(Path(arguments["work"]) / "shards"), "train",
                                    FEATURE_SIZE, 256, torch.device("cpu"))
    seconds = CLOCK.stop()
    torch.save({"bank": bank, "labels": labels, "queries": queries, "query_labels": query_labels},
               Path(arguments["work"]) / "features.pt")
    return {"seconds": seconds, "samples": len(bank), "bank_bytes": bank.numel() * bank.element_size(),
            "dimension": dimension}


def stage_knn(arguments: dict) -> dict:
    import torch

    from selfsup.trainer.evaluate import effective_rank
    from selfsup.trainer.knn import knn_accuracy

    torch.set_num_threads(arguments["threads"])
    saved = torch.load(Path(arguments["work"]) / "features.pt", weights_only=True)
    CLOCK.start()
    result = knn_accuracy(saved["bank"], saved["labels"], saved["queries"], saved["query_labels"],
                          num_classes=int(saved["labels"].max()) + 1, k=20, temperature=0.07)
    knn_seconds = time.perf_counter() - CLOCK.started
    rank = effective_rank(saved["bank"])
    return {"seconds": CLOCK.stop(), "knn_seconds": knn_seconds, "samples": len(saved["bank"]),
            "queries": len(saved["queries"]), "top1": result["top1"], "effective_rank": rank,
            "bank_bytes": saved["bank"].numel() * saved["bank"].element_size()}


def stage_kmeans(arguments: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from selfsup.methods.deepcluster_v2 import spherical_kmeans

    torch.set_num_threads(arguments["threads"])
    generator = torch.Generator().manual_seed(0)
    points = F.normalize(torch.randn(arguments["count"], KMEANS_DIM, generator=generator), dim=1)
    CLOCK.start()
    spherical_kmeans(points, KMEANS_CLUSTERS, KMEANS_ITERATIONS, generator)
    return {"seconds": CLOCK.stop(), "samples": arguments["count"],
            "bank_bytes": points.numel() * points.element_size()}


STAGES = {"listing": stage_listing, "convert": stage_convert, "verify": stage_verify, "index": stage_index, "loader": stage_loader,
          "loader_fixed_heap": stage_loader, "features": stage_features, "knn": stage_knn, "kmeans": stage_kmeans}


def peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM), or its largest waited-for worker's if that is higher.

    Not the parent's wait4 figure: Linux carries the pre-exec high-water mark of the forking process
    (the benchmark, or pytest at a gigabyte) into the exec'd child's ru_maxrss.
    """
    own = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


if __name__ == "__main__":
    name, arguments = sys.argv[1], json.loads(sys.argv[2])
    result = STAGES[name](arguments)
    result.update(cpu_before_work=CLOCK.cpu_at_start, cpu_after_work=time.process_time() - CLOCK.cpu_at_stop,
                  load_average=os.getloadavg()[0], peak_rss_kib=peak_rss_kib())
    print(json.dumps(result), flush=True)
