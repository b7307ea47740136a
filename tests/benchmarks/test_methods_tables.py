"""The committed methods tables of benchmarks/RESULTS.md are what the committed result files make.

`benchmarks.methods` writes one result file per method and budget into benchmarks/results/methods
and renders each budget's table from them. A row edited by hand, a result file left uncommitted or
a table rendered from another folder shows up here as a difference.
"""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.methods import evaluated_weights, overrides_for
from benchmarks.methods_report import (DECIDING_EPOCHS, RESULTS_MD, RESULTS_STORE, gain_cell, gain_margin,
                                       gain_verdict, not_better, outdated, stored_results, verdict_queries, write_section)
from selfsup.methods.registry import METHODS

BUDGETS = sorted({json.loads(path.read_text())["epochs"] for path in RESULTS_STORE.glob("*.json")})


def test_there_are_stored_results():
    assert BUDGETS, f"no result files in {RESULTS_STORE}"


@pytest.mark.parametrize("epochs", BUDGETS)
def test_table_matches_the_result_files(epochs, tmp_path):
    copy = tmp_path / "RESULTS.md"
    shutil.copy(RESULTS_MD, copy)
    results = stored_results(RESULTS_STORE, epochs)
    write_section(results, epochs, copy, lambda name: overrides_for(name, epochs), evaluated_weights)
    assert copy.read_text() == RESULTS_MD.read_text(), (
        f"the {epochs}-epoch table of {RESULTS_MD} differs from what {RESULTS_STORE} makes: run "
        f"`python -m benchmarks.methods --report-only --epochs {epochs}` and commit both")


@pytest.mark.parametrize("epochs", BUDGETS)
def test_result_files_are_complete(epochs):
    for result in stored_results(RESULTS_STORE, epochs):
        assert result["method"] in METHODS, result["method"]
        for key in ("knn_top1", "random_top1", "effective_rank", "date", "machine", "overrides"):
            assert result.get(key) is not None, f"{result['method']}-{epochs}ep.json: no {key}"
        assert 0.0 <= result["knn_top1"] <= 100.0 and 0.0 <= result["random_top1"] <= 100.0


def test_gain_margin_is_the_binomial_95_percent_half_width():
    # p = 0.5 on both sides over 240 queries: 1.96 * sqrt(2 * 0.25 / 240) = 8.95 points
    even = {"knn_top1": 50.0, "random_top1": 50.0}
    assert gain_margin(even) == pytest.approx(100 * 1.96 * (0.5 / 240) ** 0.5)
    assert gain_margin(even) == pytest.approx(8.946, abs=1e-3)
    assert gain_margin(dict(even, queries=2400)) == pytest.approx(gain_margin(even) / 10 ** 0.5)
    assert gain_verdict(even) == "within"
    assert gain_verdict({"knn_top1": 51.7, "random_top1": 23.3}) == "above"     # +28.4 vs 8.3
    assert gain_verdict({"knn_top1": 29.6, "random_top1": 23.3}) == "within"    # +6.3 vs 7.9
    assert gain_verdict({"knn_top1": 21.3, "random_top1": 36.3}) == "below"     # -15.0 vs 8.0


def test_gain_margin_is_paired_when_the_per_query_outcomes_are_kept():
    # 240 queries: 40 only the pretrained backbone gets right, 10 only the random one, 50 both
    pretrained = "1" * 40 + "0" * 10 + "1" * 50 + "0" * 140
    random = "0" * 40 + "1" * 10 + "1" * 50 + "0" * 140
    result = {"knn_top1": 90 / 2.4, "random_top1": 60 / 2.4, "knn_correct": pretrained,
              "random_knn_correct": random}
    expected = 100 * 1.96 * (40 + 10 - 30 ** 2 / 240) ** 0.5 / 240
    assert gain_margin(result) == pytest.approx(expected)
    unpaired = {"knn_top1": result["knn_top1"], "random_top1": result["random_top1"]}
    assert gain_margin(result) < gain_margin(unpaired)  # the same queries: a sharper interval
    assert gain_verdict(result) == "above"  # +12.5 points against a margin of about 5.4


