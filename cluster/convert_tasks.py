"""`selfsup convert --ray`: the images of a large folder read and checked by Ray tasks.

`pipeline.convert.convert` does the planning, the writing of shards in order, the crash safety
and the error report; it only needs each image's `prepare_image` result, in plan order. This
module supplies that as Ray tasks over chunks of images (`ray_map_in_order`), spread over every
CPU of the cluster, with a bounded number of chunks in flight so that the driver's memory stays
bounded however many millions of images there are. The source folder must be visible at the
same path on every node (a shared mount). The outputs are byte-for-byte those of the local path.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator

import selfsup.cluster.local_ray  # noqa: F401  first: a local Ray must be set up for loopback before `import ray`
import ray  # noqa: E402

from selfsup.pipeline.images import prepare_image

Task = tuple[str, str, "int | None"]  # (source root, relative path, max_side)


def _prepare_chunk(tasks: list[Task]) -> list[dict]:
    return [prepare_image(*task) for task in tasks]


def ray_map_in_order(tasks: list[Task], *, chunk_size: int = 64, chunks_in_flight: int | None = None,
                     ) -> Iterator[dict]:
    """prepare_image(*task) for every task, in order, computed by Ray tasks of `chunk_size` images.

    Ray must be initialized. A task that fails (a node lost) is retried by Ray; a chunk's
    result is handed out only when every earlier chunk's has been.
    """
    cpus = int(ray.cluster_resources().get("CPU", 1))  # Ray
    chunks_in_flight = chunks_in_flight or max(2, 3 * cpus)
    prepare_remote = ray.remote(num_cpus=1, max_retries=3)(_prepare_chunk)  # Ray: one task per chunk
    chunks = (tasks[start:start + chunk_size] for start in range(0, len(tasks), chunk_size))
    pending = deque()
    try:
        for chunk in chunks:
            pending.append(prepare_remote.remote(chunk))
            if len(pending) >= chunks_in_flight:
                break
        while pending:
            results = ray.get(pending.popleft())  # Ray: waits for the oldest chunk only
            for chunk in chunks:
                pending.append(prepare_remote.remote(chunk))
                break
            yield from results
    finally:
        for reference in pending:  # interrupted or failed: stop what is still queued
            ray.cancel(reference)
