"""Starting or joining Ray. A local Ray listens on loopback only.

A local Ray runs in Ray's single-machine mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the mode
Ray uses on laptops): its node address is 127.0.0.1, so every Ray service binds 127.0.0.1 and the
dashboard too; nothing is reachable from the network. Ray reads that variable once, when it is
first imported, so this module sets it before its own `import ray`: import it before anything
that imports Ray (`cluster/train_job.py` does). It is left alone inside a Ray job (`RAY_ADDRESS`
set), and joining a running cluster does not depend on it. `ensure_ray` warns when a local Ray
started anyway on another address. To see a remote cluster's dashboard, forward its port through
SSH (`ssh -L 8265:localhost:8265 HEAD`) instead of exposing it.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import uuid
import warnings

SINGLE_MACHINE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault(SINGLE_MACHINE_VARIABLE, "0")  # before `import ray`: Ray reads it on import

import ray  # noqa: E402

LOOPBACK = "127.0.0.1"
OWNER_VARIABLE = "SELFSUP_RAY_OWNER"  # set in a local Ray's processes: the driver that started it


def ensure_ray(address: str | None = None, num_cpus: float | None = None, dashboard: bool = True) -> None:
    """Connect to `address` (a running cluster, e.g. "auto"), or start Ray in-process on loopback."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray job: join that cluster
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ[SINGLE_MACHINE_VARIABLE] = "0"  # inherited by the Ray processes started here
    owner = os.environ[OWNER_VARIABLE] = f"{os.getpid()}-{uuid.uuid4().hex}"  # marks this Ray's processes
    cpus = os.cpu_count() or 1
    ray.init(
        num_cpus=max(cpus, int(num_cpus or 0)),
        include_dashboard=dashboard,
        dashboard_host=LOOPBACK,
        log_to_driver=True,
        # Ray's own actors (Ray Train's placement-group cleaner) look their cluster up with
        # address "auto", which fails once a second local Ray runs on the machine: tell them ours.
        runtime_env={"worker_process_setup_hook": "selfsup.cluster.local_ray.name_this_cluster"},
    )
    start_reaper(owner)
    node_address = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_address).is_loopback:
        warnings.warn(f"the local Ray runs on {node_address}, not on loopback: Ray was imported before "
                      f"cluster.local_ray could set {SINGLE_MACHINE_VARIABLE}=0, so its services listen "
                      "beyond this machine; import cluster.local_ray first", RuntimeWarning, stacklevel=2)


def name_this_cluster() -> None:
    """Ray: run in every worker process of a local Ray at start-up (`worker_process_setup_hook`).

    Sets RAY_ADDRESS to this worker's own cluster, so that Ray's State API calls inside it (made
    with address "auto") find it even when other local Ray instances run beside it."""
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def start_reaper(owner: str) -> None:
    """Start `selfsup.cluster.reaper`, which ends every process of this local Ray (those whose
    environment holds OWNER_VARIABLE=owner) once this driver is gone, even when it was killed:
    Ray ends its GCS and raylet with the driver, but its agents would linger for a minute or more."""
    subprocess.Popen([sys.executable, "-m", "selfsup.cluster.reaper", str(os.getpid()), owner],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
