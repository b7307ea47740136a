"""`selfsup index` on shards written by `webdataset.ShardWriter`, then `selfsup train` (in this
process, `--workers 0`) and `selfsup eval knn` on them, as a user runs the three commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.cli.test_errors import selfsup  # noqa: F401  (the fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from foreign_shards import write_foreign_shards  # noqa: E402

TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "data.num_threads=1", "--set", "method.projection_hidden_dim=64", "--set", "trainer.epochs=2",
        "--set", "trainer.log_every=1", "--set", "optim.warmup_epochs=0"]


def test_index_then_train_then_eval_knn_on_foreign_shards(selfsup, tmp_path):  # noqa: F811
    written = write_foreign_shards(tmp_path / "shards")
    indexed = selfsup("index", str(written.folder), "--split-pattern", "val=*-000003.tar", "--quiet")
    assert indexed.returncode == 0, indexed.stderr
    assert "train: 27 images in 3 shards" in indexed.stdout and "val: 6 images in 1 shard" in indexed.stdout
    assert f"part-000000.tar:{written.corrupt}: does not decode" in indexed.stdout

    run = tmp_path / "run"
    trained = selfsup("train", "--config", "simclr", "--data", str(written.folder), "--output", str(run),
                      "--workers", "0", *TINY)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "trained 6 steps" in trained.stdout  # 27 train samples: 3 batches of 8 per epoch, 2 epochs
    losses = [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(loss > 0 for loss in losses)

    measured = selfsup("eval", "knn", "--checkpoint", str(run), "--data", str(written.folder), "--json",
                       "--batch-size", "8", "--k", "5")
    assert measured.returncode == 0, measured.stderr[-3000:]
    result = json.loads(measured.stdout.strip().splitlines()[-1])
    assert result["bank_samples"] == 27 and result["query_samples"] == 6 and result["query_split"] == "val"
    assert 0.0 <= result["top1"] <= 100.0


def test_index_refuses_bad_input_with_one_line(selfsup, tmp_path):  # noqa: F811
    missing = selfsup("index", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"selfsup: error: {tmp_path / 'nowhere'}: no such folder "
                                                   "(expected a folder of WebDataset .tar shards)"]
    written = write_foreign_shards(tmp_path / "shards", per_class=2)
    malformed = selfsup("index", str(written.folder), "--split-pattern", "val")
    assert malformed.returncode == 2 and "expected SPLIT=GLOB" in malformed.stderr
    assert not (written.folder / "dataset.json").exists()
