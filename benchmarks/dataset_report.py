"""A dataset profile's stored results and the RESULTS.md section and verdict made from them.

`benchmarks.dataset_run` stores one JSON file per method and budget (`NAME-Eep.json`) and one
per baseline (`random-BACKBONE-SIZEpx.json`, `pixels.json`) in the profile's store;
`write_section` rewrites the section "Methods on TITLE (E epochs)" of RESULTS.md from them, and
`verdict` is its last line. Every figure is a top-1 on the held-out test set; the margins are the
half-widths of approximate 95% intervals over its queries: binomial for one accuracy, paired
(`methods_report.paired_margin`) for a difference between two classifiers on the same queries.
A method is "above" a baseline when its linear top-1 exceeds the baseline's by more than the
paired margin.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from benchmarks.datasets import DatasetProfile
from benchmarks.methods_report import outdated, paired_margin
from selfsup.files import write_atomically
from selfsup.methods.registry import METHODS

CEILING = "supervised"  # trained with the labels: the ceiling, not one of the M methods
PIXELS = "pixels.json"


def random_name(backbone: str, image_size: int, small_input: bool = False) -> str:
    return f"random-{backbone}-{image_size}px{'-small-stem' if small_input else ''}.json"


def accuracy_margin(top1: float, queries: int) -> float:
    """Half-width (points) of the binomial 95% interval of one top-1 (percent) over `queries`."""
    p = top1 / 100.0
    return 100.0 * 1.96 * math.sqrt(p * (1.0 - p) / queries)


def accuracy_cell(row: dict, probe: str, prefix: str = "") -> str:
    """"76.8 ± 0.8": the test top-1 of `probe` ("knn" or "linear") with its margin; "-" if missing."""
    top1 = row.get(f"{prefix}test_{probe}_top1")
    return "-" if top1 is None else f"{top1:.1f} ± {accuracy_margin(top1, row[f'{prefix}test_queries']):.1f}"


def gain(row: dict, baseline: dict, prefix: str = "", probe: str = "linear") -> tuple[float, float] | None:
    """The test top-1 of `row` minus the baseline's (its `prefix`ed fields) and the paired margin."""
    mine, theirs = row.get(f"test_{probe}_correct"), baseline.get(f"{prefix}test_{probe}_correct")
    if not mine or not theirs:
        return None
    return (row[f"test_{probe}_top1"] - baseline[f"{prefix}test_{probe}_top1"], paired_margin(mine, theirs))


def gain_cell(difference: tuple[float, float] | None) -> str:
    return "-" if difference is None else f"{difference[0]:+.1f} ± {difference[1]:.1f}"


def above(difference: tuple[float, float] | None) -> bool:
    return difference is not None and difference[0] > difference[1]


def random_prefix(random: dict) -> str:
    """Which random init a method is held against: as built, or after precise BN ("precise_bn_"),
    whichever has the higher linear top-1 on the VAL split (the test set chooses nothing)."""
    recalibrated = random.get("precise_bn_val_linear_top1")
    return "precise_bn_" if recalibrated is not None and recalibrated > random["val_linear_top1"] else ""


def comparisons(row: dict, baselines: dict) -> dict:
    """The linear-probe differences of a method row against its random init and the pixels."""
    random = baselines["random"].get(random_name(row["backbone"], row["image_size"], row.get("small_input", False)))
    pixels = baselines.get("pixels")
    return {"random": None if random is None else gain(row, random, random_prefix(random)),
            "pixels": None if pixels is None else gain(row, pixels)}


def verdict(profile: DatasetProfile, rows: list[dict], baselines: dict) -> str:
    """verdict: NAME linear: N of M above random init, K of M above raw pixels; best METHOD X% vs supervised Y%"""
    methods = [row for row in rows if row["method"] != CEILING and row.get("test_linear_top1") is not None]
    against = [comparisons(row, baselines) for row in methods]
    best = max(methods, key=lambda row: row["test_linear_top1"], default=None)
    ceiling = next((row for row in rows if row["method"] == CEILING and row.get("test_linear_top1") is not None),
                   None)
    best_text = f"{best['method']} {best['test_linear_top1']:.1f}%" if best else "none -%"
    ceiling_text = f"{ceiling['test_linear_top1']:.1f}%" if ceiling else "-%"
    return (f"verdict: {profile.name} linear: {sum(above(c['random']) for c in against)} of {len(methods)} above "
            f"random init, {sum(above(c['pixels']) for c in against)} of {len(methods)} above raw pixels; "
            f"best {best_text} vs supervised {ceiling_text}")


def method_row(row: dict, baselines: dict) -> list[str]:
    versus = comparisons(row, baselines)
    minutes = "-" if row.get("train_seconds") is None else f"{row['train_seconds'] / 60:.0f}"
    speed = "-" if row.get("images_per_second") is None else f"{row['images_per_second']:.0f}"
    name = row["method"] + (" (labels)" if row["method"] == CEILING else "")
    backbone = row["backbone"] + (" (teacher)" if row.get("weights") == "teacher" else "")
    return [name, backbone, accuracy_cell(row, "knn"), accuracy_cell(row, "linear"), gain_cell(versus["random"]),
            gain_cell(versus["pixels"]), f"{row['val_knn_top1']:.1f} / {row['val_linear_top1']:.1f}", speed,
            minutes, f"{row['images_seen']:,}"]


