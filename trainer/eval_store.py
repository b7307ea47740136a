"""Where evaluation results go: `RUN/eval.json` (every protocol's result, keyed so that it is
reused) and the run's TensorBoard (`RUN/tensorboard/eval`).

`RUN/eval.json`, rewritten atomically after every result::

    {"format_version": 1,
     "results": {KEY: {"step": 240, "weights": "pretrained", "protocol": "svm", "options": {...},
                       "result": {...}, "finished": "2024-01-01T00:00:00+00:00"}},
     "tables": {"step 240, pretrained": {"rows": [...], "written": "..."}}}

KEY (`result_key`) spells out the checkpoint step, which weights (pretrained, pretrained teacher,
random-init), the protocol and every option that changes its answer (the data, the test set, the
image size, the protocol's own settings) as sorted JSON: the same measurement has the same key,
and `selfsup eval all` finds it instead of measuring again.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from selfsup.errors import CheckpointError
from selfsup.files import write_atomically

EVAL_FILE = "eval.json"
FORMAT_VERSION = 1
TENSORBOARD_FOLDER = Path("tensorboard") / "eval"


def run_folder(checkpoint: str | Path) -> Path:
    """The run a checkpoint belongs to: RUN for RUN/checkpoints/step-N (or its state.pt), else the
    checkpoint's own folder."""
    path = Path(checkpoint).resolve()
    step = path.parent if path.name == "state.pt" else path
    return step.parent.parent if step.parent.name == "checkpoints" else step


def result_key(step: int, weights: str, protocol: str, options: dict) -> str:
    """The key of one measurement in `eval.json`."""
    return f"step {step}, {weights}, {protocol} {json.dumps(options, sort_keys=True)}"


def read_results(run: str | Path) -> dict:
    """The content of `RUN/eval.json` (an empty store when there is none)."""
    path = Path(run) / EVAL_FILE
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "results": {}, "tables": {}}
    try:
        store = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error}); move it away to start a new one") from error
    if not isinstance(store, dict) or store.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: expected an evaluation store of format_version {FORMAT_VERSION}; "
                              "move it away to start a new one")
    store.setdefault("results", {})
    store.setdefault("tables", {})
    return store


def _write(run: Path, store: dict) -> None:
    write_atomically(run / EVAL_FILE, (json.dumps(store, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def find_result(run: str | Path, key: str) -> dict | None:
    """The stored entry of `key`, or None."""
    return read_results(run)["results"].get(key)


def save_result(run: str | Path, key: str, *, step: int, weights: str, protocol: str, options: dict,
                result: dict) -> dict:
    """Store one result under `key` (replacing an older one); returns the entry."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    store = read_results(run)
    entry = {"step": step, "weights": weights, "protocol": protocol, "options": options,
             "result": finite(result), "finished": _now()}
    store["results"][key] = entry
    _write(run, store)
    return entry


def save_table(run: str | Path, name: str, rows: list[dict]) -> None:
    """Store a printed table (`selfsup eval all`) under `name`."""
    run = Path(run)
    store = read_results(run)
    store["tables"][name] = {"rows": rows, "written": _now()}
    _write(run, store)


def finite(value):
    """`value` with NaN and infinities (not JSON) replaced by None, through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


class EvalWriter:
    """Scalars and pictures into `RUN/tensorboard/eval`, at the checkpoint's step; the event file
    is opened on the first write."""

    def __init__(self, run: str | Path):
        self.folder = Path(run) / TENSORBOARD_FOLDER
        self.writer = None

    def _open(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder))
        return self.writer

    def scalars(self, step: int, tag: str, values: dict) -> None:
        """`tag/NAME` for every finite number among `values`."""
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._open().add_scalar(f"{tag}/{name}", value, global_step=step)

    def image(self, step: int, tag: str, picture) -> None:
        """A PIL image."""
        import numpy as np

        self._open().add_image(tag, np.asarray(picture.convert("RGB")), global_step=step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
