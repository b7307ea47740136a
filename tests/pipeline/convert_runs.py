"""Test helpers that run `selfsup convert` as a user does, in a process of its own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from image_files import write_class_folders

ROOT = Path(__file__).resolve().parents[2]


def run_convert(source: Path, output: Path, *options: str, prefix: tuple[str, ...] = (),
                timeout: float = 180) -> subprocess.CompletedProcess:
    """`selfsup convert SOURCE OUTPUT --quiet OPTIONS` in a process of its own (after `prefix`)."""
    command = [sys.executable, "-m", "selfsup", "convert", str(source), str(output), "--quiet", *options]
    return subprocess.run([*prefix, *command], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def start_convert(source: Path, output: Path, *options: str) -> subprocess.Popen:
    """The same, started in the background, with SIGINT at its default (a background job's parent
    may have it ignored, and Python then never raises KeyboardInterrupt)."""
    command = [sys.executable, "-m", "selfsup", "convert", str(source), str(output), "--quiet", *options]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `selfsup: error: ...` line of a refused command (exit 2, nothing else on stderr)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("selfsup: error: "), result.stderr
    return lines[0]


def errors_by_path(output: Path) -> dict[str, dict]:
    """OUT/errors.jsonl as {path: entry}."""
    return {entry["path"]: entry for entry in map(json.loads, (output / "errors.jsonl").read_text().splitlines())}


def write_many_images(source: Path) -> list[str]:
    """400 small BMP files in 4 classes (re-encoded to PNG, about 5.5 MB in shards): a conversion
    that takes a few seconds, for tests that act on it while it runs."""
    return write_class_folders(source, classes=4, per_class=100, size=(96, 72), format="BMP", suffix=".bmp")