def test_a_row_with_a_test_set_is_judged_on_it():
    # +5 on the 240 val queries (within their noise) but -2 on 4800 test queries: below, and not better
    outcomes = "1" * 1100 + "0" * 3700  # the pretrained backbone: 1100 of 4800
    random = "1" * 1196 + "0" * 3604    # the random one: 1196, every one of the pretrained hits among them
    result = {"method": "npid", "knn_top1": 28.3, "random_top1": 23.3, "test_knn_top1": 1100 / 48,
              "random_test_knn_top1": 1196 / 48, "test_knn_correct": outcomes, "random_test_knn_correct": random}
    assert verdict_queries(result) == "test" and verdict_queries({"knn_top1": 1.0, "random_top1": 0.0}) == "val"
    margin = 100 * 1.96 * (96 - 96 ** 2 / 4800) ** 0.5 / 4800  # 96 queries only the random one gets right
    assert gain_margin(result, "test") == pytest.approx(margin)
    assert gain_cell(result, "test") == f"-2.0 ± {margin:.1f} p" and gain_cell(result) == "+5.0 ± 7.8"
    assert gain_verdict(result) == "below" and not_better([result]) == ["npid"]
    assert gain_verdict({key: value for key, value in result.items() if "test" not in key}) == "within"
    assert gain_cell({"knn_top1": 30.0, "random_top1": 20.0}, "test") == "-"


def test_rows_measured_with_other_settings_are_named(tmp_path):
    today = {"simclr": ["optim.lr=2.0e-3", "method.temperature=0.2"], "npid": ["optim.lr=5.0e-4"],
             "byol": ["optim.lr=2.0e-3"]}
    stored = stored_results(RESULTS_STORE, BUDGETS[-1])[0]  # a real row, its method and overrides replaced
    today_weights = {"simclr": "student", "npid": "student", "byol": "student", "dino": "teacher"}
    results = [
        # only a bookkeeping override differs: not outdated
        dict(stored, method="simclr", overrides=["optim.lr=2.0e-3", "trainer.checkpoint_every=300",
                                                 "method.temperature=0.2"]),
        dict(stored, method="npid", overrides=["optim.lr=2.0e-3"]),
        dict(stored, method="byol", overrides="not recorded"),
    ]
    assert outdated(results, today.__getitem__, today_weights.__getitem__) == (["npid"], ["byol"])
    # the same overrides, but measured on other weights than today's: outdated too
    today["dino"] = today["simclr"]
    for weights, expected in (("student", ["dino"]), ("teacher", [])):
        row = dict(stored, method="dino", overrides=today["dino"], weights=weights)
        assert outdated([row], today.__getitem__, today_weights.__getitem__) == (expected, [])
    row_without_field = {key: value for key, value in stored.items() if key != "weights"}
    assert outdated([dict(row_without_field, method="dino", overrides=today["dino"])], today.__getitem__,
                    today_weights.__getitem__) == (["dino"], [])  # no field: measured on the student
    report = tmp_path / "RESULTS.md"
    write_section(results, BUDGETS[-1], report, today.__getitem__, today_weights.__getitem__)
    text = report.read_text()
    assert ("today's `PER_METHOD` or `EVALUATED_WEIGHTS` (re-measure with `--methods npid --force`): npid."
            in text)
    assert "may differ): byol." in text


def test_a_row_measured_on_the_teacher_says_so(tmp_path):
    stored = stored_results(RESULTS_STORE, BUDGETS[-1])[0]
    results = [dict(stored, method="dino", weights="teacher"), dict(stored, method="simclr")]
    report = tmp_path / "RESULTS.md"
    write_section(results, BUDGETS[-1], report, lambda name: stored.get("overrides", []),
                  {"dino": "teacher", "simclr": "student"}.__getitem__)
    rows = {line.split(" | ")[0]: line for line in report.read_text().splitlines() if line.startswith("| ")}
    assert rows["| dino"].startswith(f"| dino | {stored['backbone']} (teacher) |")
    assert rows["| simclr"].startswith(f"| simclr | {stored['backbone']} |")


def test_only_the_deciding_budget_calls_a_losing_row_a_defect(tmp_path):
    stored = stored_results(RESULTS_STORE, BUDGETS[-1])[0]
    losing = dict(stored, method="simclr", knn_top1=10.0, random_top1=30.0, test_knn_top1=10.0,
                  random_test_knn_top1=30.0)
    for per_query in ("knn_correct", "test_knn_correct"):  # judged on the top-1 figures above
        losing.pop(per_query, None)
    assert not_better([losing]) == ["simclr"]
    texts = {}
    for epochs in (DECIDING_EPOCHS, DECIDING_EPOCHS // 2):
        report = tmp_path / f"RESULTS-{epochs}.md"
        write_section([dict(losing, epochs=epochs)], epochs, report, lambda name: stored.get("overrides", []),
                      evaluated_weights)
        texts[epochs] = report.read_text()
    assert "Not better than random initialization at this budget: simclr." in texts[DECIDING_EPOCHS]
    assert "Issue 4 counts each of them as a defect" in texts[DECIDING_EPOCHS]
    assert "Issue 4 counts" not in texts[DECIDING_EPOCHS // 2]
    assert f"The {DECIDING_EPOCHS}-epoch table is the one that decides" in texts[DECIDING_EPOCHS // 2]
