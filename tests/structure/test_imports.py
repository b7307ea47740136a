"""The architecture's rules, checked on the source: no import circles, Ray only in
`selfsup.cluster`, DALI only in `selfsup.pipeline`, the arrows pointing one way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.structure.imports import circles, external_imports, import_graph, modules, package_of

ROOT = Path(__file__).resolve().parents[2]
# The allowed arrows: command line -> cluster -> trainer -> {pipeline, methods}; the leaf modules
# selfsup.errors, selfsup.files and selfsup.locks may be imported from anywhere.
LEAVES = {"selfsup.errors", "selfsup.files", "selfsup.locks"}
ALLOWED = {
    "selfsup.pipeline": set(),
    "selfsup.methods": set(),
    "selfsup.trainer": {"selfsup.pipeline", "selfsup.methods"},
    "selfsup.cluster": {"selfsup.trainer", "selfsup.pipeline", "selfsup.methods"},
}


def test_every_package_is_read():
    found = {package_of(module) for module in modules()}
    assert {"selfsup.pipeline", "selfsup.methods", "selfsup.trainer", "selfsup.cluster", "selfsup.cli.main"} <= found


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_arrows_point_one_way():
    wrong = []
    for module, targets in import_graph().items():
        source = package_of(module)
        for target in targets:
            destination = package_of(target)
            if source in ALLOWED and destination != source and target not in LEAVES \
                    and destination not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_ray_only_in_cluster_and_dali_only_in_pipeline():
    ray_users = sorted(module for module, names in external_imports().items() if "ray" in names)
    dali_users = sorted(module for module, names in external_imports().items() if "nvidia" in names)
    assert ray_users and all(module.startswith("selfsup.cluster.") for module in ray_users), ray_users
    assert dali_users and all(module.startswith("selfsup.pipeline.") for module in dali_users), dali_users


def test_the_command_line_starts_without_ray_dali_or_torch():
    code = ("import sys; from selfsup.cli.main import build_parser; build_parser(); "
            "print(sorted(name for name in ('ray', 'nvidia.dali', 'torch') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_the_drawing_prints():
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "structure" / "imports.py")],
                            capture_output=True, text=True, check=True)
    assert "selfsup.trainer" in result.stdout and "circles: 0" in result.stdout
