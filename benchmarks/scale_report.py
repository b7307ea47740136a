"""The scale benchmark's arithmetic and tables: growth of each stage's cost with the work, projections.

A measurement is one stage at one size: {"stage", "size" (images), "seconds" (wall time of the
work itself), "cpu_seconds" (its CPU time, worker processes included), "rss_mib" (the stage
process's peak RSS), and what the stage adds ("first_batch_seconds", "bank_bytes", ...)}. Pure
functions of those dicts, so that tests can check them on real runs. "cost" is CPU seconds per
image; "wall cost" wall seconds per image.
"""

from __future__ import annotations

# stage -> (cost growth target, peak RSS growth target or None where memory is O(N * D) by design)
TARGETS = {
    "listing": (1.15, None),
    "convert": (1.15, 1.2),
    "verify": (1.15, 1.2),
    "index": (1.15, 1.2),
    "loader": (1.15, 1.2),
    "loader_fixed_heap": (1.15, 1.2),
    "features": (1.15, None),
    "knn": (1.15, None),
    "kmeans": (1.15, None),
}
WHAT = {
    "listing": "listing + stat (convert's scan)",
    "convert": "convert (2 workers)",
    "verify": "verify",
    "index": "index (same shards, adopted)",
    "loader": "loader: first batch + 1 epoch",
    "loader_fixed_heap": "loader, MALLOC_MMAP_THRESHOLD_=131072",
    "features": "features: bank extraction",
    "knn": "kNN (1k queries, full bank) + rank",
    "kmeans": "k-means (k=3000, 128-d, 10 it.)",
}
# Why a stage's memory grows with N by design (no RSS target): what it holds.
HELD = {"listing": "the N paths themselves", "features": "the (N, 512) float32 bank",
        "knn": "the (N, 512) float32 bank", "kmeans": "the (N, 128) float32 bank"}
PROJECTED_SIZES = (1_281_167, 10_000_000)
BANK_DIMENSION = 128  # NPID's and DeepCluster-v2's embedding size (configs/npid.yaml, deepcluster_v2.yaml)
ODC_CLUSTERS = 10_000  # ODC (Zhan et al. 2020) as OpenSelfSup configures it for ImageNet


def by_stage(measurements: list[dict]) -> dict[str, list[dict]]:
    """stage -> its measurements, smallest size first."""
    stages: dict[str, list[dict]] = {}
    for measurement in sorted(measurements, key=lambda item: item["size"]):
        stages.setdefault(measurement["stage"], []).append(measurement)
    return stages


def _per_image_growth(runs: list[dict], key: str) -> tuple[float, float | None]:
    """(`key` per image at the largest size / at the smallest, the marginal growth: extra `key` per
    extra image between the two largest sizes over the same between the two smallest, which
    leaves out fixed start-up costs; None with fewer than three sizes)."""
    first, last = runs[0], runs[-1]
    growth = round((last[key] / last["size"]) / (first[key] / first["size"]), 3)
    if len(runs) < 3:
        return growth, None
    low = (runs[1][key] - runs[0][key]) / (runs[1]["size"] - runs[0]["size"])
    high = (runs[-1][key] - runs[-2][key]) / (runs[-1]["size"] - runs[-2]["size"])
    return growth, (round(high / low, 3) if low > 0 else None)


def stage_growth(runs: list[dict]) -> dict:
    """Cost (CPU seconds) and wall time per image at the largest size over the smallest, their
    marginal growth, and the peak RSS at the largest size over the smallest."""
    first, last = runs[0], runs[-1]
    cost, marginal = _per_image_growth(runs, "cpu_seconds")
    wall, wall_marginal = _per_image_growth(runs, "seconds")
    growth = {"sizes": [first["size"], last["size"]], "cost_growth": cost, "wall_cost_growth": wall,
              "rss_growth": round(last["rss_mib"] / first["rss_mib"], 3)}
    if marginal is not None:
        growth.update(marginal_cost_growth=marginal, marginal_wall_cost_growth=wall_marginal)
    if "bank_bytes" in last:
        growth["bank_mib"] = [round(first["bank_bytes"] / 2**20, 1), round(last["bank_bytes"] / 2**20, 1)]
    return growth


def verdict(value: float | None, target: float | None) -> str:
    if target is None or value is None:
        return "no target"
    return "met" if value <= target else "NOT met"


def growths(measurements: list[dict]) -> dict[str, dict]:
    """stage -> `stage_growth`, with each target and its verdict, for stages measured at two sizes or more."""
    result = {}
    for stage, runs in by_stage(measurements).items():
        if len(runs) < 2:
            continue
        growth = stage_growth(runs)
        cost_target, rss_target = TARGETS.get(stage, (None, None))
        growth.update(cost_target=cost_target, rss_target=rss_target,
                      cost_verdict=verdict(growth["cost_growth"], cost_target),
                      rss_verdict=verdict(growth["rss_growth"], rss_target))
        result[stage] = growth
    return result


