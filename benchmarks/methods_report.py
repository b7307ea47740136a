"""The methods benchmark's stored results and the RESULTS.md tables rendered from them.

One JSON file per method and budget in `benchmarks/results/methods/NAME-Eep.json`, written by
`benchmarks.methods`; `write_section` rewrites the section "Methods on the demo dataset
(E epochs)" of `benchmarks/RESULTS.md` from them, leaving the tables of other budgets.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Callable

import torch

from selfsup.methods.registry import METHODS
from selfsup.files import write_atomically

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_STORE = ROOT / "benchmarks" / "results" / "methods"
SECTION = "## Methods on the demo dataset"
IMAGE_SIZE = 48
BATCH = 64
TRAIN_SAMPLES = 960  # 1200 images, 20% val
QUERY_SAMPLES = 240  # the val split: the kNN queries
TEST_SAMPLES = 4800  # the held-out test set: 480 more demo images per class, drawn with another seed
DECIDING_EPOCHS = 160  # the budget whose table says whether every method beats random init (issue 4)
# The demo's rows: the self-supervised methods. `supervised` (trained with the labels) is the
# ceiling of the dataset profiles' tables (benchmarks.dataset_report), not a row judged against
# random init here.
DEMO_METHODS = tuple(name for name in METHODS if name != "supervised")


# The kNN figures of a result, on the val split and on the held-out test set: pretrained top-1,
# random-init top-1, and both backbones' per-query outcomes ('0'/'1' per query, in query order).
KNN_FIELDS = {"val": ("knn_top1", "random_top1", "knn_correct", "random_knn_correct"),
              "test": ("test_knn_top1", "random_test_knn_top1", "test_knn_correct", "random_test_knn_correct")}
QUERY_COUNTS = {"val": QUERY_SAMPLES, "test": TEST_SAMPLES}


def verdict_queries(result: dict) -> str:
    """The queries a row is judged on: the held-out test set where measured, else the val split."""
    return "test" if result.get(KNN_FIELDS["test"][0]) is not None else "val"


def gain(result: dict, on: str = "val") -> float:
    """kNN top-1 of the pretrained backbone minus that of its random-init twin, in points."""
    pretrained, random = KNN_FIELDS[on][:2]
    return result[pretrained] - result[random]


def paired_outcomes(result: dict, on: str = "val") -> tuple[str, str] | None:
    """Both backbones' per-query kNN outcomes on the `on` queries when the result keeps them for
    the same queries, else None."""
    pretrained, random = (result.get(key) for key in KNN_FIELDS[on][2:])
    return (pretrained, random) if pretrained and random and len(pretrained) == len(random) else None


def paired_margin(first: str, second: str) -> float:
    """Half-width, in points, of the approximate 95% interval of the difference in top-1 of two
    classifiers judged on the same n queries, from their per-query outcomes ('0'/'1' strings):
    with b the queries only the first gets right and c those only the second does, the difference
    (b - c) / n has the standard error sqrt(b + c - (b - c)^2 / n) / n (the Wald interval for
    paired proportions)."""
    if len(first) != len(second) or not first:
        raise ValueError(f"paired outcomes need the same queries: {len(first)} and {len(second)} outcomes")
    n = len(first)
    only_first = sum(a == "1" and b == "0" for a, b in zip(first, second))
    only_second = sum(a == "0" and b == "1" for a, b in zip(first, second))
    variance = only_first + only_second - (only_first - only_second) ** 2 / n
    return 100.0 * 1.96 * math.sqrt(max(variance, 0.0)) / n


def gain_margin(result: dict, on: str = "val") -> float:
    """Half-width, in points, of the approximate 95% interval of the kNN gain over random init on
    the `on` queries ("val" or "test").

    Paired where the result keeps both backbones' per-query outcomes (`paired_outcomes`,
    `paired_margin`). Otherwise each top-1 is taken as an independent binomial proportion over
    the n queries, sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n): conservative, since both are measured
    on the same queries."""
    outcomes = paired_outcomes(result, on)
    if outcomes is not None:
        return paired_margin(*outcomes)
    n = result.get("queries", QUERY_COUNTS[on])
    p1, p2 = (result[key] / 100.0 for key in KNN_FIELDS[on][:2])
    return 100.0 * 1.96 * math.sqrt(p1 * (1.0 - p1) / n + p2 * (1.0 - p2) / n)


def gain_verdict(result: dict) -> str:
    """"above", "below" (the gain is beyond its 95% margin either way) or "within" the noise, on the
    row's `verdict_queries`."""
    on = verdict_queries(result)
    difference, margin = gain(result, on), gain_margin(result, on)
    return "above" if difference > margin else "below" if difference < -margin else "within"


