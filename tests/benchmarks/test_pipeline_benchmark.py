"""benchmarks/pipeline.py end to end on a few generated photos: its figures, ratios and errors."""

from __future__ import annotations

import pytest
import torch

from benchmarks.pipeline import main

SMALL = ["--images", "48", "--batch-size", "8", "--batches", "2", "--repeats", "1", "--size", "64", "--threads", "1"]


def test_the_three_loaders_are_measured_and_their_ratios_printed(tmp_path, capsys):
    result = main(["--work", str(tmp_path), *SMALL])
    assert result["images"] == 48 and result["device"].startswith("CPU")
    for key in ("selfsup_ips", "baseline_ips", "decode_ips"):
        assert result[key] > 0
    assert result["selfsup_over_baseline"] == round(result["selfsup_ips"] / result["baseline_ips"], 2)
    assert result["selfsup_over_decode"] == round(result["selfsup_ips"] / result["decode_ips"], 2)
    printed = capsys.readouterr().out
    assert "(a) selfsup DALI two views 64 px" in printed and "a/b = " in printed


def test_memory_mode_reports_rss_per_epoch(tmp_path):
    result = main(["--work", str(tmp_path), *SMALL, "--epochs", "2", "--json"])
    assert len(result["rss_mib_per_epoch"]) == 2 and result["rss_mib_per_epoch"][0] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_a_gpu_device_without_cuda_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--work", str(tmp_path), *SMALL, "--device", "cuda:0"])
    assert "--device cuda:0: loader device 'cuda:0': no CUDA device is visible to torch here" in capsys.readouterr().err