def _size_label(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 and size % 1_000_000 == 0 else (
        f"{size // 1000}k" if size >= 1000 and size % 1000 == 0 else str(size))


def format_table(measurements: list[dict]) -> str:
    """A markdown table: one row per stage and size (time, images/s, microseconds per image, peak RSS)."""
    lines = ["| stage | images | seconds | images/s | CPU s | CPU us/image | peak RSS (MiB) | load | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for stage, runs in by_stage(measurements).items():
        for run in runs:
            notes = []
            if "walk_seconds" in run:
                notes.append(f"os.walk {run['walk_seconds']:.2f} s, os.walk + os.stat {run['walk_stat_seconds']:.2f} s: "
                             f"{run['seconds'] / run['walk_stat_seconds']:.1f}x the latter")
            if "first_batch_seconds" in run:
                notes.append(f"first batch {run['first_batch_seconds']:.2f} s, epoch "
                             f"{run['epoch_images_per_second']:.0f} img/s; RSS {run['rss_first_batch_mib']:.0f} MiB "
                             f"at the first batch, {run['rss_end_mib']:.0f} after {run['batches']}")
            if "bank_bytes" in run:
                notes.append(f"bank {run['bank_bytes'] / 2**20:.1f} MiB")
            if "knn_seconds" in run:
                notes.append(f"kNN {run['knn_seconds']:.2f} s, top-1 {run['top1']:.1f}%")
            lines.append(f"| {WHAT.get(stage, stage)} | {_size_label(run['size'])} | {run['seconds']:.2f} | "
                         f"{run['size'] / run['seconds']:.0f} | {run['cpu_seconds']:.2f} | "
                         f"{1e6 * run['cpu_seconds'] / run['size']:.0f} | {run['rss_mib']:.0f} | "
                         f"{run.get('load_average', 0):.1f} | {'; '.join(notes)} |")
    return "\n".join(lines)


def format_growth_lines(stage_growths: dict[str, dict]) -> str:
    """One line per stage: the cost and RSS growth between the smallest and the largest size, with targets."""
    lines = []
    for stage, growth in stage_growths.items():
        low, high = (_size_label(size) for size in growth["sizes"])
        cost = (f"CPU cost/image {high}/{low} = {growth['cost_growth']:.2f} (target <= {growth['cost_target']}: "
                f"{growth['cost_verdict']})")
        if growth.get("marginal_cost_growth") is not None:
            cost += f", marginal {growth['marginal_cost_growth']:.2f}"
        cost += f"; wall {growth['wall_cost_growth']:.2f}"
        if growth["rss_target"] is not None:
            rss = (f"peak RSS {high}/{low} = {growth['rss_growth']:.2f} (target <= {growth['rss_target']}: "
                   f"{growth['rss_verdict']})")
        else:
            rss = f"peak RSS {high}/{low} = {growth['rss_growth']:.2f} (no target: it holds {HELD.get(stage, 'O(N) data')}"
            rss += f", {growth['bank_mib'][0]} -> {growth['bank_mib'][1]} MiB)" if "bank_mib" in growth else ")"
        lines.append(f"{stage:9s} {cost}; {rss}")
    return "\n".join(lines)


def projection(measurements: list[dict], files: dict[int, dict], sizes=PROJECTED_SIZES) -> list[dict]:
    """Per projected size: CPU hours from the largest measured size's CPU seconds per image, on-disk sizes
    from its bytes per image, and the memory banks (float32 and float16) of NPID, DeepCluster-v2
    and ODC, computed from their shapes."""
    stages = by_stage(measurements)
    largest = max(files) if files else None
    rows = []
    for size in sizes:
        row = {"size": size}
        for stage, runs in stages.items():
            row[f"{stage}_hours"] = runs[-1]["cpu_seconds"] / runs[-1]["size"] * size / 3600
        if largest is not None:
            for name, value in files[largest].items():
                row[f"{name}_gib"] = value / largest * size / 2**30
        row["npid_bank_gib"] = [size * BANK_DIMENSION * width / 2**30 for width in (4, 2)]
        row["deepcluster_bank_gib"] = [(2 * size * BANK_DIMENSION * width + 3 * size * 8 + size) / 2**30
                                       for width in (4, 2)]
        row["odc_bank_gib"] = [(size * BANK_DIMENSION * width + size * 8 + ODC_CLUSTERS * BANK_DIMENSION * width)
                               / 2**30 for width in (4, 2)]
        rows.append(row)
    return rows


def format_projection(rows: list[dict]) -> str:
    """The projection as a markdown table, one column per projected size."""
    if not rows:
        return ""
    header = "| | " + " | ".join(f"{row['size']:,} images" for row in rows) + " |"
    lines = [header, "|---|" + "---|" * len(rows)]
    names = [key for key in rows[0] if key != "size"]
    for name in names:
        cells = []
        for row in rows:
            value = row[name]
            if isinstance(value, list):
                cells.append(f"{value[0]:.2f} (fp32) / {value[1]:.2f} (fp16)")
            else:
                cells.append(f"{value:.2f}")
        label = name.replace("_hours", " (CPU hours)").replace("_gib", " (GiB)").replace("_", " ")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
