"""Atomic, safely loadable checkpoints: one `step-XXXXXXXX/state.pt` directory per save.

Layout of a checkpoint directory:

    directory/
      step-00001000/state.pt     complete checkpoints (only ever appear complete)
      step-00002000/state.pt
      latest                     text file: the name of the newest complete checkpoint
      .tmp-PID@HOST~...          a save's temporary entries, named after their writer; leftovers of
                                 an interrupted save are ignored, and removed by a later save once
                                 their writer is gone (`trainer.leftovers`)

A save writes into a temporary directory, fsyncs the file, renames the directory into place
(rename is atomic on POSIX file systems), then replaces `latest` (temp file + os.replace) and
prunes old checkpoints. A crash at any point leaves the previous checkpoints and a valid (or
recoverable) `latest`. Two processes saving into one folder at once both succeed: neither
removes the other's temporary entries, and a checkpoint of the same step that the other puts in
place meanwhile is replaced as an earlier one would be. Loading uses `torch.load(weights_only=True)`,
so a state holds only tensors, dicts, lists, tuples, numbers, strings, bools and None;
`rng_state()` captures the random generators in that form.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from selfsup.errors import CheckpointError
from selfsup.files import sync_folder
from selfsup.trainer.leftovers import remove_abandoned, temporary_name

__all__ = [
    "CheckpointError",
    "check_compatible",
    "checkpoints_to_try",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
    "rng_state",
    "save_checkpoint",
    "step_name",
    "step_of",
    "try_load_checkpoint",
]

STATE_FILE = "state.pt"
LATEST_FILE = "latest"
ZIP_START = b"PK\x03\x04"  # how every file torch.save writes begins (a zip archive)
PLACE_ATTEMPTS = 20  # renames into place tried while other writers keep putting the same step there
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_name(step: int) -> str:
    """12 -> "step-00000012": the folder name of a checkpoint."""
    return f"step-{step:08d}"


def step_of(path: str | Path | None) -> int:
    """The step of a checkpoint from its folder's name ("step-00000012", or its state.pt) -> 12;
    -1 for None or any other name. The one parser of checkpoint names."""
    if path is None:
        return -1
    path = Path(path)
    name = path.parent.name if path.name == STATE_FILE else path.name
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else -1


def _complete_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step-*` directory holding a state file, sorted by step."""
    found = []
    if not directory.is_dir():
        return found
    for entry in directory.iterdir():
        step = step_of(entry.name)
        if step >= 0 and (entry / STATE_FILE).is_file():
            found.append((step, entry))
    return sorted(found)


def _write_latest(directory: Path, name: str) -> None:
    temporary = directory / temporary_name("latest")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, directory / LATEST_FILE)
    sync_folder(directory)


def _move_into_place(temporary: Path, final: Path) -> None:
    """Rename the finished folder `temporary` to `final`. A folder already at `final` (an earlier
    checkpoint of the step, or one another writer has just put there) is renamed aside first and
    deleted once `temporary` is in place. On failure `temporary` is removed, the folder moved
    aside last goes back to `final` where nothing took its place, and the error is raised."""
    directory, replaced = final.parent, []
    try:
        for _ in range(PLACE_ATTEMPTS):
            if final.exists():
                aside = directory / temporary_name(f"replaced-{final.name}")
                try:
                    os.rename(final, aside)
                    replaced.append(aside)
                except FileNotFoundError:  # another writer moved it aside first
                    pass
            try:
                os.rename(temporary, final)
                break
            except OSError as error:  # another writer put its own `final` there in between
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        else:
            raise OSError(errno.EEXIST, f"other writers kept putting {final.name} in place; "
                          f"{PLACE_ATTEMPTS} renames failed", str(final))
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if replaced and not final.exists():
            try:
                os.rename(replaced[-1], final)
            except OSError:  # another writer's folder got there first: it stands for the step
                pass
        raise
    sync_folder(directory)
    for aside in replaced:
        shutil.rmtree(aside, ignore_errors=True)


