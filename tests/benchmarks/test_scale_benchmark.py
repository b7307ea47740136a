"""benchmarks/scale.py end to end at two tiny sizes: each stage measured in its own process, the
growth lines and the JSON summary computed from those measurements, the projection from them."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from benchmarks import scale
from benchmarks.scale_report import format_growth_lines, growths, projection


pytestmark = pytest.mark.slow  # spawns a benchmark process per stage and size: `make test`, not test-fast


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    work, printed = tmp_path_factory.mktemp("scale"), io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = scale.main(["--sizes", "60,120", "--stages", "convert,verify,index,loader", "--threads", "1",
                              "--loader-batch", "16", "--workdir", str(work), "--json"])
    return summary, work, printed.getvalue()


def test_every_stage_is_measured_at_every_size_in_its_own_process(measured):
    summary, work, _ = measured
    assert summary["sizes"] == [60, 120]
    assert sorted((item["stage"], item["size"]) for item in summary["measurements"]) == sorted(
        (stage, size) for stage in ("convert", "verify", "index", "loader") for size in (60, 120))
    for item in summary["measurements"]:
        assert item["samples"] >= item["size"] - 16 and item["seconds"] > 0, item
        assert item["wall_seconds"] > item["seconds"], item  # the process also imported and started
        # the work's CPU, not the imports: rusage's user/system split is kept in clock ticks, so a
        # stage of a few tens of milliseconds may come out a few ms either side of its true value
        assert -0.05 < item["cpu_seconds"] < item["wall_seconds"] * 3, item
        assert item["rss_mib"] > 30, item  # the stage process's own peak (python, numpy, pyarrow at least)
    loader = [item for item in summary["measurements"] if item["stage"] == "loader"]
    assert all(item["rss_mib"] > max(other["rss_mib"] for other in summary["measurements"]
                                     if other["stage"] == "convert") for item in loader)  # DALI and torch
    assert (work / "n120" / "foreign" / "dataset.json").is_file()  # the index stage adopted the same shards


def test_growth_lines_and_json_are_the_measurements_ratios(measured):
    summary, _, output = measured
    for stage, growth in summary["stages"].items():
        small, large = sorted((item for item in summary["measurements"] if item["stage"] == stage),
                              key=lambda item: item["size"])
        expected = (large["cpu_seconds"] / large["size"]) / (small["cpu_seconds"] / small["size"])
        assert growth["cost_growth"] == pytest.approx(expected, abs=1e-3)
        wall = (large["seconds"] / large["size"]) / (small["seconds"] / small["size"])
        assert growth["wall_cost_growth"] == pytest.approx(wall, abs=1e-3)
        assert growth["rss_growth"] == pytest.approx(large["rss_mib"] / small["rss_mib"], abs=1e-3)
        assert growth["cost_verdict"] == ("met" if growth["cost_growth"] <= 1.15 else "NOT met")
    assert growths(summary["measurements"]) == summary["stages"]
    printed = output.strip().splitlines()
    assert json.loads(printed[-1])["stages"] == summary["stages"]
    assert format_growth_lines(summary["stages"]) in output


def test_the_projection_scales_the_largest_size(measured):
    summary, _, _ = measured
    files = {int(size): value for size, value in summary["files"].items()}
    rows = projection(summary["measurements"], files, sizes=(1200,))
    convert = next(item for item in summary["measurements"] if item["stage"] == "convert" and item["size"] == 120)
    assert rows[0]["convert_hours"] == pytest.approx(convert["cpu_seconds"] * 10 / 3600)
    assert rows[0]["manifest_gib"] == pytest.approx(files[120]["manifest"] * 10 / 2**30)
    assert rows[0]["npid_bank_gib"] == pytest.approx([1200 * 128 * 4 / 2**30, 1200 * 128 * 2 / 2**30])
