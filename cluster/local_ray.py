"""Starting or joining Ray. A local Ray listens on loopback only, with no dashboard by default.

To reach a remote cluster's dashboard, forward its port through SSH
(`ssh -L 8265:localhost:8265 HEAD`) instead of exposing it.
"""

from __future__ import annotations

import os

import ray

LOOPBACK = "127.0.0.1"


def ensure_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Connect to `address` (a running cluster, e.g. "auto"), or start Ray in-process on loopback."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        num_cpus=num_cpus if num_cpus is not None else os.cpu_count(),
        include_dashboard=dashboard,
        dashboard_host=LOOPBACK,
        _node_ip_address=LOOPBACK,  # ray.init's parameter for the node address: loopback only
        log_to_driver=True,
    )


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
