"""Benchmark: the nightly flow end to end on generator data; wall time per stage and peak memory.

    python benchmarks/bench_nightly.py --clients 690000 --days 365   # about 20M events

    python benchmarks/bench_nightly.py --clients 500000 --execution dask --shards 4 --workers 2

Generates the data set (not timed in the flow figures), then runs the nightly flow twice
through Prefect: the first night fits every model (no champion yet), the second loads the
champions. Prints Prefect's one-time start-up separately, each stage's seconds as the flow
measured them, the total, and the peak resident memory of this process (children excluded).
With `--execution dask` the flow validates and builds features on a LocalCluster it starts
(`execution` in the config); the peak of each Dask worker process is sampled every 100 ms
from here (psutil) and printed beside this process's (the driver's).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=690_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument(
        "--workdir", help="keep everything here (default: a temp dir); its data set is reused"
    )
    parser.add_argument("--execution", choices=["local", "dask"], default="local")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nights", type=int, choices=[1, 2], default=2, help="1: fits only")
    args = parser.parse_args()

    from configs import config_from_mapping
    from features.generator import write_dataset

    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp:
        work = Path(args.workdir or tmp)
        end = date(2025, 12, 31)
        t0 = time.perf_counter()
        marker = work / "data" / f".generated-{args.clients}-{args.days}"
        if args.workdir and marker.exists():  # the same data set, kept by an earlier run
            print(f"reusing the data set in {work / 'data'}")
        else:
            summary = write_dataset(
                work / "data", clients=args.clients, days=args.days, end=end, seed=7, overwrite=True
            )
            marker.touch()
            print(
                f"generated {summary['events']:,} events for {args.clients:,} clients"
                f" in {time.perf_counter() - t0:.1f} s"
            )
        shutil.rmtree(work / "work", ignore_errors=True)  # every run starts without a store

        execution = {"mode": args.execution, "shards": args.shards, "workers": args.workers}
        config = config_from_mapping(
            {"workdir": str(work / "work"), "execution": execution}, source=str(work / "bench")
        )
        workers = _WorkerPeaks()
        t0 = time.perf_counter()
        from pipelines.prefect_utils import ensure_prefect_api

        ensure_prefect_api()  # what `segmentation run` does first (a patient start-up)
        print(f"Prefect start-up (temporary server, one time): {time.perf_counter() - t0:.1f} s")

        from pipelines.nightly import run_nightly

        events = str(work / "data" / "events")
        nights = (
            ("first night (fits)", end - timedelta(days=1)),
            ("second night (champions)", end),
        )
        for label, as_of in nights[: args.nights]:
            t0 = time.perf_counter()
            result = run_nightly(config, as_of=as_of, events=events)
            wall = time.perf_counter() - t0
            print(
                f"\n{label}: as of {as_of}, {result['clients']:,} clients,"
                f" {result['events_read']:,} events, wall {wall:.1f} s"
            )
            peaks = result.get("peak_rss_gb", {})
            for stage, seconds in result["seconds"].items():
                peak = (
                    f"   this process's peak so far {peaks[stage]:5.2f} GB"
                    if stage in peaks
                    else ""
                )
                print(f"  {stage:<12} {seconds:7.2f} s{peak}")
            print(f"  refit: {result['refit']} ({result['refit_reason']})")
        workers.stop()
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(f"\npeak RSS: {peak_gb:.2f} GB (this process, the driver)")
        if args.execution == "dask":
            print(f"Dask worker peaks: {', '.join(f'{g:.2f}' for g in workers.peaks())} GB")
        print(
            json.dumps(
                {
                    "clients": result["clients"],
                    "events": result["events_read"],
                    "execution": args.execution,
                    "shards": args.shards if args.execution == "dask" else None,
                    "peak_rss_gb": round(peak_gb, 2),
                    "worker_peaks_gb": [round(g, 2) for g in workers.peaks()],
                }
            )
        )


class _WorkerPeaks:
    """The peak resident memory of each Dask worker process under this one (the
    LocalCluster's workers are spawned processes: `multiprocessing` in their command line;
    Prefect's server, also a child, is not counted), sampled every 100 ms."""

    def __init__(self) -> None:
        import threading

        self._peaks: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.wait(0.1):
            for child in me.children(recursive=True):
                try:
                    line = " ".join(child.cmdline())
                    if "multiprocessing" not in line or "resource_tracker" in line:
                        continue
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                self._peaks[child.pid] = max(self._peaks.get(child.pid, 0), rss)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def peaks(self) -> list[float]:
        """The peaks in GB, largest first."""
        return sorted((p / 1024**3 for p in self._peaks.values()), reverse=True)


if __name__ == "__main__":
    main()
