"""Everything the README promises for GPUs, measured by one command on a GPU node (`make gpu-check`).

    python -m benchmarks.gpu                 # every part that can run here; about 7 minutes on one GPU
    python -m benchmarks.gpu --dry-run       # what it would run, and why each other part is skipped
    python -m benchmarks.gpu --only pipeline,train_step --output /tmp/gpu.json

The parts, in order, each a subprocess with its own time limit:

  data         the train-step benchmark's demo dataset (1000 images, 96 px), converted once (CPU)
  cuda_tests   the test suite's CUDA tests (`pytest -m gpu`: mixed decoding, every recipe on the GPU)
  pipeline     `benchmarks.pipeline --device cuda`: DALI two views with mixed (nvJPEG) decoding vs
               PIL + DataLoader vs decoding alone
  train_step   `benchmarks.train_step` in bf16: ResNet-50 at 224 px, batch 128, loader-fed vs the
               same steps fed from batches kept in GPU memory (the loader's cost)
  ddp_nccl     `selfsup train --workers N --gpus-per-worker 1`: a short Ray Train DDP run over NCCL
               with every GPU present (N >= 2)
  methods      the methods benchmark's fastest rows (SimCLR, NPID) at 10 epochs on the GPU, kNN
               against random init, into a scratch store (the committed tables are not touched)

It installs nothing and reaches no network: every part runs code and packages already here. A
part that cannot run on this machine (no CUDA, DALI not installed, one GPU only, no bf16, no
NCCL, or not enough of the time budget left) is listed with the reason instead of failing. It
writes one JSON file (`--output`) and, beside it, the same results as a RESULTS.md-ready table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 480  # the 8 minutes on one GPU
TRAIN_STEP_WORK = "/tmp/selfsup-bench-train-step"
FAST_METHODS = ("simclr", "npid")
NEEDS = {  # a requirement -> why a part that has it is skipped where it is missing
    "cuda": "no CUDA device visible to torch",
    "dali": "DALI (nvidia-dali-cuda*) is not installed",
    "bf16": "this GPU has no bf16 support",
    "two_gpus": "one GPU only: a DDP run over NCCL needs 2 or more",
    "nccl": "this torch was built without NCCL",
}


@dataclass(frozen=True)
class Machine:
    """What this machine offers the parts."""

    cuda: bool = False
    gpus: int = 0
    gpu_name: str = ""
    dali: bool = False
    bf16: bool = False
    nccl: bool = False
    torch_version: str = ""
    dali_version: str = ""

    def has(self, need: str) -> bool:
        return {"cuda": self.cuda, "dali": self.dali, "bf16": self.bf16, "two_gpus": self.gpus >= 2,
                "nccl": self.nccl}[need]


def probe() -> Machine:
    """This machine: CUDA devices and their bf16 support as torch sees them, a CUDA build of DALI, NCCL."""
    from importlib import metadata

    import torch

    dali = [dist for dist in metadata.distributions()
            if (dist.metadata["Name"] or "").lower().startswith("nvidia-dali-cuda")]
    cuda = torch.cuda.is_available()
    return Machine(cuda=cuda, gpus=torch.cuda.device_count() if cuda else 0,
                   gpu_name=torch.cuda.get_device_name(0) if cuda else "",
                   dali=bool(dali), bf16=cuda and torch.cuda.is_bf16_supported(),
                   nccl=torch.distributed.is_available() and torch.distributed.is_nccl_available(),
                   torch_version=torch.__version__, dali_version=dali[0].version if dali else "")


@dataclass(frozen=True)
class Part:
    """One measurement: a command, what it needs, how long it may take."""

    name: str
    what: str
    command: list[str]
    timeout: int
    needs: tuple[str, ...] = ()


def build_parts(workdir: Path, gpus: int) -> list[Part]:
    """The parts in the order they run; their run folders and scratch stores go under `workdir`."""
    python, scratch = sys.executable, str(workdir)
    data = f"{TRAIN_STEP_WORK}/shards"
    workers = str(max(2, gpus))
    return [
        Part("data", "demo dataset for train_step and ddp_nccl (1000 images, 96 px), converted once",
             [python, "-c", "from pathlib import Path; from benchmarks.train_step import demo_dataset; "
                            f"print(demo_dataset(Path({TRAIN_STEP_WORK!r})))"], 60, ("cuda",)),
        Part("cuda_tests", "the CUDA tests (pytest -m gpu)",
             [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"], 90, ("cuda", "dali")),
        Part("pipeline", "DALI two views, mixed decoding, vs PIL + DataLoader vs decode only (224 px)",
             [python, "-m", "benchmarks.pipeline", "--device", "cuda", "--json"], 75, ("cuda", "dali")),
        Part("train_step", "bf16 ResNet-50 224 px batch 128: loader-fed vs in-memory batches",
             [python, "-m", "benchmarks.train_step", "--json", "--data", data, "--set", "trainer.precision=bf16"],
             90, ("cuda", "dali", "bf16")),
        Part("ddp_nccl", f"selfsup train, {workers} Ray Train workers, NCCL DDP, 30 steps",
             [python, "-m", "selfsup", "train", "--config", "simclr", "--data", data, "--output", f"{scratch}/ddp",
              "--workers", workers, "--gpus-per-worker", "1", "--set", "model.backbone=resnet18",
              "--set", "data.image_size=96", "--set", "data.batch_size=64", "--set", "trainer.max_steps=30",
              "--set", "trainer.log_every=10", "--set", "trainer.precision=bf16"], 90,
             ("cuda", "dali", "two_gpus", "nccl")),
        Part("methods", f"methods benchmark, fastest rows ({', '.join(FAST_METHODS)}), 10 epochs",
             [python, "-m", "benchmarks.methods", "--methods", ",".join(FAST_METHODS), "--epochs", "10",
              "--store", f"{scratch}/methods", "--results", f"{scratch}/methods.md",
              "--workdir", f"{scratch}/methods-work", "--threads", "4", "--force"], 150, ("cuda", "dali")),
    ]


def plan(parts: list[Part], machine: Machine, budget: float = BUDGET_SECONDS) -> list[tuple[Part, str]]:
    """Each part with "" (it runs) or why it is skipped here; parts that would not fit in what is
    left of `budget` (their time limits summed in order) are skipped too."""
    planned, committed = [], 0.0
    for part in parts:
        missing = [need for need in part.needs if not machine.has(need)]
        if "cuda" in missing:  # without a GPU, its bf16 and a second one go without saying
            missing = [need for need in missing if need not in ("bf16", "two_gpus")]
        if missing:
            planned.append((part, "; ".join(NEEDS[need] for need in missing)))
        elif committed + part.timeout > budget:
            planned.append((part, f"its {part.timeout} s limit does not fit in the {budget:.0f} s budget "
                                  f"({committed:.0f} s already given to earlier parts)"))
        else:
            committed += part.timeout
            planned.append((part, ""))
    return planned


@dataclass
class Outcome:
    """What one part did: "ran", "failed", "timed out" or "skipped", and its figures."""

    name: str
    what: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    result: str = ""
    output_tail: str = ""
    command: list[str] = field(default_factory=list)


def run_part(part: Part, environment: dict | None = None) -> Outcome:
    """Run one part's command from the repository root within its time limit."""
    started = time.perf_counter()
    try:
        completed = subprocess.run(part.command, cwd=ROOT, capture_output=True, text=True, timeout=part.timeout,
                                   env=environment)
    except subprocess.TimeoutExpired as error:
        tail = ((error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or ""))[-2000:]
        return Outcome(part.name, part.what, "timed out", f"after its {part.timeout} s limit",
                       time.perf_counter() - started, "", tail, part.command)
    seconds = time.perf_counter() - started
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        last = next((line for line in reversed(output.strip().splitlines()) if line.strip()), "")
        return Outcome(part.name, part.what, "failed", f"exit {completed.returncode}: {last[:200]}", seconds, "",
                       output[-2000:], part.command)
    return Outcome(part.name, part.what, "ran", "", seconds, summarize(part, completed.stdout), output[-2000:],
                   part.command)