def save_checkpoint(directory: Path, step: int, state: dict, keep_last: int = 3) -> Path:
    """Write `state` to `directory/step-{step:08d}/state.pt` atomically; return that directory.

    Steps: remove the leftovers of interrupted saves whose writers are gone
    (`trainer.leftovers.remove_abandoned`); torch.save into `directory/.tmp-PID@HOST~step-...`
    and fsync; rename it to its final name (`_move_into_place`: an existing checkpoint of the
    same step is renamed aside first and deleted after); point `directory/latest` at it; delete
    the oldest `step-*` directories so that `keep_last` remain (the one just written is always kept). If torch.save
    fails, the temporary directory is removed and the error propagates: no new checkpoint
    appears and `latest` is unchanged.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: at least one checkpoint must be kept")
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_abandoned(directory)

    name = step_name(step)
    temporary = directory / temporary_name(name)
    temporary.mkdir()
    try:
        with open(temporary / STATE_FILE, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        sync_folder(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    final = directory / name
    _move_into_place(temporary, final)
    _write_latest(directory, name)

    checkpoints = _complete_checkpoints(directory)
    keep = {path for _, path in checkpoints[-keep_last:]} | {final}
    for _, path in checkpoints:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint directory in `directory`, or None if there is none.

    `directory/latest` decides when it names a `step-*` directory that holds a state file;
    otherwise (missing, stale or damaged `latest`) the highest complete step directory wins.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    try:
        name = (directory / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if step_of(name) >= 0 and (directory / name / STATE_FILE).is_file():
        return directory / name
    checkpoints = _complete_checkpoints(directory)
    return checkpoints[-1][1] if checkpoints else None


def checkpoints_to_try(directory: Path) -> list[Path]:
    """The step directories a run in `directory` may continue from, in the order to try them:
    the newest (the one `latest` names when that folder exists, else the highest step), then each
    older one by step. Unlike `latest_checkpoint`, folders whose state file is missing are listed
    too, so that a caller can say which checkpoint it passed over."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    folders = sorted((entry for entry in directory.iterdir() if step_of(entry.name) >= 0 and entry.is_dir()),
                     key=step_of, reverse=True)
    try:
        named = directory / (directory / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        named = None
    if named is None or named not in folders:
        return folders
    return [named] + [folder for folder in folders if step_of(folder) < step_of(named)]


def _damage(file: Path) -> str | None:
    """What is wrong with the shape of a state file, found without loading it (its first bytes and
    the zip directory at its end), or None when it looks like a complete torch.save archive."""
    with open(file, "rb") as handle:
        start = handle.read(len(ZIP_START))
    if not start:
        return "empty (0 bytes): the save that wrote it did not finish"
    if start != ZIP_START:
        return "not a checkpoint (torch.save writes a zip archive; this file does not begin as one)"
    if not zipfile.is_zipfile(file):
        return "truncated or damaged: the end of its zip archive is missing (an interrupted write or copy?)"
    return None


def _first_sentence(error: Exception) -> str:
    """The telling part of a torch.load error: its WeightsUnpickler reason when it has one (the
    rest of that message is advice about weights_only=False, wrong for a damaged file), else its
    first sentence."""
    text = " ".join(str(error).split())
    reason = text.partition("WeightsUnpickler error:")[2].strip() or text
    return reason.split(". ")[0].rstrip(".")


def try_load_checkpoint(path: Path) -> tuple[dict | None, str | None]:
    """(the state saved at `path`, None), or (None, what is wrong with it: one line naming the file).

    `path` is a step directory or its state.pt. A missing, empty, truncated or foreign file is
    found from its first bytes and its end, without loading it; the rest is loaded on the CPU with
    `torch.load(..., weights_only=True)`, which refuses anything but tensors and plain values."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        return None, f"{path}: no {STATE_FILE} there"
    damage = _damage(file)
    if damage is not None:
        return None, f"{file}: {damage}"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        return None, f"{file}: cannot load it ({type(error).__name__}: {_first_sentence(error)})"
    if not isinstance(state, dict):
        return None, f"{file}: holds a {type(state).__name__}, not a dict of checkpoint state"
    return state, None


def load_checkpoint(path: Path) -> dict:
    """The state saved at `path` (a step directory or its state.pt), loaded on the CPU.

    Uses `torch.load(..., weights_only=True)`. Raises CheckpointError naming the path when the
    file is missing, unreadable, holds objects weights_only refuses, or is not a dict.
    """
    state, problem = try_load_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"{problem}; expected a complete {STATE_FILE} written by save_checkpoint, holding "
                              "only tensors, dicts, lists, numbers and strings")
    return state


def rng_state() -> dict:
    """The state of the torch (CPU and CUDA), numpy-global and Python `random` generators.

    Only tensors, ints, floats, strings and None, so that `torch.load(weights_only=True)` accepts it.
    """
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [state.cpu() for state in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None,
        "numpy": {
            "algorithm": str(algorithm),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
    }


def restore_rng_state(state: dict) -> None:
    """Put the generators back as `rng_state()` found them.

    CUDA states are restored for as many devices as both the saved state and this process have.
    """
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu().to(torch.uint8), device)
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["algorithm"],
        numpy_state["keys"].numpy().astype(np.uint32),
        int(numpy_state["position"]),
        int(numpy_state["has_gauss"]),
        float(numpy_state["cached_gaussian"]),
    ))
    python_state = state["python"]
    random.setstate((
        int(python_state["version"]),
        tuple(int(value) for value in python_state["internal"].tolist()),
        python_state["gauss_next"],
    ))


_MISSING = object()


def _lookup(config: dict, dotted_key: str) -> Any:
    value: Any = config
    for part in dotted_key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _plain(value: Any) -> Any:
    """Tuples as lists, so that a value survives a round trip through YAML unchanged."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _describe(value: Any) -> str:
    return "no value" if value is _MISSING else repr(value)


def check_compatible(saved_config: dict, current_config: dict, keys: Sequence[str]) -> None:
    """Raise CheckpointError if the configs differ at any of the dotted `keys`.

    The message has one line per differing key, e.g.
    "method.name: checkpoint has 'simclr', this run has 'byol'". A key missing on both sides
    is not a difference.
    """
    differences = []
    for key in keys:
        saved, current = _lookup(saved_config, key), _lookup(current_config, key)
        if saved is _MISSING and current is _MISSING:
            continue
        if saved is _MISSING or current is _MISSING or _plain(saved) != _plain(current):
            differences.append(f"{key}: checkpoint has {_describe(saved)}, this run has {_describe(current)}")
    if differences:
        raise CheckpointError("the checkpoint does not fit this run:\n  " + "\n  ".join(differences))
