"""`selfsup convert --ray` (images read by Ray tasks on a local Ray) writes the same dataset as
the local path: identical manifest, shards and dataset summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.pipeline.dataset import read_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_convert_with_ray_tasks_matches_local(demo_folder, tmp_path):
    outputs = {}
    for name, extra in (("local", ["--workers", "1"]), ("ray", ["--ray"])):
        outputs[name] = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-m", "selfsup", "convert", str(demo_folder), str(outputs[name]),
             "--shard-size", "64KB", "--val-fraction", "0.25", "--seed", "0", "--quiet", *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    local, remote = outputs["local"], outputs["ray"]
    assert read_manifest(local / "manifest.parquet") == read_manifest(remote / "manifest.parquet")
    local_description = json.loads((local / "dataset.json").read_text())
    remote_description = json.loads((remote / "dataset.json").read_text())
    for description in (local_description, remote_description):
        description.pop("created", None)
    assert local_description == remote_description
    shards = sorted(path.name for path in local.glob("*.tar"))
    assert shards == sorted(path.name for path in remote.glob("*.tar")) and len(shards) > 1
    for shard in shards:
        assert (local / shard).read_bytes() == (remote / shard).read_bytes()
    assert (local / "errors.jsonl").read_text() == (remote / "errors.jsonl").read_text()
