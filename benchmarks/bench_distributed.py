"""The one-process feature build against the sharded build on Dask: wall time and peak memory.

    .venv/bin/python benchmarks/bench_distributed.py                 # ~5M events (150k clients)
    .venv/bin/python benchmarks/bench_distributed.py --clients 20000 --shards 1 2 4
    .venv/bin/python benchmarks/bench_distributed.py --input original   # each task scans all

By default each Dask row reads a copy of the events partitioned by client hash with as many
shards as the row (`pipelines.partition.partition_events`, written once per shard count into
the data folder, its time printed apart), so each task reads its own `shard=k` folder;
`--input original` reads the generated files, every task scanning them all.

The one-process build (`steps.read_events` + `steps.compute_features`, as the nightly runs
them) runs in a fresh process; its peak is that process's peak resident set (ru_maxrss). Each
Dask configuration gets a fresh LocalCluster (`--workers` processes, one thread each); a
worker's peak is its resident set sampled every 20 ms by a thread started in the worker with
`client.run` (psutil) before the build, and the idle worker's resident set is shown apart. The wall time of a Dask build
excludes the cluster's start-up (printed apart). Every Dask result is checked equal to the
one-process table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

AS_OF = date(2026, 6, 30)
NOW = datetime(2026, 7, 1, 6, 0, tzinfo=UTC)
EVENTS_PER_CLIENT = 33.7  # the generator's average over 400 days (measured)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_process(events: str, out: str, queue: multiprocessing.Queue) -> None:
    from configs import EngineConfig
    from features.events import connect_for_events
    from pipelines import steps

    config = EngineConfig()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        con = connect_for_events(config.features, scratch)
        read = steps.read_events(con, config, events, now=NOW)
        features = steps.compute_features(con, AS_OF, config)
        con.close()
    seconds = time.perf_counter() - started
    features.to_parquet(out)
    queue.put((seconds, _peak_mb(), read.report.rows, len(features)))


def run_one_process(events: str, out: str) -> tuple[float, float, int, int]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_one_process, args=(events, out, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _start_sampler(dask_worker: Any) -> float:
    """Sample this worker's resident set every 20 ms in a thread; return the current MB."""
    import threading

    import psutil

    process, peak = psutil.Process(), [0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    dask_worker.bench_peak = peak
    return process.memory_info().rss / 2**20


def _sampled_peak_mb(dask_worker: Any) -> float:
    return float(dask_worker.bench_peak[0]) / 2**20


def run_dask(events: str, shards: int, workers: int, memory: str) -> dict[str, object]:
    from configs.schema import config_from_mapping
    from pipelines.distributed import build_features_on_dask, dask_client

    config = config_from_mapping(
        {
            "execution": {
                "mode": "dask",
                "shards": shards,
                "workers": workers,
                "threads_per_worker": 1,
                "memory_limit_per_worker": memory,
            }
        }
    )
    started = time.perf_counter()
    with dask_client(config.execution) as client:
        startup = time.perf_counter() - started
        idle = client.run(_start_sampler)
        started = time.perf_counter()
        result = build_features_on_dask(config, events, AS_OF, client=client, now=NOW)
        seconds = time.perf_counter() - started
        time.sleep(0.05)
        peaks = client.run(_sampled_peak_mb)
    return {
        "shards": shards,
        "startup": startup,
        "seconds": seconds,
        "idle_mb": max(idle.values()),
        "peaks_mb": sorted(peaks.values(), reverse=True),
        "task_seconds": result.shard_seconds,
        "features": result.features,
    }


def partitioned(events: str, folder: Path, shards: int) -> str:
    """`events` partitioned by client hash into `folder` (written once, then reused)."""
    from configs import EngineConfig
    from pipelines.partition import partition_events, read_manifest

    manifest = read_manifest(folder) if folder.exists() else None
    if manifest is None or manifest.shards != shards:
        started = time.perf_counter()
        manifest = partition_events(EngineConfig(), events, folder, shards)
        print(
            f"  partitioned into {shards} shard(s) in {time.perf_counter() - started:.1f} s"
            f" ({manifest.rows:,} rows)"
        )
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=150_000, help="~33.7 events each")
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory", default="8GB", help="memory_limit_per_worker")
    parser.add_argument("--data", default=None, help="folder of a generated data set (reused)")
    parser.add_argument(
        "--input", choices=["partitioned", "original"], default="partitioned", help="Dask input"
    )
    args = parser.parse_args()

    from features.generator import write_dataset

    data = Path(args.data or f"/tmp/bench-distributed-{args.clients}")
    if not (data / "events").exists():
        t = time.perf_counter()
        write_dataset(data, clients=args.clients, days=args.days, end=AS_OF, seed=5)
        print(f"generated {data} in {time.perf_counter() - t:.1f} s")
    events = str(data / "events")

    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "one.parquet")
        seconds, peak, rows, clients = run_one_process(events, out)
        expected = pd.read_parquet(out)
    print(f"{rows:,} events, {clients:,} clients with features as of {AS_OF}")
    print(f"one process: {seconds:6.1f} s wall, peak {peak:,.0f} MB")
    print(
        f"Dask LocalCluster, {args.workers} workers x 1 thread (fresh cluster per row),"
        f" {args.input} input:"
    )
    print("shards  wall s  start s  worker peaks MB (idle worker MB)  task s (max)  equal")
    for shards in args.shards:
        source = events
        if args.input == "partitioned":
            source = partitioned(events, data / f"partitioned-{shards}", shards)
        row = run_dask(source, shards, args.workers, args.memory)
        features = row["features"]
        assert isinstance(features, pd.DataFrame)
        pd.testing.assert_frame_equal(features, expected, check_exact=True)
        peaks = ", ".join(f"{p:,.0f}" for p in row["peaks_mb"])  # type: ignore[attr-defined]
        print(
            f"{shards:>6}  {row['seconds']:6.1f}  {row['startup']:7.1f}  {peaks:>22}"
            f" ({row['idle_mb']:,.0f})  {max(row['task_seconds']):11.1f}  yes"  # type: ignore[arg-type]
        )


if __name__ == "__main__":
    main()
