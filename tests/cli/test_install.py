"""The installed `selfsup`: one namespace, a command that finds its shipped configs from any folder,
a version, and a help that starts without Ray, DALI or torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import selfsup

ROOT = Path(__file__).resolve().parents[2]
SELFSUP = Path(sys.executable).with_name("selfsup")


def run_elsewhere(tmp_path, *command: str) -> subprocess.CompletedProcess:
    """Run a command from a folder outside the checkout, with no PYTHONPATH: what an installed user sees."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(list(command), cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=300)


def test_only_the_selfsup_namespace_is_importable_outside_the_checkout(tmp_path):
    code = ("import importlib, selfsup, selfsup.pipeline, selfsup.methods, selfsup.trainer, selfsup.cluster\n"
            "for name in ('pipeline', 'methods', 'trainer', 'cluster'):\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "        print('importable', name)\n"
            "    except ImportError:\n"
            "        print('absent', name)\n")
    result = run_elsewhere(tmp_path, sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["absent", "pipeline", "absent", "methods", "absent", "trainer", "absent", "cluster"]


@pytest.mark.skipif(not SELFSUP.exists(), reason="the selfsup console script is not installed beside this Python")
def test_version_and_configs_from_any_folder(tmp_path):
    version = run_elsewhere(tmp_path, str(SELFSUP), "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"selfsup {selfsup.__version__}"
    configs = run_elsewhere(tmp_path, str(SELFSUP), "configs")
    names = configs.stdout.split()
    assert configs.returncode == 0 and "simclr" in names and "dino" in names and names == sorted(names)
    missing = run_elsewhere(tmp_path, str(SELFSUP), "train", "--config", "simclrr", "--data", str(tmp_path),
                            "--output", str(tmp_path / "run"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("selfsup: error: config simclrr: no such file and no shipped config")


def test_train_with_a_shipped_config_by_name_from_another_folder(demo_shards, tmp_path, monkeypatch):
    """`selfsup.train("simclr", ...)` in this process, no Ray, from a folder with no configs/ in it."""
    monkeypatch.chdir(tmp_path)
    summary = selfsup.train("simclr", tmp_path / "run", data=demo_shards, overrides=[
        "model.backbone=resnet18", "data.image_size=32", "data.batch_size=8", "data.num_threads=1",
        "method.projection_hidden_dim=64", "trainer.max_steps=2", "optim.warmup_epochs=0"])
    assert summary["step"] == 2 and (tmp_path / "run" / "checkpoints" / "step-00000002" / "state.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").read_text().startswith("method:")
    backbone = selfsup.load_backbone(tmp_path / "run")
    assert not backbone.training and sum(parameter.numel() for parameter in backbone.parameters()) > 1e6


def test_help_is_quick_to_start():
    """The parser imports neither Ray nor DALI nor torch (tests/structure checks the modules too)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "selfsup", "--help"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "usage: selfsup" in result.stdout
    assert not imported & {"torch", "ray", "nvidia.dali"}, sorted(imported & {"torch", "ray", "nvidia.dali"})
