import random
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.trainer.checkpoint import (
    check_compatible, latest_checkpoint, load_checkpoint, restore_rng_state, rng_state, save_checkpoint, step_name, step_of,
    try_load_checkpoint,
)

from selfsup.errors import CheckpointError
from selfsup.trainer.leftovers import this_host


def _state(step):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": {"method": {"name": "simclr", "temperature": 0.1}, "optim": {"betas": [0.9, 0.999]}},
        "history": [1.5, 2, "three", None, True, (4, 5), {"nested": [torch.arange(3)]}],
    }


def test_save_and_load_round_trip_weights_only(tmp_path):
    state = _state(7)
    path = save_checkpoint(tmp_path, 7, state)
    assert path == tmp_path / "step-00000007"
    assert (path / "state.pt").is_file()
    assert (tmp_path / "latest").read_text().strip() == "step-00000007"
    for source in (path, path / "state.pt"):
        loaded = load_checkpoint(source)
        assert loaded["step"] == 7 and loaded["config"] == state["config"]
        for key, value in state["model"].items():
            torch.testing.assert_close(loaded["model"][key], value)
        assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
        torch.testing.assert_close(loaded["history"][6]["nested"][0], torch.arange(3))
        assert loaded["history"][:6] == state["history"][:6]


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("simulated crash while writing")


def test_failed_save_leaves_previous_checkpoint_and_latest(tmp_path):
    save_checkpoint(tmp_path, 10, {"step": 10, "weights": torch.ones(1000)})
    latest_before = (tmp_path / "latest").read_text()
    crash_state = {"step": 20, "weights": torch.zeros(100_000), "bad": _Unpicklable()}
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(tmp_path, 20, crash_state)
    assert not (tmp_path / "step-00000020").exists()
    assert (tmp_path / "latest").read_text() == latest_before
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000010"
    torch.testing.assert_close(load_checkpoint(latest_checkpoint(tmp_path))["weights"], torch.ones(1000))
    assert not list(tmp_path.glob(".tmp-*"))  # the failed save cleans up after itself


def test_leftover_temp_dirs_are_ignored_and_cleaned(tmp_path):
    """A leftover of a writer that is gone (see test_checkpoint_writers.py for the others)."""
    save_checkpoint(tmp_path, 1, {"step": 1})
    writer = subprocess.Popen(["true"])
    writer.wait()
    leftover = tmp_path / f".tmp-{writer.pid}@{this_host()}~step-00000099-deadbeef"
    leftover.mkdir()
    (leftover / "state.pt").write_bytes(b"half a file")
    (tmp_path / "latest").unlink()  # crash before latest was written
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000001"
    save_checkpoint(tmp_path, 2, {"step": 2})
    assert not leftover.exists()


def test_keep_last_prunes_oldest(tmp_path):
    for step in (100, 200, 300, 400, 500):
        save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000400", "step-00000500"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000500"
    # a rewound run writing an older step keeps that checkpoint too
    save_checkpoint(tmp_path, 450, {"step": 450}, keep_last=1)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000450", "step-00000500"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000450"
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, 600, {}, keep_last=0)


def test_overwriting_the_same_step_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 5, {"value": 1})
    save_checkpoint(tmp_path, 5, {"value": 2})
    assert load_checkpoint(tmp_path / "step-00000005")["value"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005"]


def test_latest_resolution(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, 3, {"step": 3})
    save_checkpoint(tmp_path, 4, {"step": 4})
    (tmp_path / "latest").write_text("step-00000003\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000003"
    (tmp_path / "latest").write_text("../elsewhere\n")  # invalid: fall back to the highest step
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000004"
    (tmp_path / "latest").write_text("step-00000009\n")  # stale: names a missing directory
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000004"
    (tmp_path / "step-00000007").mkdir()  # incomplete (no state.pt) directories are skipped
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000004"


def test_bad_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="state.pt"):
        load_checkpoint(tmp_path / "nothing-here")
    corrupt = tmp_path / "step-00000001"
    corrupt.mkdir()
    (corrupt / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=str(corrupt)):
        load_checkpoint(corrupt)
    truncated = tmp_path / "truncated.pt"
    torch.save({"weights": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"object": _Picklable()}, unsafe)
    with pytest.raises(CheckpointError, match="unsafe.pt"):
        load_checkpoint(unsafe)
    assert isinstance(CheckpointError("x"), ValueError)


class _Picklable:
    pass


def test_an_unreadable_state_file_is_named_with_what_is_wrong(tmp_path):
    """try_load_checkpoint: one line naming the file and its damage, found from the file's first
    bytes and end where it can be (truncated, foreign, empty), else from weights_only's refusal."""
    folder = save_checkpoint(tmp_path, 3, {"step": 3, "weights": torch.ones(10_000)})
    file = folder / "state.pt"
    complete = file.read_bytes()
    assert try_load_checkpoint(folder)[1] is None and try_load_checkpoint(file)[0]["step"] == 3
    cases = {
        complete[: len(complete) // 2]: "truncated or damaged: the end of its zip archive is missing",
        b"\x89not a checkpoint" * 100: "not a checkpoint (torch.save writes a zip archive",
        b"": "empty (0 bytes)",
    }
    for data, problem in cases.items():
        file.write_bytes(data)
        state, found = try_load_checkpoint(folder)
        assert state is None and found.startswith(f"{file}: {problem}"), found
    torch.save({"object": _Picklable()}, file)
    state, found = try_load_checkpoint(folder)
    assert state is None and found.startswith(f"{file}: cannot load it (UnpicklingError: Unsupported global")
    assert "weights_only` set to `False`" not in found  # torch's advice, wrong for a damaged file, left out
    file.unlink()
    assert try_load_checkpoint(folder) == (None, f"{folder}: no state.pt there")


def _draw():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(),
            [random.random() for _ in range(3)], random.gauss(0, 1))


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn(1)  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    expected = _draw()
    _draw()  # move every generator on
    restore_rng_state(load_checkpoint(latest_checkpoint(tmp_path))["rng"])
    assert _draw() == expected


def test_check_compatible_names_differing_keys():
    saved = {"method": {"name": "simclr"}, "model": {"backbone": "resnet18"}, "optim": {"betas": [0.9, 0.999]}}
    same = {"method": {"name": "simclr"}, "model": {"backbone": "resnet18"}, "optim": {"betas": (0.9, 0.999)}}
    check_compatible(saved, same, ["method.name", "model.backbone", "optim.betas", "not.present"])
    current = {"method": {"name": "byol"}, "model": {"backbone": "resnet50"}, "optim": {}}
    with pytest.raises(CheckpointError) as error:
        check_compatible(saved, current, ["method.name", "model.backbone", "optim.betas"])
    message = str(error.value)
    assert "method.name: checkpoint has 'simclr', this run has 'byol'" in message
    assert "model.backbone: checkpoint has 'resnet18', this run has 'resnet50'" in message
    assert "optim.betas: checkpoint has [0.9, 0.999], this run has no value" in message


def test_step_names_are_parsed_in_one_place(tmp_path):
    saved = save_checkpoint(tmp_path, 12, {"step": 12})
    assert saved.name == step_name(12) == "step-00000012"
    assert step_of(saved) == step_of(saved / "state.pt") == step_of(saved.name) == 12
    assert step_of(step_name(123456789)) == 123456789
    for other in (None, tmp_path, "step-12", "step-0000001x", "restored", "state.pt"):
        assert step_of(other) == -1, other