def last_json(text: str) -> dict:
    """The last line of `text` that is a JSON object ({} when none is)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def summarize(part: Part, stdout: str) -> str:
    """The table's result cell for a part that ran, from what its command printed (or stored)."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if part.name == "pipeline":
        found = last_json(stdout)
        return (f"(a) {found['selfsup_ips']:.0f} img/s, (b) {found['baseline_ips']:.0f}, (c) "
                f"{found['decode_ips']:.0f}; a/b {found['selfsup_over_baseline']}, a/c {found['selfsup_over_decode']}")
    if part.name == "train_step":
        found = last_json(stdout)
        return (f"loader-fed {found['loader_ips']:.0f} img/s, in-memory {found['memory_ips']:.0f}: ratio "
                f"{found['ratio']:.3f} (target >= 0.95) on {found['device']}")
    if part.name == "ddp_nccl":
        return next((line for line in lines if line.startswith("trained ")), lines[-1] if lines else "")
    if part.name == "methods":
        return methods_summary(Path(part.command[part.command.index("--store") + 1]))
    return lines[-1] if lines else ""


def methods_summary(store: Path) -> str:
    """'simclr kNN 52.1% (random 23.3%), 1800 img/s; ...' from the methods benchmark's stored results."""
    cells = []
    for path in sorted(store.glob("*.json")):
        result = json.loads(path.read_text())
        cells.append(f"{path.stem.rsplit('-', 1)[0]} kNN {result['knn_top1']:.1f}% (random "
                     f"{result['random_top1']:.1f}%), {result['images_per_second']:.0f} img/s")
    return "; ".join(cells) or "no stored result"