def gain_cell(result: dict, on: str = "val") -> str:
    """The kNN gain with its 95% margin, marked p where the interval is paired; "-" if not measured."""
    if result.get(KNN_FIELDS[on][0]) is None:
        return "-"
    paired = " p" if paired_outcomes(result, on) is not None else ""
    return f"{gain(result, on):+.1f} ± {gain_margin(result, on):.1f}{paired}"


def pair_cell(result: dict, pretrained: str, random: str) -> str:
    """"pretrained / random init" from two fields of a result; "-" where not measured."""
    if result.get(pretrained) is None:
        return "-"
    return f"{result[pretrained]:.1f} / {result[random]:.1f}"


def knn_test_cell(result: dict) -> str:
    return pair_cell(result, *KNN_FIELDS["test"][:2])


def not_better(results: list[dict]) -> list[str]:
    """The methods whose kNN top-1 is not above their random init's, on their `verdict_queries`."""
    return [r["method"] for r in results if gain(r, verdict_queries(r)) <= 0]


def whole(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def precise_bn_cell(result: dict) -> str:
    if "knn_top1_precise_bn" in result and result["knn_top1_precise_bn"] is None:
        return "no BN"
    return pair_cell(result, "knn_top1_precise_bn", "random_top1_precise_bn")


def linear_cell(result: dict, prefix: str = "") -> str:
    """Linear probe top-1, pretrained / random init, on the val split or (`prefix="test_"`) the test set."""
    return pair_cell(result, f"{prefix}linear_top1", f"random_{prefix}linear_top1")


def rank_cell(result: dict) -> str:
    return pair_cell(result, "effective_rank", "random_effective_rank")


# The table's columns: header and cell. Those with "test" in the header are left out of a table
# whose rows have no test-set figures.
COLUMNS = [
    ("method", lambda r: r["method"]),
    # "(teacher)": measured on the momentum teacher (benchmarks.methods.EVALUATED_WEIGHTS)
    ("backbone", lambda r: r["backbone"] + (" (teacher)" if r.get("weights") == "teacher" else "")),
    ("kNN top-1 (%)", lambda r: f"{r['knn_top1']:.1f}"),
    ("random init (%)", lambda r: f"{r['random_top1']:.1f}"),
    ("gain", gain_cell),
    ("kNN, test (%)", knn_test_cell),
    ("gain, test", lambda r: gain_cell(r, "test")),
    ("rank", rank_cell),
    ("precise BN (%)", precise_bn_cell),
    ("linear (%)", linear_cell),
    ("linear, test (%)", lambda r: linear_cell(r, "test_")),
    ("images/s", lambda r: whole(r["images_per_second"])),
    ("train time (s)", lambda r: whole(r["train_seconds"])),
]


def section_heading(epochs: int) -> str:
    return f"{SECTION} ({epochs} epochs)"


# overrides that change what is logged or kept, not what is trained
BOOKKEEPING = ("trainer.checkpoint_every=", "trainer.keep_checkpoints=", "trainer.log_every=")


def outdated(results: list[dict], current_overrides: Callable[[str], list[str]],
             current_weights: Callable[[str], str]) -> tuple[list[str], list[str]]:
    """The rows measured with other overrides than `current_overrides(method)` gives today (bookkeeping
    ones aside) or on other weights than `current_weights(method)` ("student" or "teacher"; a row
    without the field was measured on the student), and the rows whose overrides were not recorded
    (a string instead of the list)."""
    def training(overrides: list[str]) -> list[str]:
        return [item for item in overrides if not item.startswith(BOOKKEEPING)]

    unrecorded = [r["method"] for r in results if not isinstance(r.get("overrides"), list)]
    differ = [r["method"] for r in results
              if (isinstance(r.get("overrides"), list)
                  and training(r["overrides"]) != training(current_overrides(r["method"])))
              or r.get("weights", "student") != current_weights(r["method"])]
    return differ, unrecorded


def write_section(results: list[dict], epochs: int, results_md: Path,
                  current_overrides: Callable[[str], list[str]], current_weights: Callable[[str], str]) -> None:
    dates = sorted({r["date"] for r in results})
    machines = sorted({r.get("machine", "an unrecorded machine") for r in results})
    lines = [section_heading(epochs), "",
             f"Measured {dates[0] if len(dates) == 1 else dates[0] + ' to ' + dates[-1]} on "
             f"{'; '.join(machines)}, with `python -m benchmarks.methods`.",
             f"Budget per method: {epochs} epochs of the {TRAIN_SAMPLES}-image demo train split "
             f"(10 upright shape classes), {IMAGE_SIZE} px, batch {BATCH}, AdamW (lr 2e-3, 1 warm-up epoch, "
             "cosine), ResNet-18 (ViT-Tiny with 8 px patches for MAE and SimMIM), each method's config "
             "with small heads/queues/prototypes and the few per-method settings in `PER_METHOD` of "
             "`benchmarks/methods.py`, which give some methods another learning rate or SGD (each row's "
             "own overrides are in "
             f"`{RESULTS_STORE.relative_to(ROOT)}/NAME-{epochs}ep.json`). kNN: k=20, "
             f"T=0.07, {TRAIN_SAMPLES} train images as the bank, {QUERY_SAMPLES} val images as queries; "
             "*random* is the same architecture randomly initialized with the same seed. *gain*: kNN minus "
             f"random init, with the half-width of its approximate 95% interval over the {QUERY_SAMPLES} "
             "queries: paired (marked *p*) where the result keeps each query's outcome for both backbones, "
             "otherwise unpaired binomial, which is conservative (7 to 8 points here). "
             "images/s: training "
             "images per wall-clock second of the whole run (graph build and checkpoints included), "
             "one process (1 torch thread, 1 DALI thread), while the machine was shared with other jobs.",
             "",
             "*rank*: the effective rank (RankMe, Garrido et al. 2023) of the 960 bank features, "
             "pretrained / random init: near 1 means the representation collapsed onto a line.",
             "",
             "*precise BN*: kNN top-1 of the pretrained / random-init backbone after re-estimating every "
             "BatchNorm layer's statistics on the clean train images (`selfsup eval knn --recalibrate-bn`): "
             "the stored statistics are an average over augmented views, and a random network's are the "
             "identity. *linear*: top-1 of a linear probe on the standardized frozen features (100 epochs, "
             "SGD 0.1, `selfsup eval linear`), pretrained / random init. *-*: measured before the column "
             "existed; *no BN*: a ViT.",
             ""]
    with_test = any(verdict_queries(r) == "test" for r in results)
    if with_test:
        lines += [f"*test*: kNN (pretrained / random init), its gain, and the linear probe on a held-out test set "
                  f"of {TEST_SAMPLES} more demo images (480 per class, drawn with another seed; `selfsup eval "
                  "knn|linear --test-data`), against the same bank: a margin of about 2 points. A row is "
                  "judged on its test set where it has one.", ""]
    columns = [c for c in COLUMNS if with_test or "test" not in c[0]]
    lines += ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    for result in sorted(results, key=lambda r: list(METHODS).index(r["method"])
                         if r["method"] in METHODS else 99):
        lines.append("| " + " | ".join(cell(result) for _, cell in columns) + " |")
    worse = not_better(results)
    if worse:
        verdict = (f"**Not better than random initialization at this budget: {', '.join(worse)}.** ")
        if epochs == DECIDING_EPOCHS:
            verdict += ("Issue 4 counts each of them as a defect until shown otherwise; do not read these rows "
                        "as the methods' quality.")
        else:
            verdict += (f"The {DECIDING_EPOCHS}-epoch table is the one that decides; this one shows how far "
                        "each method gets in fewer steps.")
        lines += ["", verdict + " What is known is under *Methods: why most lose to random init here*."]
    verdicts = {kind: [r["method"] for r in results if gain_verdict(r) == kind]
                for kind in ("above", "within", "below")}
    on_test = sum(verdict_queries(r) == "test" for r in results)
    judged_on = (f"the {TEST_SAMPLES} test queries" if on_test == len(results) else
                 f"the {QUERY_SAMPLES} val queries" if not on_test else
                 f"the {TEST_SAMPLES} test queries for the {on_test} rows measured on them, else the "
                 f"{QUERY_SAMPLES} val queries")
    lines += ["", f"Against the sampling noise of {judged_on} (the gain beyond its 95% margin): "
              f"above random, {len(verdicts['above'])} ({', '.join(verdicts['above']) or 'none'}); "
              f"within the noise, {len(verdicts['within'])} ({', '.join(verdicts['within']) or 'none'}); "
              f"below, {len(verdicts['below'])} ({', '.join(verdicts['below']) or 'none'})."]
    # the linear probe on the test set where measured, as the kNN verdict
    linear = {r["method"]: (r["test_linear_top1"], r["random_test_linear_top1"])
              if r.get("test_linear_top1") is not None else (r["linear_top1"], r["random_linear_top1"])
              for r in results if "linear_top1" in r}
    linear_worse = [name for name, (pretrained, random) in linear.items() if pretrained <= random]
    if linear:
        lines += ["", f"Linear probe (on the test set where measured): {len(linear) - len(linear_worse)} of the "
                  f"{len(linear)} rows with the column beat their random init"
                  + (f"; not: {', '.join(linear_worse)}." if linear_worse else ".")]
    differ, unrecorded = outdated(results, current_overrides, current_weights)
    if differ:
        lines += ["", "Measured with other settings than today's `PER_METHOD` or `EVALUATED_WEIGHTS` "
                  f"(re-measure with `--methods {','.join(differ)} --force`): {', '.join(differ)}."]
    if unrecorded:
        rows = "every row" if len(unrecorded) == len(results) else ", ".join(unrecorded)
        lines += ["", f"Settings not recorded (measured before the result files kept them; today's "
                  f"`PER_METHOD` may differ): {rows}."]
    missing = [name for name in DEMO_METHODS if name not in {r["method"] for r in results}]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)}."]
    section = "\n".join(lines) + "\n"
    text = results_md.read_text() if results_md.is_file() else "# Benchmark results\n"
    # this budget's table, or one from before tables were kept per budget (a heading with no budget)
    for heading in (section_heading(epochs) + "\n", SECTION + "\n"):
        if heading in text:
            before, rest = text.split(heading, 1)
            after = rest.split("\n## ", 1)
            text = before + section + ("\n## " + after[1] if len(after) > 1 else "")
            break
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_atomically(results_md, text.encode())


def result_path(store: Path, name: str, epochs: int) -> Path:
    return store / f"{name}-{epochs}ep.json"


def stored_results(store: Path, epochs: int) -> list[dict]:
    """The stored results measured at this budget, one per method (another `--epochs` is
    another table). A file that is not a JSON object is refused with its path: the files are
    committed and can be edited by hand."""
    results = []
    for path in sorted(store.glob(f"*-{epochs}ep.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SystemExit(f"{path}: not a readable result file ({error}); measure it again with "
                             "--force or restore it from git") from None
        if not isinstance(result, dict) or "method" not in result:
            raise SystemExit(f"{path}: expected a JSON object with a 'method' key")
        if result.get("epochs") == epochs:
            results.append(result)
    return results


def machine() -> str:
    """The machine a result was measured on, as its result file and table say it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, CPU only"
