"""How long the journey map takes on a large event set, next to a plain group-by of the same
events in the same run (the floor any per-client statistic pays).

    python benchmarks/bench_journey.py --clients 650000          # about 20M events
    python benchmarks/bench_journey.py --data DIR                # an existing write_dataset folder

Segments are the generator's personas after the shift (seven segments), standing in for the
nightly's membership. The events are loaded through the event contract into DuckDB on disk,
as the nightly does (`features.event_storage: disk`).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

from configs import load_config
from features.events import connect_for_events, load_configured_events
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
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = journey_map(con, as_of, members, config.journey)
        times.append(time.perf_counter() - started)
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
    print(f"max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