def format_table(outcomes: list[Outcome], machine: Machine) -> str:
    """The RESULTS.md-ready table: one row per part, with the machine it ran on."""
    device = f"{machine.gpus} x {machine.gpu_name}" if machine.cuda else "no CUDA device"
    lines = [f"`python -m benchmarks.gpu`, {datetime.date.today().isoformat()}, {device}, torch "
             f"{machine.torch_version}, DALI {machine.dali_version or 'not installed'}, {platform.node()}", "",
             "| part | what | status | result | seconds |", "|---|---|---|---|---|"]
    for outcome in outcomes:
        status = outcome.status + (f": {outcome.reason}" if outcome.reason else "")
        lines.append(f"| {outcome.name} | {outcome.what} | {status} | {outcome.result.replace('|', '/')} | "
                     f"{outcome.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list the parts and why each would be skipped")
    parser.add_argument("--only", default="", help="comma-separated part names (default: all)")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="seconds for all parts together")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "gpu.json"),
                        help="the JSON file to write; the table goes beside it (.md)")
    parser.add_argument("--workdir", default="/tmp/selfsup-gpu-check", help="run folders and scratch stores")
    args = parser.parse_args(argv)
    machine, output = probe(), Path(args.output)
    parts = build_parts(Path(args.workdir), machine.gpus)
    chosen = [name for name in args.only.split(",") if name]
    unknown = sorted(set(chosen) - {part.name for part in parts})
    if unknown:
        parser.error(f"--only: unknown parts {unknown}; known: {', '.join(part.name for part in parts)}")
    parts = [part for part in parts if not chosen or part.name in chosen]
    planned = plan(parts, machine, args.budget)
    if args.dry_run:
        print(f"this machine: {machine.gpus} CUDA device(s) {machine.gpu_name}".rstrip() +
              f", DALI {machine.dali_version or 'not installed'}, bf16 {machine.bf16}, NCCL {machine.nccl}")
        for part, reason in planned:
            print(f"{part.name:11s} {'would run' if not reason else 'would skip: ' + reason} "
                  f"(limit {part.timeout} s): {part.what}\n            $ {' '.join(part.command)}")
        return 0
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    outcomes = []
    for part, reason in planned:
        if reason:
            outcomes.append(Outcome(part.name, part.what, "skipped", reason, command=part.command))
        else:
            print(f"{part.name}: running (limit {part.timeout} s) ...", flush=True)
            outcomes.append(run_part(part, environment))
            print(f"{part.name}: {outcomes[-1].status} {outcomes[-1].reason} {outcomes[-1].result}", flush=True)
    table = format_table(outcomes, machine)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": asdict(machine), "parts": [asdict(outcome) for outcome in outcomes]},
                                 indent=1) + "\n")
    output.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {output} and {output.with_suffix('.md')}")
    return 1 if any(outcome.status in ("failed", "timed out") for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
