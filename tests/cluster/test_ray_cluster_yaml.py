"""ray_cluster.yaml is a valid cluster-launcher config: checked against the JSON schema that
ships inside the installed Ray package, plus the properties this project relies on."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_ray_cluster_yaml_matches_rays_schema():
    schema = json.loads(files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)

    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # a CPU head
    gpu_types = [node for node in nodes.values() if node["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(node["max_workers"] >= 1 for node in gpu_types)
    assert sum(node["max_workers"] for node in gpu_types) >= config["max_workers"]  # autoscaling limits
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "selfsup" in setup  # the project on every node
    assert any("/mnt/shared" in command for command in config["initialization_commands"])  # shared storage
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # the dashboard is not exposed
