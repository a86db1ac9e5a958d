"""Benchmark of the feature build on generated events: speed against bare DuckDB scans, and memory.

    python benchmarks/bench_features.py --events 20000000 [--workdir /tmp/bench-features]
    python benchmarks/bench_features.py --events 20000000 --order time  # time-ordered copy
    python benchmarks/bench_features.py --events 20000000 --matrix   # all four runs below

Generates (or reuses) a dataset of about `--events` events with `features.generator.write_dataset`
(falling back to a numpy synthetic of the contract shape if the generator is missing). The
generator writes events grouped by client, which makes scans by client unusually cache-friendly;
`--order time` runs on a copy sorted by event_time (written once into the workdir), the order in
which production event logs arrive, clients interleaved.

In one process and one run, over the same Parquet files, it times: the load (a plain CREATE TABLE
AS over the Parquet files, or with --validate `features.events.load_events` with its checks) and
the feature build, first, so that the process's peak memory until then is theirs; then the bare
scan `SELECT client_id, count(*) ... GROUP BY 1`; the same with a few aggregates (count,
sum(amount), max(event_time)); the floor, a scan by client that reads every column the build reads
with one trivial aggregate each (`max`, which looks at every value, and `count`, which may not);
and the bare scan and the floor again over the loaded `events` table (what the build actually
scans). Each scan and the build run `--repeat` times and the medians are printed, with the build's
events/s, its ratio to each baseline, the time of each build step and the peak resident memory
(process, and sampled during load and builds) as one JSON object. As the nightly pipeline does, the
events go to a DuckDB file in a scratch folder under the workdir (`--storage memory` for an
in-memory table) and DuckDB's memory_limit is `features.memory_limit` (`--memory-limit`, 'none' for
no limit). `--matrix` runs the four combinations (plain / load_events x disk / memory) each in its
own process, so each peak is its own, and prints them together. The ratios of issue 20's targets
(validation against a plain typed load, `segmentation features` against a plain load plus a
five-aggregate group-by) are printed by `benchmarks/bench_validate.py`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from configs import FeaturesConfig
from features.build import _TEMP_PREFIX, _Plan, build_features
from features.events import connect_duckdb, load_events, load_taxonomy

END = date(2025, 6, 30)
DAYS = 730


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--workdir", default="/tmp/bench-features")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument(
        "--memory-limit",
        default=FeaturesConfig().memory_limit,
        help="DuckDB memory_limit (default: the pipeline's features.memory_limit); 'none' for none",
    )
    parser.add_argument(
        "--storage",
        choices=("disk", "memory"),
        default="disk",
        help="disk: events in a DuckDB file in the workdir, as the nightly pipeline keeps them;"
        " memory: an in-memory table",
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="load with features.events.load_events (validation, quarantine) instead of a plain"
        " CREATE TABLE AS over read_parquet",
    )
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="run plain load and load_events, each without and with --memory-limit (default 2GB),"
        " in separate processes, and print all four results",
    )
    parser.add_argument(
        "--order",
        choices=("client", "time"),
        default="client",
        help="client: the generator's files (grouped by client); time: a copy sorted by time",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scan and build")
    parser.add_argument("--no-steps", action="store_true", help="skip the per-step re-timing")
    args = parser.parse_args(argv)

    data = prepare_data(Path(args.workdir), args.events)
    if args.order == "time":
        data = time_ordered(data)
    if args.matrix:
        return _matrix(args)
    glob = str(data / "events" / "*.parquet")
    spill = Path(args.workdir) / "duckdb_tmp"
    shutil.rmtree(spill, ignore_errors=True)
    spill.mkdir(parents=True)
    limit = None if args.memory_limit.lower() == "none" else args.memory_limit
    database = spill / "events.duckdb" if args.storage == "disk" else None
    con = connect_duckdb(limit, spill, database=database)
    source = f"read_parquet('{glob}')"
    repeat = max(1, args.repeat)
    # Load and build first, so that the peak memory of the process up to then is theirs alone.
    load_peak = _PeakRss()
    t0 = time.perf_counter()
    if args.validate:
        load_events(con, data / "events", future_tolerance_hours=24 * 365 * 10)
    else:
        _plain_load(con, glob)
    load = time.perf_counter() - t0
    load_peak.stop()
    n_events = con.sql("SELECT count(*) FROM events").fetchall()[0][0]

    build_peak = _PeakRss()
    builds = []
    for _ in range(repeat):
        table = None  # the previous result is freed before the next build
        t0 = time.perf_counter()
        table = build_features(con, END, shards=args.shards)
        builds.append(time.perf_counter() - t0)
    build_peak.stop()
    build = statistics.median(builds)
    peak_load_build = _maxrss_gb()

    # The client count; untimed, it also warms the file cache for the timed scans below.
    clients = con.sql(f"SELECT client_id, count(*) FROM {source} GROUP BY 1").to_arrow_table()
    bare = _median_time(con, _bare_sql(source), repeat)
    bare_aggs = _median_time(
        con,
        f"SELECT client_id, count(*), sum(amount), max(event_time) FROM {source} GROUP BY 1",
        repeat,
    )
    floor_pq = _median_time(con, _floor_sql(source, "max"), repeat)
    floor_pq_count = _median_time(con, _floor_sql(source, "count"), repeat)
    bare_table = _median_time(con, _bare_sql("events"), repeat)
    floor_table = _median_time(con, _floor_sql("events", "max", stage=True), repeat)
    floor_table_count = _median_time(con, _floor_sql("events", "count", stage=True), repeat)

    steps = {} if args.no_steps else _step_times(con)
    result = {
        "events": n_events,
        "clients": clients.num_rows,
        "feature_rows": table.num_rows,
        "feature_columns": table.num_columns,
        "order": args.order,
        "repeat": repeat,
        "bare_scan_s": round(bare, 3),
        "bare_scan_aggs_s": round(bare_aggs, 3),
        "floor_parquet_s": round(floor_pq, 3),
        "floor_parquet_count_s": round(floor_pq_count, 3),
        "bare_scan_table_s": round(bare_table, 3),
        "floor_table_s": round(floor_table, 3),
        "floor_table_count_s": round(floor_table_count, 3),
        "load_s": round(load, 2),
        "build_s": round(build, 2),
        "build_runs_s": [round(b, 2) for b in builds],
        "build_events_per_s": round(n_events / build),
        "ratio_build_to_bare": round(build / bare, 1),
        "ratio_build_to_bare_aggs": round(build / bare_aggs, 1),
        "ratio_build_to_floor_parquet": round(build / floor_pq, 1),
        "ratio_build_to_floor_table": round(build / floor_table, 1),
        "ratio_floor_parquet_to_bare": round(floor_pq / bare, 1),
        "ratio_load_plus_build_to_bare": round((load + build) / bare, 1),
        "load": "load_events" if args.validate else "create table as read_parquet",
        "memory_limit": limit,
        "storage": args.storage,
        "peak_rss_during_load_gb": round(load_peak.peak / 1024**3, 2),
        "rss_before_build_gb": round(build_peak.start / 1024**3, 2),
        "peak_rss_during_build_gb": round(build_peak.peak / 1024**3, 2),
        "peak_rss_load_and_build_gb": round(peak_load_build, 2),
        "peak_rss_process_gb": round(_maxrss_gb(), 2),
        "build_steps_s": steps,
        "shards": args.shards,
        "data": str(data),
    }
    print(json.dumps(result, indent=2))
    return result


def _matrix(args: argparse.Namespace) -> dict:
    """The four runs (plain/load_events x disk/memory storage), each in a fresh process."""
    results = {}
    for validate in (False, True):
        for storage in ("disk", "memory"):
            cmd = [sys.executable, __file__, "--events", str(args.events)]
            cmd += ["--workdir", args.workdir, "--shards", str(args.shards), "--no-steps"]
            cmd += ["--order", args.order, "--repeat", str(args.repeat)]
            cmd += ["--memory-limit", args.memory_limit, "--storage", storage]
            cmd += ["--validate"] if validate else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[f"{'load_events' if validate else 'plain'}/{storage}"] = json.loads(out)
    keys = ("bare_scan_s", "bare_scan_aggs_s", "floor_parquet_s", "floor_table_s", "load_s",
            "build_s", "build_events_per_s", "ratio_build_to_bare", "ratio_build_to_bare_aggs",
            "ratio_build_to_floor_parquet", "ratio_build_to_floor_table",
            "peak_rss_during_load_gb", "peak_rss_during_build_gb",
            "peak_rss_load_and_build_gb")  # fmt: skip
    summary = {k: {key: r[key] for key in keys} for k, r in results.items()}
    print(json.dumps(summary, indent=2))
    return summary


def prepare_data(workdir: Path, n_events: int) -> Path:
    """A dataset of about n_events events under workdir (reused when already there)."""
    data = workdir / f"events-{n_events}"
    if (data / "events").exists():
        return data
    try:
        from features.generator import generate, write_dataset
    except ImportError:  # the generator is not there: a numpy synthetic of the contract shape
        _synthetic(data / "events", n_events)
        return data
    pilot, _ = generate(clients=2000, days=DAYS, end=END, seed=1)
    clients = max(1, round(n_events / (pilot.num_rows / 2000)))
    write_dataset(data, clients=clients, days=DAYS, end=END, seed=42, overwrite=True)
    return data


def time_ordered(data: Path) -> Path:
    """A copy of the dataset's events sorted by event_time (written once, then reused).

    Same files count, row-group size and compression as the generator's, so only the order differs.
    """
    out = data.with_name(data.name + "-time")
    if (out / "events").exists():
        return out
    tmp = out / "events.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    files = sorted((data / "events").glob("*.parquet"))
    per_file = -(-sum(pq.ParquetFile(f).metadata.num_rows for f in files) // len(files))
    con = duckdb.connect()
    reader = con.sql(
        f"SELECT * FROM read_parquet('{data / 'events' / '*.parquet'}')"
        " ORDER BY event_time, event_id"
    ).fetch_record_batch(100_000)
    writer, written, k = None, 0, 0
    for batch in reader:
        while batch.num_rows:
            if writer is None:
                writer = pq.ParquetWriter(
                    tmp / f"part-{k:05d}.parquet", batch.schema, compression="zstd"
                )
            take = batch.slice(0, per_file - written)
            writer.write_batch(take, row_group_size=1024**2)
            written += take.num_rows
            batch = batch.slice(take.num_rows)
            if written == per_file:
                writer.close()
                writer, written, k = None, 0, k + 1
    if writer is not None:
        writer.close()
    tmp.rename(out / "events")
    return out


def _bare_sql(source: str) -> str:
    return f"SELECT client_id, count(*) FROM {source} GROUP BY client_id"


def _floor_sql(source: str, agg: str, stage: bool = False) -> str:
    """A scan by client reading every column the build reads, one trivial aggregate each."""
    cols = ["event_time", "event_type", "channel", "amount", "category", "sentiment"]
    cols += ["stage"] if stage else []
    aggs = ", ".join(f"{agg}({c})" for c in cols)
    return f"SELECT client_id, count(*), {aggs} FROM {source} GROUP BY client_id"


def _median_time(con: duckdb.DuckDBPyConnection, sql: str, repeat: int) -> float:
    """Median wall time of `repeat` runs of a query, its result fetched as Arrow."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        con.sql(sql).to_arrow_table()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _synthetic(out: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    types = np.array(
        ["page_view", "product_view", "search", "add_to_cart", "checkout_start", "purchase",
         "login", "support_ticket", "return", "refund", "review", "referral", "share"]
    )  # fmt: skip
    weights = np.array([30, 25, 10, 6, 3, 3, 12, 2, 1, 0.5, 1, 0.3, 1.0])
    clients = n // 43
    out.mkdir(parents=True, exist_ok=True)
    kind = rng.choice(len(types), n, p=weights / weights.sum())
    money = np.isin(types[kind], ["purchase", "return", "refund"])
    table = pa.table(
        {
            "client_id": np.char.add("c", rng.integers(0, clients, n).astype(str)),
            "event_time": (
                np.datetime64(f"{END}T23:59:59", "s") - rng.integers(0, DAYS * 86400, n)
            ),
            "event_type": types[kind],
            "channel": rng.choice(["web", "app", "email", "store"], n),
            "amount": np.where(money, rng.gamma(2, 30, n), np.nan),
            "category": rng.choice([f"cat{i}" for i in range(12)], n),
            "sentiment": np.where(rng.random(n) < 0.05, rng.uniform(-1, 1, n), np.nan),
        }
    )
    pq.write_table(table, out / "part-00000.parquet", row_group_size=1_000_000)


