"""Starting or joining Ray. A local Ray listens on loopback only.

A local Ray runs in Ray's single-machine mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the mode
Ray uses on laptops): every Ray service and the dashboard bind 127.0.0.1, nothing is reachable
from the network. To see a remote cluster's dashboard, forward its port through SSH
(`ssh -L 8265:localhost:8265 HEAD`) instead of exposing it.
"""

from __future__ import annotations

import os

import ray

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
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # single-machine Ray: loopback only
    cpus = os.cpu_count() or 1
    ray.init(
        num_cpus=max(cpus, int(num_cpus or 0)),
        include_dashboard=dashboard,
        dashboard_host=LOOPBACK,
        log_to_driver=True,
    )


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
