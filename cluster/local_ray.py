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
import warnings

SINGLE_MACHINE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault(SINGLE_MACHINE_VARIABLE, "0")  # before `import ray`: Ray reads it on import

import ray  # noqa: E402

LOOPBACK = "127.0.0.1"


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
    cpus = os.cpu_count() or 1
    ray.init(
        num_cpus=max(cpus, int(num_cpus or 0)),
        include_dashboard=dashboard,
        dashboard_host=LOOPBACK,
        log_to_driver=True,
    )
    node_address = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_address).is_loopback:
        warnings.warn(f"the local Ray runs on {node_address}, not on loopback: Ray was imported before "
                      f"cluster.local_ray could set {SINGLE_MACHINE_VARIABLE}=0, so its services listen "
                      "beyond this machine; import cluster.local_ray first", RuntimeWarning, stacklevel=2)


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
