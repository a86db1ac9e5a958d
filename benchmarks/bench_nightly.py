"""Benchmark: the nightly flow end to end on generator data; wall time per stage and peak memory.

    python benchmarks/bench_nightly.py --clients 690000 --days 365   # about 20M events

Generates the data set (not timed in the flow figures), then runs the nightly flow twice
through Prefect: the first night fits every model (no champion yet), the second loads the
champions. Prints Prefect's one-time start-up separately, each stage's seconds as the flow
measured them, the total, and the peak resident memory of this process (children excluded).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=690_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--workdir", help="keep everything here (default: a temp dir)")
    args = parser.parse_args()

    from configs import config_from_mapping
    from features.generator import write_dataset

    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp:
        work = Path(args.workdir or tmp)
        end = date(2025, 12, 31)
        t0 = time.perf_counter()
        summary = write_dataset(
            work / "data", clients=args.clients, days=args.days, end=end, seed=7, overwrite=True
        )
        print(
            f"generated {summary['events']:,} events for {args.clients:,} clients"
            f" in {time.perf_counter() - t0:.1f} s"
        )

        config = config_from_mapping({"workdir": str(work / "work")}, source=str(work / "bench"))
        t0 = time.perf_counter()
        from prefect import flow

        @flow(name="bench-startup")
        def startup() -> None:
            return None

        startup()
        print(f"Prefect start-up (temporary server, one time): {time.perf_counter() - t0:.1f} s")

        from pipelines.nightly import run_nightly

        events = str(work / "data" / "events")
        for label, as_of in (
            ("first night (fits)", end - timedelta(days=1)),
            ("second night (champions)", end),
        ):
            t0 = time.perf_counter()
            result = run_nightly(config, as_of=as_of, events=events)
            wall = time.perf_counter() - t0
            print(
                f"\n{label}: as of {as_of}, {result['clients']:,} clients,"
                f" {result['events_read']:,} events, wall {wall:.1f} s"
            )
            for stage, seconds in result["seconds"].items():
                print(f"  {stage:<12} {seconds:7.2f} s")
            print(f"  refit: {result['refit']} ({result['refit_reason']})")
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(f"\npeak RSS: {peak_gb:.2f} GB")
        print(
            json.dumps(
                {
                    "clients": result["clients"],
                    "events": result["events_read"],
                    "peak_rss_gb": round(peak_gb, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
