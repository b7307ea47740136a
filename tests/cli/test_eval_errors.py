"""The evaluation commands refuse bad input with one line naming the value or the file (exit 2)."""

from __future__ import annotations

import pytest

from selfsup.cli.main import main
from selfsup.trainer.loop import train
from tests.trainer.training_run import OneTorchThread, tiny_config


@pytest.fixture(scope="module")
def run(demo_shards, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-errors") / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=1"), folder)
    return folder


def _one_line(capsys, *arguments) -> str:
    assert main(list(arguments)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfsup: error: "), captured.err
    return lines[0]


def test_segment_without_masks(run, demo_shards, capsys):
    line = _one_line(capsys, "eval", "segment", "--checkpoint", str(run), "--data", str(demo_shards))
    assert line == (f"selfsup: error: {demo_shards}: no segmentation masks in this dataset (dataset.json has no "
                    "'segmentation' entry); convert it with `selfsup convert SRC OUT --masks MASKS`")
    line = _one_line(capsys, "eval", "all", "--checkpoint", str(run), "--data", str(demo_shards), "--protocols", "segment")
    assert "no segmentation masks in this dataset" in line


def test_a_label_fraction_of_zero(run, demo_shards, capsys):
    line = _one_line(capsys, "eval", "finetune", "--checkpoint", str(run), "--data", str(demo_shards),
                     "--label-fraction", "0")
    assert line == ("selfsup: error: --label-fraction 0.0: expected a fraction of the train labels in (0, 1], "
                    "e.g. 0.01, 0.1 or 1.0")


def test_low_shot_beyond_the_smallest_class(run, demo_shards, capsys):
    line = _one_line(capsys, "eval", "svm", "--checkpoint", str(run), "--data", str(demo_shards), "--low-shot", "64")
    assert line.startswith("selfsup: error: --low-shot 64: class '") and f"of {demo_shards} (train split) has only" in line
    assert line.endswith(f"samples; choose at most {line.split('has only ')[1].split()[0]}")


def test_unknown_protocols_and_costs(run, demo_shards, capsys):
    line = _one_line(capsys, "eval", "all", "--checkpoint", str(run), "--data", str(demo_shards), "--protocols", "knn,dense")
    assert line == ("selfsup: error: --protocols: unknown dense; known: knn, linear, svm, low-shot, finetune, "
                    "segment, rankme")
    line = _one_line(capsys, "eval", "svm", "--checkpoint", str(run), "--data", str(demo_shards), "--costs", "1,-2")
    assert line == "selfsup: error: --costs '1,-2': expected comma-separated positive SVM costs, e.g. 0.01,0.1,1,10"