def baseline_rows(baselines: dict) -> list[list[str]]:
    rows = []
    for name, random in sorted(baselines["random"].items()):
        label = f"random init, {random['image_size']} px"
        for prefix, what in (("", label), ("precise_bn_", label + " + precise BN")):
            if random.get(f"{prefix}val_knn_top1") is not None:
                rows.append([f"*{what}*", random["backbone"], accuracy_cell(random, "knn", prefix),
                             accuracy_cell(random, "linear", prefix), "", "",
                             f"{random[f'{prefix}val_knn_top1']:.1f} / {random[f'{prefix}val_linear_top1']:.1f}",
                             "", "", ""])
    pixels = baselines.get("pixels")
    if pixels is not None:
        rows.append([f"*raw pixels ({pixels['features']} values)*", "-", accuracy_cell(pixels, "knn"),
                     accuracy_cell(pixels, "linear"), "", "",
                     f"{pixels['val_knn_top1']:.1f} / {pixels['val_linear_top1']:.1f}", "", "", ""])
    return rows


HEADER = ["method", "backbone", "kNN (%)", "linear (%)", "linear vs random init", "linear vs raw pixels",
          "val kNN / linear (%)", "images/s", "pretraining (min)", "images seen"]


def section_heading(profile: DatasetProfile, epochs: int) -> str:
    return f"## Methods on {profile.title} ({epochs} epochs)"


def section(profile: DatasetProfile, epochs: int, rows: list[dict], baselines: dict,
            current_overrides: Callable[[str], list[str]], current_weights: Callable[[str], str]) -> str:
    """The markdown section: what was run, the per-method settings, the table and the verdict."""
    measured = rows + list(baselines["random"].values()) + ([baselines["pixels"]] if baselines.get("pixels") else [])
    dates = sorted({row["date"] for row in measured})
    machines = sorted({row.get("machine", "an unrecorded machine") for row in measured})
    queries = next((row["test_queries"] for row in measured if row.get("test_queries")), None)
    test_images = f"{queries:,} test images" if queries else "test images (none measured here: --val-only)"
    lines = [section_heading(profile, epochs), "",
             f"Measured {dates[0] if len(dates) == 1 else dates[0] + ' to ' + dates[-1]} on {'; '.join(machines)}, "
             f"with `python -m benchmarks.methods --dataset {profile.name}`. {profile.description}.", "",
             f"Budget per method, from its shipped config: {epochs} epochs, {profile.image_size} px, batch "
             f"{profile.batch_size}, the shared overrides `{' '.join(profile.budget)}`; views: "
             f"`{' '.join(profile.two_view_recipe)}` (two-view methods), `{' '.join(profile.multicrop_recipe)}` "
             "(multi-crop). Each row's own overrides are in its result file. Settings some methods need:", "",
             "| method | overrides | why |", "|---|---|---|"]
    lines += [f"| {name} | `{' '.join(setting.overrides)}`"
              + (f" ({setting.epoch_share:g} of the epochs)" if setting.epoch_share != 1.0 else "")
              + f" | {setting.reason} |" for name, setting in profile.per_method.items()]
    lines += ["", f"Every figure is a top-1 on the {test_images} (bank and probe training set: the train "
              "split), ± the half-width of its 95% interval; *vs* columns: the method's linear top-1 minus the "
              "baseline's, ± the paired 95% margin over the same queries (random init: as built or after precise "
              "BN, whichever has the higher val linear top-1). *val*: the val split's figures, the only ones used "
              "to choose settings. kNN: k=20, T=0.07; linear: 100 epochs of SGD on standardized frozen features "
              "(`trainer.linear_probe`; for the raw pixels, the same classifier on the standardized pixel values). "
              "images/s: training images per second of the run (1 torch and 1 DALI thread).", "",
              "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in baseline_rows(baselines)]
    order = list(METHODS)
    for row in sorted(rows, key=lambda row: order.index(row["method"]) if row["method"] in order else len(order)):
        lines.append("| " + " | ".join(method_row(row, baselines)) + " |")
    differ, unrecorded = outdated(rows, current_overrides, current_weights)
    if differ:
        lines += ["", f"Measured with other settings than today's profile (re-measure with `--methods "
                  f"{','.join(differ)} --force`): {', '.join(differ)}."]
    missing = [name for name in METHODS if name not in {row["method"] for row in rows}]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)}."]
    lines += ["", verdict(profile, rows, baselines)]
    return "\n".join(lines) + "\n"


def write_section(results_md: Path, heading: str, text: str) -> None:
    """Replace the section under `heading` in `results_md` (up to the next "## "), or append it."""
    current = results_md.read_text() if results_md.is_file() else "# Benchmark results\n"
    if heading + "\n" in current:
        before, rest = current.split(heading + "\n", 1)
        after = rest.split("\n## ", 1)
        current = before + text + ("\n## " + after[1] if len(after) > 1 else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    write_atomically(results_md, current.encode())


def _read(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"{path}: not a readable result file ({error}); measure it again with --force") from None
    if not isinstance(result, dict):
        raise SystemExit(f"{path}: expected a JSON object")
    return result


def stored(store: Path, epochs: int) -> tuple[list[dict], dict]:
    """The method results of this budget, and the baselines {"random": {file name: result}, "pixels": result}."""
    rows = [row for row in (_read(path) for path in sorted(store.glob(f"*-{epochs}ep.json"))) if row.get("epochs") == epochs]
    baselines = {"random": {path.name: _read(path) for path in sorted(store.glob("random-*.json"))}}
    if (store / PIXELS).is_file():
        baselines["pixels"] = _read(store / PIXELS)
    return rows, baselines
