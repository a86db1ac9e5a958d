"""Validation and `segmentation features` against plain DuckDB baselines, measured in one run.

    python benchmarks/bench_validate.py --events 20000000 [--workdir /tmp/bench-features] [--rounds 3]

The targets of issue 20 (item 4, faster on one machine), on generated events (cached in the workdir
by `bench_features.prepare_data`):

- validation (`features.events.load_configured_events` with the shipped config: typed load,
  contract checks, quarantine, dedup) at most 2x a plain typed load of the same files
  (`CREATE TABLE events AS SELECT <the contract columns, typed> FROM read_parquet(...)`);
- `segmentation features` (the command itself, in this process: validate + build + write the
  Parquet) at most 3x the plain load plus a five-aggregate group-by per client over the loaded
  table (count, min and max event_time, distinct event types, sum of sentiment: the floor of
  `bench_journey.py`).

Every step runs on a fresh DuckDB connection made as the pipeline makes it
(`features.events.connect_for_events` with the default `features` config: the events in a DuckDB
file in a scratch folder, memory_limit 2GB). Each round times the four steps one after the other
(their order alternates between rounds), so that a machine loaded by other work slows numerator
and denominator alike; the ratios are taken within each round and their median is printed, with
every round's figures, as one JSON object. `--stage-baseline` also times the plain load with the
stage and initiator columns (`bench_features._plain_load`), the table the build reads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb
from bench_features import END, _plain_load, prepare_data

from configs import EngineConfig, FeaturesConfig
from features.events import connect_for_events, load_configured_events

_STEPS = ("plain_load", "plain_load_stage", "group_by", "validate", "features_command")
FIVE_AGGREGATES = (
    "SELECT client_id, count(*), min(event_time), max(event_time), count(DISTINCT event_type),"
    " sum(sentiment) FROM events GROUP BY client_id"
)
TYPED = (
    "client_id, CAST(event_time AS TIMESTAMP) AS event_time, event_type, channel,"
    " CAST(amount AS DOUBLE) AS amount, category, CAST(sentiment AS DOUBLE) AS sentiment,"
    " CAST(event_id AS VARCHAR) AS event_id"
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--workdir", default="/tmp/bench-features")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--as-of", type=date.fromisoformat, default=END)
    parser.add_argument(
        "--stage-baseline",
        action="store_true",
        help="also time the plain load with the stage and by_client columns",
    )
    parser.add_argument("--skip-features", action="store_true", help="validation only")
    args = parser.parse_args(argv)

    data = prepare_data(Path(args.workdir), args.events) / "events"
    glob = str(data / "*.parquet")
    scratch_root = Path(args.workdir) / "bench-validate"
    shutil.rmtree(scratch_root, ignore_errors=True)
    scratch_root.mkdir(parents=True)
    steps = {
        "plain_load": lambda: _plain_typed(scratch_root, glob),
        "validate": lambda: _validate(scratch_root, data),
    }
    if args.stage_baseline:
        steps["plain_load_stage"] = lambda: _plain_stage(scratch_root, glob)
    if not args.skip_features:
        steps["features_command"] = lambda: _features(scratch_root, data, args.as_of)

    rounds = []
    for k in range(max(1, args.rounds)):
        names = list(steps) if k % 2 == 0 else list(reversed(steps))
        times: dict[str, float] = {}
        for name in names:
            result = steps[name]()
            if isinstance(result, tuple):  # the plain load and its group-by
                times[name], times["group_by"] = result
            else:
                times[name] = result
        times["ratio_validate_to_plain_load"] = times["validate"] / times["plain_load"]
        if "features_command" in times:
            floor = times["plain_load"] + times["group_by"]
            times["ratio_features_to_plain_load_plus_group_by"] = times["features_command"] / floor
        if "plain_load_stage" in times:
            times["ratio_validate_to_plain_load_stage"] = (
                times["validate"] / times["plain_load_stage"]
            )
        rounds.append({key: round(v, 3) for key, v in times.items()})
        print(json.dumps({"round": k, **rounds[-1]}), file=sys.stderr, flush=True)

    def median(key: str) -> float | None:
        values = [r[key] for r in rounds if key in r]
        return round(statistics.median(values), 2) if values else None

    result = {
        "command": "python benchmarks/bench_validate.py " + " ".join(argv or sys.argv[1:]),
        "events": _count(glob),
        "rounds": len(rounds),
        "ratio_validate_to_plain_load": median("ratio_validate_to_plain_load"),
        "target_validate": 2.0,
        "ratio_features_to_plain_load_plus_group_by": median(
            "ratio_features_to_plain_load_plus_group_by"
        ),
        "target_features": 3.0,
        "ratio_validate_to_plain_load_stage": median("ratio_validate_to_plain_load_stage"),
        "median_s": {key: median(key) for key in _STEPS if median(key) is not None},
        "per_round": rounds,
        "storage": FeaturesConfig().event_storage,
        "memory_limit": FeaturesConfig().memory_limit,
        "load_average": os.getloadavg(),
        "data": str(data),
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(scratch_root, ignore_errors=True)
    return result


@contextlib.contextmanager
def _connection(root: Path):
    """A connection as the pipeline makes one, in a fresh scratch folder removed afterwards."""
    scratch = Path(tempfile.mkdtemp(dir=root))
    con = connect_for_events(FeaturesConfig(), scratch)
    try:
        yield con
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _plain_typed(root: Path, glob: str) -> tuple[float, float]:
    """The plain typed load, then the five-aggregate group-by over the loaded table."""
    with _connection(root) as con:
        con.execute("SET TimeZone = 'UTC'")  # as load_events sets it
        t0 = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TABLE events AS SELECT {TYPED} FROM read_parquet('{glob}')")
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        con.sql(FIVE_AGGREGATES).to_arrow_table()
        return load, time.perf_counter() - t0


def _plain_stage(root: Path, glob: str) -> float:
    with _connection(root) as con:
        con.execute("SET TimeZone = 'UTC'")
        t0 = time.perf_counter()
        _plain_load(con, glob)
        return time.perf_counter() - t0


def _validate(root: Path, data: Path) -> float:
    with _connection(root) as con:
        t0 = time.perf_counter()
        load_configured_events(con, EngineConfig(), data)
        return time.perf_counter() - t0


def _features(root: Path, data: Path, as_of: date) -> float:
    """`segmentation features` in this process, in a fresh working folder (the default config's
    work directory is ./segmentation-work)."""
    from pipelines.cli import main as cli

    work = Path(tempfile.mkdtemp(dir=root))
    here = Path.cwd()
    os.chdir(work)
    try:
        argv = ["features", "--events", str(data), "--as-of", as_of.isoformat()]
        argv += ["--out", str(work / "features.parquet")]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli(argv)
        elapsed = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"segmentation features failed with exit code {code}")
        return elapsed
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)


def _count(glob: str) -> int:
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0]


if __name__ == "__main__":
    main()