def _plain_load(con: duckdb.DuckDBPyConnection, glob: str) -> None:
    """The events table straight from Parquet (stage and initiator from the default taxonomy),
    no checks."""
    taxonomy = load_taxonomy()
    cases = " ".join(f"WHEN '{t}' THEN '{s}'" for t, s in taxonomy.stage_of.items())
    brand = ", ".join(f"'{t}'" for t in taxonomy.brand_types) or "NULL"
    con.execute(
        f"""CREATE OR REPLACE TABLE events AS
        SELECT client_id, CAST(event_time AS TIMESTAMP) AS event_time, event_type,
               CASE event_type {cases} ELSE 'other' END AS stage, channel,
               CAST(amount AS DOUBLE) AS amount, category, CAST(sentiment AS DOUBLE) AS sentiment,
               CAST(event_id AS VARCHAR) AS event_id,
               coalesce(event_type NOT IN ({brand}), true) AS by_client
        FROM read_parquet('{glob}')"""
    )


def _step_times(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Time each build step once more, to show where the time goes."""
    plan = _Plan(END, FeaturesConfig(), "events", 0, 1)
    steps = {}
    try:
        for name, sql in plan.pieces():
            t0 = time.perf_counter()
            con.execute(f"CREATE OR REPLACE TEMP TABLE {_TEMP_PREFIX}{name} AS {sql}")
            steps[name] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        con.sql(plan.final_sql()).to_arrow_table()
        steps["per_client"] = round(time.perf_counter() - t0, 2)
    finally:
        for name, _ in plan.pieces():
            con.execute(f"DROP TABLE IF EXISTS {_TEMP_PREFIX}{name}")
    return steps


def _maxrss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class _PeakRss:
    """Samples the process's resident memory every 50 ms until stopped."""

    def __init__(self) -> None:
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.05)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


if __name__ == "__main__":
    main()
