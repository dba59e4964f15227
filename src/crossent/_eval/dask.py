"""``--dask ADDRESS``: score the partitions of a job on a Dask distributed cluster.

Each task reopens the input on its worker (the files must be readable there: a shared
filesystem, or a local cluster), scores its row range with its own
:class:`crossent.metrics.Evaluator` and returns it (a few KB); the client merges them in
partition order. Merging is exact up to float64 rounding of a handful of sums, so the
figures equal the single-machine run's (to about 1e-14 relative).

``--dask local:N`` starts a local cluster of N worker processes for the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from .errors import ClusterError, require
from .job import Plan, Progress

__all__ = ["run_on_dask", "run_with_client", "cluster_client"]

# rows per partition: about this many bytes of predictions (whole row groups for Parquet)
_PARTITION_BYTES = 64 << 20


def _score_partition(plan: Plan, start: int, stop: int | None) -> Any:
    return plan.score(start, stop)


@contextlib.contextmanager
def cluster_client(address: str) -> Iterator[tuple[Any, int]]:
    """A ``distributed.Client`` for ``address`` (``local:N`` starts a local cluster) and the
    number of workers."""
    require("distributed", "--dask")
    import distributed

    if address.startswith("local"):
        n_txt = address.partition(":")[2] or str(os.cpu_count() or 1)
        try:
            n = int(n_txt)
            if n < 1:
                raise ValueError
        except ValueError:
            raise ClusterError(f"--dask {address}: expected local:N with N >= 1 workers "
                               "(e.g. local:2)", argument="dask", value=address,
                               expected="local:N") from None
        threads = max(1, (os.cpu_count() or 1) // n)
        try:
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                silence_logs=logging.ERROR,
                env={"CROSSENT_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)},
            )
        except Exception as exc:  # noqa: BLE001
            raise ClusterError(f"cannot start a local Dask cluster of {n} workers: {exc}",
                               argument="dask", value=address) from exc
        try:
            client = distributed.Client(cluster)
            try:
                yield client, n
            finally:
                client.close()
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(address, timeout="15s")
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError ...
        raise ClusterError(f"cannot connect to the Dask scheduler at {address!r}: {exc}",
                           argument="dask", value=address,
                           expected="the address of a running scheduler "
                           "(tcp://HOST:8786) or local:N") from exc
    try:
        n = max(1, len(client.scheduler_info().get("workers", {})))
        yield client, n
    finally:
        client.close()


def run_on_dask(plan: Plan, address: str, progress: Progress | None = None,
                partitions: int | None = None) -> Any:
    """Score ``plan`` on the cluster at ``address``; returns the merged evaluator."""
    with cluster_client(address) as (client, n_workers):
        return run_with_client(plan, client, n_workers, progress, partitions)


def run_with_client(plan: Plan, client: Any, n_workers: int = 1,
                    progress: Progress | None = None, partitions: int | None = None) -> Any:
    """Score ``plan`` with an existing ``distributed.Client``: one task per partition,
    the partial evaluators merged in partition order."""
    from distributed import as_completed

    bytes_per_row = 8 * max(1, plan.n_classes if not plan.binary else 1)
    if plan.n_rows:
        target = max(1, _PARTITION_BYTES // bytes_per_row)
        if partitions:
            target = max(1, -(-plan.n_rows // partitions))
        else:  # at least two partitions per worker when the data allow
            target = min(target, max(1, -(-plan.n_rows // (2 * max(1, n_workers)))))
    else:
        target = 1 << 62
    parts = plan.partitions(target)
    starts = [a for a, _ in parts]
    stops = [b for _, b in parts]
    futures = client.map(_score_partition, [plan] * len(parts), starts, stops, pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for fut in as_completed(futures):
            if fut.status == "error":
                fut.result()  # raises the worker's exception (a DataError ...)
            if progress is not None:
                a, b = parts[index[fut.key]]
                progress.update((b if b is not None else (plan.n_rows or 0)) - a)
        results = client.gather(futures)
    finally:
        for fut in futures:
            fut.cancel()
    merged = plan.new_evaluator()
    for ev in results:
        merged.merge(ev)
    return merged
