"""benchmarks/dataset_report.py: the Fashion-MNIST table, margins and verdict from stored result files.

The result files here are written as `benchmarks.dataset_run` writes them, with per-query outcomes
built so that every difference and margin is known by hand (1,000 test queries). When the
committed store holds results, the committed section must be what they make.
"""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.dataset_report import (accuracy_margin, random_prefix, section, section_heading, stored, verdict,
                                       write_section)
from benchmarks.dataset_run import report
from benchmarks.datasets import FASHION_MNIST
from benchmarks.methods import evaluated_weights

QUERIES = 1000


def first(count: int, start: int = 0) -> str:
    """Outcomes of 1,000 queries: queries start .. start + count - 1 right, the others wrong."""
    return "0" * start + "1" * count + "0" * (QUERIES - start - count)


def fields(linear: str, knn: str, val_linear: float, val_knn: float, prefix: str = "") -> dict:
    return {f"{prefix}test_linear_correct": linear, f"{prefix}test_linear_top1": linear.count("1") / 10,
            f"{prefix}test_knn_correct": knn, f"{prefix}test_knn_top1": knn.count("1") / 10,
            f"{prefix}val_linear_top1": val_linear, f"{prefix}val_knn_top1": val_knn,
            f"{prefix}test_queries": QUERIES, f"{prefix}val_queries": 417}


def method(name: str, backbone: str, linear: str, knn: str, **extra) -> dict:
    return {"method": name, "backbone": backbone, "image_size": 32, "small_input": False, "epochs": 4,
            "steps": 1716, "images_seen": 219648, "pretrain_images": 55000, "train_seconds": 1500.0,
            "images_per_second": 146.4, "weights": evaluated_weights(name), "date": "2026-12-03",
            "machine": "2 cores (AMD EPYC), torch 2.13.0+cpu, CPU only", "final_loss": 4.1,
            "overrides": FASHION_MNIST.overrides_for(name, 4, 55000), **fields(linear, knn, 80.0, 78.0), **extra}


@pytest.fixture
def store(tmp_path):
    """Baselines and four methods. Random ResNet-18: 79.0% as built, 78.0% after precise BN on the
    test set, but precise BN is better on val (77.5 vs 75.0), so the methods are held against it."""
    folder = tmp_path / "store"
    folder.mkdir()
    random = {"backbone": "resnet18", "image_size": 32, "small_input": False, "date": "2026-12-03",
              "machine": "2 cores (AMD EPYC), torch 2.13.0+cpu, CPU only", "precise_bn_images": 8192,
              **fields(first(790), first(770), 75.0, 74.0), **fields(first(780), first(775), 77.5, 76.0, "precise_bn_")}
    vit = {"backbone": "vit_tiny", "image_size": 32, "small_input": False, "date": "2026-12-03",
           "machine": random["machine"], "precise_bn_images": 0, **fields(first(500), first(450), 50.0, 45.0)}
    pixels = {"backbone": "pixels", "features": 784, "bank_samples": 55000, "date": "2026-12-03",
              "machine": random["machine"], **fields(first(800), first(780), 81.0, 79.0)}
    rows = [method("simclr", "resnet18", first(850), first(700)),        # +7.0 vs precise BN, +5.0 vs pixels
            method("byol", "resnet18", first(790, start=10), first(700)),  # +1.0 (20 vs 10 queries), -1.0
            method("mae", "vit_tiny", first(600), first(500)),            # +10.0 vs its random init, -20.0
            method("supervised", "resnet18", first(920), first(900))]
    for name, result in [("random-resnet18-32px.json", random), ("random-vit_tiny-32px.json", vit),
                         ("pixels.json", pixels)] + [(f"{row['method']}-4ep.json", row) for row in rows]:
        (folder / name).write_text(json.dumps(result))
    return folder


def paired(only_first: int, only_second: int) -> float:
    """The paired 95% half-width over 1,000 queries, by hand."""
    difference = only_first - only_second
    return 100 * 1.96 * (only_first + only_second - difference ** 2 / QUERIES) ** 0.5 / QUERIES


def test_the_verdict_counts_methods_beyond_their_paired_margin(store):
    rows, baselines = stored(store, 4)
    assert sorted(row["method"] for row in rows) == ["byol", "mae", "simclr", "supervised"]
    # simclr: +7.0 against a margin of 1.6 and +5.0 against 1.4; byol: +1.0 against 1.07 (within the noise)
    assert 7.0 > paired(70, 0) and 1.0 < paired(20, 10) and 5.0 > paired(50, 0) and 10.0 > paired(100, 0)
    assert verdict(FASHION_MNIST, rows, baselines) == (
        "verdict: fashion-mnist linear: 2 of 3 above random init, 1 of 3 above raw pixels; "
        "best simclr 85.0% vs supervised 92.0%")
    assert verdict(FASHION_MNIST, [row for row in rows if row["method"] != "supervised"], baselines).endswith(
        "best simclr 85.0% vs supervised -%")


