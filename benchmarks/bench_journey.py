"""How long the journey map takes on a large event set, next to a plain group-by of the same
events in the same run (the floor any per-client statistic pays).

    python benchmarks/bench_journey.py --clients 650000          # about 20M events
    python benchmarks/bench_journey.py --data DIR                # an existing write_dataset folder
    python benchmarks/bench_journey.py --data DIR --memory-share 4   # under a quarter of the limit
    python benchmarks/bench_journey.py --data DIR --statements       # seconds per SQL statement

Segments are the generator's personas after the shift (seven segments), standing in for the
nightly's membership. The events are loaded through the event contract into DuckDB on disk,
as the nightly does (`features.event_storage: disk`). The map's memory is this process's
peak RSS while it runs (sampled every 20 ms) above the RSS before it; `--memory-share`
runs it under DuckDB's limit lowered to that share (`features.events.scan_memory`), as the
nightly does.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from configs import load_config
from features.events import connect_for_events, load_configured_events, scan_memory
from features.generator import write_dataset
from features.journey import journey_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=650_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--end", type=date.fromisoformat, default=date(2025, 9, 30))
    parser.add_argument("--data", type=Path, default=None, help="an existing data set folder")
    parser.add_argument("--repeat", type=int, default=2, help="timed repetitions of the map")
    parser.add_argument(
        "--memory-share", type=int, default=0, help="run the map under 1/N of DuckDB's limit"
    )
    parser.add_argument(
        "--statements", action="store_true", help="print the slowest statements of the last map"
    )
    args = parser.parse_args()
    config = load_config()
    scratch = Path(tempfile.mkdtemp(prefix="bench-journey-"))
    data = args.data
    if data is None:
        data = scratch / "data"
        started = time.perf_counter()
        write_dataset(data, args.clients, args.days, args.end, args.seed)
        print(f"generated in {time.perf_counter() - started:.1f} s")
    con = connect_for_events(config.features, scratch)
    started = time.perf_counter()
    report = load_configured_events(con, config, data / "events")
    print(f"events: {report.valid:,} valid, loaded in {time.perf_counter() - started:.1f} s")
    truth = pd.read_parquet(data / "truth.parquet", columns=["client_id", "persona_after"])
    members = pd.DataFrame(
        {
            "client_id": truth["client_id"],
            "segment_id": truth["persona_after"],
            "segment_name": truth["persona_after"],
        }
    )
    as_of = args.end
    floor = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        con.execute(
            "SELECT client_id, count(*), min(event_time), max(event_time),"
            " count(DISTINCT event_type), sum(sentiment) FROM events GROUP BY client_id"
        ).fetchall()
        floor.append(time.perf_counter() - started)
    times, rises = [], []
    timed = _TimedConnection(con)
    for _ in range(args.repeat):
        limit = scan_memory(con, args.memory_share) if args.memory_share else nullcontext()
        timed.seconds.clear()
        with _peak_rise() as rise, limit:
            started = time.perf_counter()
            result = journey_map(timed if args.statements else con, as_of, members, config.journey)
            times.append(time.perf_counter() - started)
        rises.append(rise[0])
    print(
        f"journey map ({config.journey.window_days}-day window, {len(set(members['segment_id']))}"
        f" segments + all): best {min(times):.1f} s of {len(times)}"
        f" ({', '.join(f'{t:.1f}' for t in times)}); rows: stages {len(result.stages)},"
        f" touchpoints {len(result.touchpoints)}, dropoffs {len(result.dropoffs)}"
    )
    print(
        f"floor (one five-aggregate group-by per client over all events): best"
        f" {min(floor):.1f} s; the map is {min(times) / min(floor):.1f}x the floor"
    )
    print(f"clients in the window: {result.summary['clients']:,.0f}")
    print(
        f"map's rise of RSS (peak while it ran minus before; memory share"
        f" {args.memory_share or 'none'}): {', '.join(f'{r:.2f}' for r in rises)} GB"
    )
    print(f"max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    if args.statements:
        print(f"statements of the last map: {sum(timed.seconds.values()):.1f} s; the slowest:")
        for sql, seconds in sorted(timed.seconds.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {seconds:6.2f} s  {sql}")


class _TimedConnection:
    """A DuckDB connection that adds up the seconds each statement takes to run (keyed by
    its first 90 characters); everything else passes through."""

    def __init__(self, con: Any) -> None:
        self._con = con
        self.seconds: dict[str, float] = {}

    def execute(self, sql: str, *args: Any) -> Any:
        started = time.perf_counter()
        result = self._con.execute(sql, *args)
        key = " ".join(sql.split())[:90]
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


@contextmanager
def _peak_rise() -> Iterator[list[float]]:
    """[GB]: this process's peak RSS during the block minus its RSS before (filled at exit)."""
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out = [0.0]
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out[0] = (max(peak[0], process.memory_info().rss) - before) / 1e9


if __name__ == "__main__":
    main()
