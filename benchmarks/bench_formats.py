"""Benchmark of `validate` (features.events.load_events) by input format, on the same events.

    python benchmarks/bench_formats.py --events 2000000 [--workdir /tmp/bench-formats] [--repeat 3]

Writes the same synthetic events (contract columns, a few bad rows) as Parquet, CSV, gzipped
CSV, zstd CSV, JSON lines and gzipped JSON lines (DuckDB's COPY), loads each with
`load_events` into an in-memory connection, and prints one JSON object: the median seconds per
format, its ratio to Parquet, and the rows/valid counts (equal across formats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.events import load_events

FORMATS = {
    "parquet": ("events.parquet", "FORMAT parquet"),
    "csv": ("events.csv", "FORMAT csv, HEADER true"),
    "csv.gz": ("events.csv.gz", "FORMAT csv, HEADER true, COMPRESSION gzip"),
    "csv.zst": ("events.csv.zst", "FORMAT csv, HEADER true, COMPRESSION zstd"),
    "jsonl": ("events.jsonl", "FORMAT json"),
    "jsonl.gz": ("events.jsonl.gz", "FORMAT json, COMPRESSION gzip"),
}
TYPES = ["page_view", "product_view", "add_to_cart", "checkout_start", "purchase", "login"]


def write(workdir: Path, events: int) -> None:
    con = duckdb.connect()
    types = "[" + ", ".join(f"'{t}'" for t in TYPES) + "]"
    con.execute(
        f"""CREATE TABLE e AS SELECT
            'c' || (i % {max(events // 40, 1)}) AS client_id,
            strftime(TIMESTAMP '2024-01-01' + to_seconds(i % 31536000), '%Y-%m-%dT%H:%M:%SZ')
                AS event_time,
            {types}[1 + i % {len(TYPES)}] AS event_type,
            ['web', 'app', 'email'][1 + i % 3] AS channel,
            CASE WHEN i % {len(TYPES)} = 4 THEN round((i % 1000) / 7.0, 2) END AS amount,
            'cat' || (i % 17) AS category,
            CASE WHEN i % 1000 = 0 THEN 'x' ELSE 'e' || i END AS event_id
        FROM range({events}) t(i)"""
    )
    for name, options in FORMATS.values():
        target = workdir / name
        if not target.exists():
            con.execute(f"COPY e TO '{target}' ({options})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--workdir", default="/tmp/bench-formats")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(args.workdir) / str(args.events)
    workdir.mkdir(parents=True, exist_ok=True)
    write(workdir, args.events)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    result: dict[str, dict[str, float | int]] = {}
    for fmt, (name, _) in FORMATS.items():
        times = []
        for _ in range(args.repeat):
            con = duckdb.connect()
            start = time.perf_counter()
            report = load_events(con, workdir / name, now=now)
            times.append(time.perf_counter() - start)
            con.close()
        result[fmt] = {
            "seconds": round(statistics.median(times), 3),
            "rows": report.rows,
            "valid": report.valid,
        }
    base = float(result["parquet"]["seconds"])
    for fmt in result:
        result[fmt]["vs_parquet"] = round(float(result[fmt]["seconds"]) / base, 2)
    print(json.dumps({"events": args.events, "formats": result}, indent=1))


if __name__ == "__main__":
    main()