def test_the_random_init_a_method_is_held_against_is_chosen_on_val(store):
    _, baselines = stored(store, 4)
    random = baselines["random"]["random-resnet18-32px.json"]
    assert random_prefix(random) == "precise_bn_"  # 77.5 on val, though 78.0 < 79.0 on the test set
    assert random_prefix(dict(random, precise_bn_val_linear_top1=74.0)) == ""
    assert random_prefix(baselines["random"]["random-vit_tiny-32px.json"]) == ""  # no BatchNorm


def test_the_section_shows_each_figure_with_its_margin(store, tmp_path):
    rows, baselines = stored(store, 4)
    text = section(FASHION_MNIST, 4, rows, baselines, lambda name: FASHION_MNIST.overrides_for(name, 4, 55000),
                   evaluated_weights)
    table = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines()
             if line.startswith("| ") and " | " in line}
    simclr = table["simclr"]
    assert simclr[2] == f"70.0 ± {accuracy_margin(70.0, QUERIES):.1f}" == "70.0 ± 2.8"
    assert simclr[3] == "85.0 ± 2.2"
    assert simclr[4] == f"+7.0 ± {paired(70, 0):.1f}" and simclr[5] == f"+5.0 ± {paired(50, 0):.1f}"
    assert simclr[6:] == ["78.0 / 80.0", "146", "25", "219,648 |"]
    assert table["byol"][4] == f"+1.0 ± {paired(20, 10):.1f}" and table["byol"][5] == f"-1.0 ± {paired(0, 10):.1f}"
    assert table["mae"][4] == f"+10.0 ± {paired(100, 0):.1f}"
    assert table["supervised (labels)"][3] == "92.0 ± 1.7"
    assert table["*random init, 32 px + precise BN*"][3] == "78.0 ± 2.6"
    assert table["*raw pixels (784 values)*"][2:4] == ["78.0 ± 2.6", "80.0 ± 2.5"]
    assert sum(" | vit_tiny | " in line for line in text.splitlines()) == 2  # its random init (no BN) and mae
    for name, setting in FASHION_MNIST.per_method.items():  # the per-method table, each with its reason
        assert f"| {name} | `{' '.join(setting.overrides)}`" in text and f" | {setting.reason} |" in text
    assert "`data.batch_size=32 data.recipe.scale=[0.6, 1.0]` (0.5 of the epochs) |" in text
    assert FASHION_MNIST.overrides_for("rotation", 4, 55000)[-1] == "trainer.epochs=2"
    assert "Not measured yet: moco_v1, moco_v2," in text and text.rstrip().endswith(verdict(FASHION_MNIST, rows, baselines))


def test_a_row_with_other_settings_is_named(store):
    rows, baselines = stored(store, 4)
    rows[0]["overrides"] = rows[0]["overrides"] + ["data.image_size=64"]
    text = section(FASHION_MNIST, 4, rows, baselines, lambda name: FASHION_MNIST.overrides_for(name, 4, 55000),
                   evaluated_weights)
    assert f"`--methods {rows[0]['method']} --force`): {rows[0]['method']}." in text


def test_the_section_is_replaced_and_the_others_kept(store, tmp_path):
    results = tmp_path / "RESULTS.md"
    heading = section_heading(FASHION_MNIST, 4)
    results.write_text(f"# Benchmark results\n\n## Before\n\nkept\n\n{heading}\n\nold table\n\n## After\n\nkept too\n")
    line = report(FASHION_MNIST, store, results, 4)
    text = results.read_text()
    assert "old table" not in text and text.count(heading) == 1 and line in text
    assert text.startswith("# Benchmark results\n\n## Before\n\nkept\n\n" + heading)
    assert text.endswith("\n## After\n\nkept too\n")
    report(FASHION_MNIST, store, results, 4)
    assert results.read_text() == text  # the same results make the same section
    write_section(results, section_heading(FASHION_MNIST, 8), "## Methods on Fashion-MNIST (8 epochs)\n\nnew\n")
    assert results.read_text().startswith(text.rstrip("\n")) and results.read_text().endswith("new\n")


COMMITTED = sorted({json.loads(path.read_text())["epochs"] for path in FASHION_MNIST.store.glob("*-*ep.json")})


@pytest.mark.parametrize("epochs", COMMITTED)
def test_the_committed_section_is_what_the_committed_results_make(epochs, tmp_path):
    copy = tmp_path / "RESULTS.md"
    shutil.copy(FASHION_MNIST.results_md, copy)
    report(FASHION_MNIST, FASHION_MNIST.store, copy, epochs)
    assert copy.read_text() == FASHION_MNIST.results_md.read_text(), (
        f"run `python -m benchmarks.methods --dataset fashion-mnist --report-only --epochs {epochs}` and commit both")
