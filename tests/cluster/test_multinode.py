"""Two Ray nodes on loopback (a head and a second node, one CPU each), a 2-worker DDP run spread
over them: the workers land on different nodes, read the dataset from a `file://` URI (staged
onto each node's local cache) and Ray keeps the checkpoints at a `file://` storage URI. A URI that
holds no dataset fails in the workers, and the caller gets their DatasetError itself, not Ray's
report of the failed worker group; a run that diverges there ends `selfsup train` with the trainer's
one-line message (exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported.
TWO_NODES = """
import json, os, subprocess, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray service on 127.0.0.1
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
from ray.cluster_utils import Cluster
from selfsup.cluster.train_job import run_training
from selfsup.trainer.config import load_config


OVERRIDES = ["model.backbone=resnet18", "data.image_size=32", "data.batch_size=8", "method.projection_hidden_dim=64",
             "optim.warmup_epochs=0", "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.log_every=1",
             "data.num_threads=1", "data.shuffle_buffer=16"]


def config_for(path):
    return load_config("configs/simclr.yaml", [f"data.path={path}", *OVERRIDES])

data, output, storage = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                         "node_ip_address": "127.0.0.1"})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
cluster.wait_for_nodes()
config = config_for(data)
try:
    metrics = run_training(config, output, workers=2, address=cluster.address, spread=True, storage=storage)
    node_ids = sorted(node["NodeID"] for node in __import__("ray").nodes() if node["Alive"])
    print("RESULT " + json.dumps({"metrics": metrics, "cluster_nodes": node_ids}), flush=True)
    try:  # a URI is checked where it is staged, in the workers: their own error reaches the caller
        run_training(config_for(data + "-missing"), output + "-refused", workers=2, address=cluster.address)
    except Exception as error:
        print("REFUSED " + json.dumps({"type": type(error).__name__, "message": str(error)}))
    # a run that diverges in the workers: `selfsup train` on this cluster prints the trainer's message
    diverging = OVERRIDES + ["optim.lr=1e30", "trainer.max_steps=20"]
    options = [item for override in diverging for item in ("--set", override)]
    diverged = subprocess.run([sys.executable, "-m", "selfsup", "train", "--config", "configs/simclr.yaml",
                               "--data", data, "--output", output + "-diverged", "--workers", "2",
                               "--address", cluster.address, *options], capture_output=True, text=True)
    lines = [line for line in diverged.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("selfsup:")]
    print("DIVERGED " + json.dumps({"returncode": diverged.returncode, "stderr": ours, "last": lines[-1:]}))
finally:
    __import__("ray").shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_two_workers_on_two_nodes(demo_shards, tmp_path):
    output, storage, cache = tmp_path / "run", tmp_path / "storage", tmp_path / "staging"
    environment = {**os.environ, "SELFSUP_STAGING_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", TWO_NODES, demo_shards.resolve().as_uri(), str(output), storage.as_uri()],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    answer = json.loads(line[len("RESULT "):])
    metrics = answer["metrics"]
    refused = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("REFUSED "))[8:])
    assert refused == {"type": "DatasetError", "message": f"{demo_shards.resolve().as_uri()}-missing/dataset.json: "
                       f"not found; is {demo_shards.resolve().as_uri()}-missing a finished conversion (a folder "
                       "written by `selfsup convert`)?"}
    diverged = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("DIVERGED "))[9:])
    assert diverged["returncode"] == 1, diverged
    assert len(diverged["stderr"]) == 1, diverged  # one line of its own
    assert diverged["last"] == diverged["stderr"], diverged  # and last: Ray's forwarded worker logs end before it
    assert diverged["stderr"][0].startswith("selfsup: error: non-finite loss at step "), diverged
    assert "the last good checkpoint" in diverged["stderr"][0] and "Lower optim.lr" in diverged["stderr"][0]
    assert metrics["step"] == 4
    workers = metrics["worker_nodes"]
    assert len(workers) == 2 and workers[0] != workers[1]  # one rank per node
    assert set(workers) == set(answer["cluster_nodes"])

    staged = [folder for folder in cache.iterdir() if folder.is_dir()]
    assert len(staged) == 1 and (staged[0] / "dataset.json").exists()
    # staged per epoch: each node copied the train shards of its rank's parts (here, with both
    # nodes on one disk and epoch 2 prefetched, all of them); no rank reads val, so it stayed out
    for original in demo_shards.glob("train-*.tar"):
        assert (staged[0] / original.name).read_bytes() == original.read_bytes(), original.name
    val = list(staged[0].glob("val-*.tar"))
    assert val and all((staged[0] / path.name).is_symlink() for path in val)
    assert {path.name for path in (staged[0] / ".claims").iterdir()} == {"rank-0-of-2.json", "rank-1-of-2.json"}
    config = yaml.safe_load((output / "config.yaml").read_text())
    assert config["data"]["path"] == demo_shards.resolve().as_uri()  # the run records the URI
    assert (storage / "run" / "step-00000004" / "state.pt").exists()  # Ray's copy at the storage URI
