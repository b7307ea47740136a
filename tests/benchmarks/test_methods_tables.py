"""The committed methods tables of benchmarks/RESULTS.md are what the committed result files make.

`benchmarks.methods` writes one result file per method and budget into benchmarks/results/methods
and renders each budget's table from them. A row edited by hand, a result file left uncommitted or
a table rendered from another folder shows up here as a difference.
"""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.methods_report import RESULTS_MD, RESULTS_STORE, stored_results, write_section
from methods.registry import METHODS

BUDGETS = sorted({json.loads(path.read_text())["epochs"] for path in RESULTS_STORE.glob("*.json")})


def test_there_are_stored_results():
    assert BUDGETS, f"no result files in {RESULTS_STORE}"


@pytest.mark.parametrize("epochs", BUDGETS)
def test_table_matches_the_result_files(epochs, tmp_path):
    copy = tmp_path / "RESULTS.md"
    shutil.copy(RESULTS_MD, copy)
    results = stored_results(RESULTS_STORE, epochs)
    write_section(results, epochs, copy)
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
