"""Ray Jobs: run a `selfsup` command on a cluster, follow it, list, read and stop jobs.

`selfsup submit --address http://127.0.0.1:8265 -- train --config configs/simclr.yaml ...` ships
this project folder to the cluster (Ray's `runtime_env` `working_dir`, without the virtualenv,
data and run folders) and runs `python -m selfsup train ...` there with the cluster's Python,
streaming the job's output until it ends. The command runs in a copy of the project on the head
node: give data and output paths that the cluster sees (a shared mount or a URI), not local ones.

The address is the cluster's dashboard. Reach a remote one through an SSH tunnel
(`ssh -L 8265:127.0.0.1:8265 HEAD`, or `ray dashboard ray_cluster.yaml`) rather than exposing it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path


def _token_auth_if_token_present() -> None:
    """Send Ray's auth token when one is at hand (a Ray 2.5x+ cluster requires it by default).

    Ray reads `RAY_AUTH_MODE` once, when it is imported: this runs before the import below.
    The token comes from `RAY_AUTH_TOKEN`, the file `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`.
    """
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


_token_auth_if_token_present()
from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402  Ray: the Jobs REST client

# Never shipped to the cluster (gitignore-style patterns, relative to the working dir).
EXCLUDES = [".venv/", ".git/", "data/", "runs/", "demo/", "build/", "*.egg-info/", "__pycache__/",
            ".pytest_cache/", "*.tar", "*.idx", "*.parquet", "*.pt"]
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


def is_dashboard_refusal(error: BaseException) -> bool:
    """An unreachable dashboard, or one that refuses us (no or a wrong auth token)."""
    from ray.exceptions import AuthenticationError  # Ray

    return isinstance(error, (ConnectionError, AuthenticationError))


def _client(address: str) -> JobSubmissionClient:
    return JobSubmissionClient(address)  # Ray: an HTTP client of the dashboard


def entrypoint_for(command: list[str], python: str = "python") -> str:
    """The shell command a job runs: the selfsup CLI as a module of the shipped working dir."""
    return f"{shlex.quote(python)} -m selfsup {shlex.join(command)}"


def submit(address: str, command: list[str], *, working_dir: str | Path = ".", python: str = "python",
           follow: bool = True) -> int:
    """Submit `selfsup COMMAND...` as a job; with `follow`, stream its logs and return its exit status."""
    working_dir = Path(working_dir).resolve()
    if not (working_dir / "selfsup" / "__init__.py").is_file():
        raise FileNotFoundError(f"{working_dir}: not the selfsup project folder (no selfsup/__init__.py); "
                                "run from the project root or pass --working-dir")
    client = _client(address)
    job_id = client.submit_job(  # Ray: upload the working dir, start the entrypoint on the head node
        entrypoint=entrypoint_for(command, python),
        runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES,
                     "env_vars": {"PYTHONUNBUFFERED": "1"}},
        metadata={"selfsup_command": shlex.join(command)},
    )
    print(f"submitted job {job_id}: selfsup {shlex.join(command)}", flush=True)
    if not follow:
        print(f"follow it with: selfsup jobs logs {job_id} --follow --address {address}")
        return 0
    try:
        asyncio.run(_stream_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (selfsup jobs stop {job_id} to end it)",
              file=sys.stderr)
        return 130
    status = _wait_finished(client, job_id)
    print(f"job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


async def _stream_logs(client: JobSubmissionClient, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):  # Ray: the job's stdout and stderr, as they come
        sys.stdout.write(lines)
        sys.stdout.flush()


def _wait_finished(client: JobSubmissionClient, job_id: str, timeout: float = 60.0) -> JobStatus:
    """The job's final status (log streaming ends a moment before the status is final)."""
    deadline = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while status not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return status


def list_jobs(address: str) -> list[dict]:
    """Every job the cluster knows, oldest first: id, status, start time, entrypoint."""
    jobs = []
    for job in _client(address).list_jobs():
        jobs.append({"id": job.submission_id or job.job_id, "status": str(job.status.value),
                     "started": job.start_time, "entrypoint": job.entrypoint})
    return sorted(jobs, key=lambda job: job["started"] or 0)


def format_jobs(jobs: list[dict]) -> str:
    if not jobs:
        return "(no jobs)"
    lines = []
    for job in jobs:
        started = datetime.fromtimestamp(job["started"] / 1000).strftime("%Y-%m-%d %H:%M:%S") if job["started"] else "-"
        lines.append(f"{job['id']:28s} {job['status']:10s} {started:19s} {job['entrypoint']}")
    return "\n".join(lines)


def show_logs(address: str, job_id: str, *, follow: bool = False) -> int:
    client = _client(address)
    if follow:
        asyncio.run(_stream_logs(client, job_id))
    else:
        sys.stdout.write(client.get_job_logs(job_id))
    return 0


def stop_job(address: str, job_id: str) -> str:
    stopped = _client(address).stop_job(job_id)
    return f"job {job_id}: {'stop requested' if stopped else 'already finished'}"
