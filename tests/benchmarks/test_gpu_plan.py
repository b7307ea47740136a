"""benchmarks/gpu.py: which parts run on which machine, the result cells made from the real outputs of
the benchmarks it calls (run here on the CPU), a part's statuses, and the files it writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu
from benchmarks.methods_report import RESULTS_STORE

ONE_GPU = gpu.Machine(cuda=True, gpus=1, gpu_name="H100", dali=True, bf16=True, nccl=True)


def reasons(machine: gpu.Machine, budget: float = gpu.BUDGET_SECONDS) -> dict[str, str]:
    parts = gpu.build_parts(Path("/tmp/work"), machine.gpus)
    return {part.name: reason for part, reason in gpu.plan(parts, machine, budget)}


def test_one_gpu_runs_everything_but_ddp_within_eight_minutes():
    planned = reasons(ONE_GPU)
    assert planned["ddp_nccl"] == gpu.NEEDS["two_gpus"]
    assert all(reason == "" for name, reason in planned.items() if name != "ddp_nccl")
    parts = gpu.build_parts(Path("/tmp/work"), 1)
    assert sum(part.timeout for part in parts if part.name != "ddp_nccl") <= 8 * 60


def test_parts_without_their_needs_say_why():
    cpu_only = reasons(gpu.Machine(dali=True))
    assert set(cpu_only.values()) == {gpu.NEEDS["cuda"], f"{gpu.NEEDS['cuda']}; {gpu.NEEDS['nccl']}"}
    no_dali = reasons(gpu.Machine(cuda=True, gpus=4, bf16=True, nccl=True))
    assert no_dali["data"] == "" and no_dali["pipeline"] == gpu.NEEDS["dali"] == no_dali["ddp_nccl"]
    old_gpu = reasons(gpu.Machine(cuda=True, gpus=2, dali=True, nccl=True))
    assert old_gpu["train_step"] == gpu.NEEDS["bf16"] and old_gpu["ddp_nccl"] == ""
    assert "2 Ray Train workers" in {part.name: part.what for part in gpu.build_parts(Path("/w"), 2)}["ddp_nccl"]
    assert "--workers 4" in " ".join(gpu.build_parts(Path("/w"), 4)[4].command)


def test_parts_past_the_budget_are_skipped_in_order():
    planned = reasons(ONE_GPU, budget=250)  # data 60 + tests 90 + pipeline 75 = 225; train_step's 90 does not fit
    assert [name for name, reason in planned.items() if reason == ""] == ["data", "cuda_tests", "pipeline"]
    assert planned["train_step"].startswith("its 90 s limit does not fit in the 250 s budget (225 s already")
    assert planned["methods"].startswith("its 150 s limit does not fit")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA is told")
def test_dry_run_here_lists_every_part_and_why_it_is_skipped(capsys, tmp_path):
    assert gpu.main(["--dry-run", "--output", str(tmp_path / "gpu.json"), "--workdir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for part in gpu.build_parts(tmp_path, 0):
        assert f"{part.name:11s} would skip: {gpu.NEEDS['cuda']}" in printed
        assert " ".join(part.command) in printed
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA writes")
def test_a_run_here_writes_the_json_and_the_table_of_skipped_parts(capsys, tmp_path):
    output = tmp_path / "gpu.json"
    assert gpu.main(["--output", str(output), "--workdir", str(tmp_path / "work")]) == 0
    written = json.loads(output.read_text())
    assert [part["status"] for part in written["parts"]] == ["skipped"] * 6
    assert written["machine"]["cuda"] is False
    table = (tmp_path / "gpu.md").read_text()
    assert f"| pipeline | {gpu.build_parts(tmp_path, 0)[2].what} | skipped: {gpu.NEEDS['cuda']} |  | 0 |" in table
    assert table.strip() in capsys.readouterr().out


def test_run_part_reports_success_failure_and_timeout():
    python = sys.executable
    ran = gpu.run_part(gpu.Part("cuda_tests", "echo", [python, "-c", "print('3 passed, 1 skipped in 2.0s')"], 30))
    assert (ran.status, ran.result) == ("ran", "3 passed, 1 skipped in 2.0s")
    failed = gpu.run_part(gpu.Part("x", "fails", [python, "-c", "import sys; print('boom'); sys.exit(3)"], 30))
    assert (failed.status, failed.reason) == ("failed", "exit 3: boom")
    slow = gpu.run_part(gpu.Part("x", "sleeps", [python, "-c", "import time; print('started', flush=True); "
                                                           "time.sleep(30)"], 1))
    assert (slow.status, slow.reason) == ("timed out", "after its 1 s limit")
    table = gpu.format_table([ran, failed, slow], gpu.Machine())
    assert "| x | fails | failed: exit 3: boom |  |" in table and "| x | sleeps | timed out: after its 1 s limit |" in table


def part(name: str) -> gpu.Part:
    return {part.name: part for part in gpu.build_parts(Path("/tmp/work"), 2)}[name]


@pytest.mark.slow
def test_the_pipeline_cell_is_made_from_the_pipeline_benchmarks_own_output(tmp_path):
    command = [sys.executable, "-m", "benchmarks.pipeline", "--work", str(tmp_path), "--images", "48",
               "--batch-size", "8", "--batches", "2", "--repeats", "1", "--size", "64", "--threads", "1", "--json"]
    stdout = subprocess.run(command, cwd=gpu.ROOT, capture_output=True, text=True, check=True).stdout
    measured = gpu.last_json(stdout)
    cell = gpu.summarize(part("pipeline"), stdout)
    assert cell.startswith(f"(a) {measured['selfsup_ips']:.0f} img/s, (b) {measured['baseline_ips']:.0f}")
    assert f"a/c {measured['selfsup_over_decode']}" in cell


@pytest.mark.slow
def test_the_train_step_cell_is_made_from_the_train_step_benchmarks_own_output(demo_shards):
    command = [sys.executable, "-m", "benchmarks.train_step", "--json", "--data", str(demo_shards), "--steps", "1",
               "--warmup", "1", "--rounds", "1", "--memory-batches", "1", "--torch-threads", "1",
               "--set", "data.batch_size=8", "--set", "data.image_size=32", "--set", "data.num_threads=1"]
    stdout = subprocess.run(command, cwd=gpu.ROOT, capture_output=True, text=True, check=True).stdout
    measured = gpu.last_json(stdout)
    assert gpu.summarize(part("train_step"), stdout) == (
        f"loader-fed {measured['loader_ips']:.0f} img/s, in-memory {measured['memory_ips']:.0f}: ratio "
        f"{measured['ratio']:.3f} (target >= 0.95) on {measured['device']}")


def test_the_methods_cell_is_made_from_the_stored_results(tmp_path):
    for name in gpu.FAST_METHODS:
        shutil.copy(RESULTS_STORE / f"{name}-10ep.json", tmp_path)
    methods = part("methods")
    methods.command[methods.command.index("--store") + 1] = str(tmp_path)
    cell = gpu.summarize(methods, "")
    for name in gpu.FAST_METHODS:
        stored = json.loads((tmp_path / f"{name}-10ep.json").read_text())
        assert f"{name} kNN {stored['knn_top1']:.1f}% (random {stored['random_top1']:.1f}%)" in cell
    assert gpu.methods_summary(tmp_path / "empty") == "no stored result"
