"""Benchmark of the store: publishing 1M clients to DuckDB and to PostgreSQL.

Three publishes per backend: the first night (every client enters), the next night (5% of
clients move, 1% leave, 1% arrive) and a re-run of that night (undo, then publish again).
Targets from the issue: DuckDB under 10 s and PostgreSQL under 60 s per publish.

    /work/venv/bin/python benchmarks/bench_store.py [--clients 1000000] [--pg URL] [--backends duckdb,postgresql]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.store import PublishRequest, open_store

N_SEGMENTS = 12
LIFECYCLES = np.array(["new", "active", "at_risk", "lapsed"], dtype=object)
TARGETS = {"duckdb": 10.0, "postgresql": 60.0}


def synthetic_request(as_of: date, n: int, night: int, seed: int = 1) -> PublishRequest:
    """1M-scale request built with vectorized numpy/pandas (ids c0000000..)."""
    rng = np.random.default_rng(seed + night)
    ids = np.arange(n) + night * (n // 100)  # 1% leave at the low end, 1% arrive at the top
    segment = ids % N_SEGMENTS
    if night:
        moved = rng.random(n) < 0.05
        segment = np.where(moved, (segment + 1) % N_SEGMENTS, segment)
    client_id = pd.Series(ids).map("c{:08d}".format).astype("str")
    segment_id = pd.Series(segment).map("s{}".format).astype("str")
    membership = pd.DataFrame(
        {
            "client_id": client_id,
            "segment_id": segment_id,
            "segment_name": ("segment " + segment_id).astype("str"),
            "segment_source": np.where(segment == 0, "noise", "cluster"),
            "cluster_id": segment.astype("int32"),
            "confidence": rng.random(n),
            "lifecycle_stage": LIFECYCLES[ids % 4],
            "journey_stage": "purchase",
            "reason": "recency_days, n_purchases",
        }
    )
    segments = pd.DataFrame(
        {
            "segment_id": [f"s{k}" for k in range(N_SEGMENTS)],
            "segment_name": [f"segment s{k}" for k in range(N_SEGMENTS)],
            "kind": "cluster",
            "definition": '{"profile": "synthetic"}',
            "model_version": "1",
        }
    )
    scores = pd.DataFrame(
        {
            "client_id": client_id,
            "p_alive": rng.random(n),
            "expected_purchases": rng.random(n) * 4,
            "expected_avg_value": rng.random(n) * 90,
            "predicted_cltv": rng.random(n) * 300,
            "horizon_days": 365,
            "model_version": "1",
        }
    )
    return PublishRequest(
        run_id=f"bench-{as_of.isoformat()}-{time.time_ns()}",
        as_of=as_of,
        started_at=datetime.now(UTC),
        membership=membership,
        segments=segments,
        scores=scores,
        run_info={"events_read": 20 * n, "events_quarantined": 0},
    )


def bench(url: str, schema: str, n: int) -> list[tuple[str, float, dict]]:
    store = open_store(url, schema)
    nights = [(date(2026, 1, 1), 0, "first night"), (date(2026, 1, 2), 1, "next night")]
    results = []
    for as_of, night, label in [*nights, (date(2026, 1, 2), 1, "re-run of next night")]:
        request = synthetic_request(as_of, n, night)
        result = store.publish(request)
        results.append((label, result.seconds, result))
    store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--backends", default="duckdb,postgresql")
    args = parser.parse_args()
    backends = args.backends.split(",")

    runs = []
    if "duckdb" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"duckdb://{Path(tmp) / 'segmentation.duckdb'}"
            runs.append(("duckdb", bench(url, "segmentation", args.clients)))
    if "postgresql" in backends:
        schema = f"bench_{time.time_ns() % 10**8}"
        try:
            runs.append(("postgresql", bench(args.pg, schema, args.clients)))
        finally:
            import psycopg

            with psycopg.connect(args.pg.replace("+psycopg", ""), autocommit=True) as con:
                con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    print(f"\nstore publish benchmark, {args.clients:,} clients")
    for backend, results in runs:
        for label, seconds, result in results:
            ok = "OK" if seconds < TARGETS[backend] else "SLOW"
            print(
                f"  {backend:<10} {label:<22} {seconds:6.2f} s (target < {TARGETS[backend]:.0f} s,"
                f" {ok})  entries={result.entries:,} exits={result.exits:,}"
                f" moves={result.moves:,} history+={result.history_opened:,}"
            )
            stages = ", ".join(f"{k} {v:.2f}" for k, v in result.stage_seconds.items())
            print(f"  {'':<10} stages: {stages}")


if __name__ == "__main__":
    main()
