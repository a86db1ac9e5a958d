"""Test helper for the store: synthetic publish requests, and a publisher process to kill or poll.

Run as `python -m tests.pipelines.store_worker --url URL --schema S --dates D1,D2 ...`
from the project root; with `--pause-stage` it touches `<signal>.<as_of>` at that stage of
each publish (inside the transaction) and sleeps `--pause-seconds` there.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.store import PublishRequest, open_store

N_SEGMENTS = 6
LIFECYCLES = ("new", "active", "at_risk", "lapsed")


def make_request(
    as_of: date,
    n_clients: int = 2000,
    seed: int = 7,
    run_id: str | None = None,
    move_share: float = 0.1,
    identity: bool = False,
) -> PublishRequest:
    """A deterministic publish request for `as_of`: about `n_clients` clients drawn from a
    larger universe (so clients enter and leave), segments that move for some clients.
    `identity`: with an identity map (each client's id, and an anonymous id for every third
    client); never with merges, so history is as without it."""
    day = as_of.toordinal()
    rng = np.random.default_rng(seed * 1_000_003 + day)
    universe = int(n_clients * 1.1)
    ids = np.arange(universe)
    present = np.sort(rng.choice(ids, size=n_clients, replace=False))
    base = present % N_SEGMENTS
    moved = rng.random(n_clients) < move_share
    segment = np.where(moved, (present + day) % N_SEGMENTS, base)
    lifecycle = np.where(rng.random(n_clients) < move_share, (present + day) % 4, present % 4)
    client_id = pd.Series([f"c{i:07d}" for i in present], dtype="str")
    segment_id = pd.Series([f"s{k}" for k in segment], dtype="str")
    membership = pd.DataFrame(
        {
            "client_id": client_id,
            "segment_id": segment_id,
            "segment_name": "segment " + segment_id,
            # every source a membership publishes, outliers of a cluster included
            "segment_source": np.where(
                segment == 0, "rule", np.where(present % 7 == 0, "cluster_outlier", "cluster")
            ),
            "cluster_id": pd.array(np.where(segment == 0, -1, segment), dtype="Int32"),
            "confidence": rng.random(n_clients).round(4),
            "lifecycle_stage": [LIFECYCLES[k] for k in lifecycle],
            "journey_stage": "consideration",
            "reason": "synthetic",
        }
    )
    segments = pd.DataFrame(
        {
            "segment_id": [f"s{k}" for k in range(N_SEGMENTS)],
            "segment_name": [f"segment s{k}" for k in range(N_SEGMENTS)],
            "kind": ["rule"] + ["cluster"] * (N_SEGMENTS - 1),
            "definition": [{"k": k} for k in range(N_SEGMENTS)],
            "model_version": "1",
        }
    )
    scores = pd.DataFrame(
        {
            "client_id": client_id,
            "p_alive": rng.random(n_clients).round(4),
            "expected_purchases": rng.random(n_clients) * 3,
            "expected_avg_value": rng.random(n_clients) * 80,
            "predicted_cltv": rng.random(n_clients) * 200,
            "horizon_days": 365,
            "model_version": "1",
        }
    )
    quarantine = pd.DataFrame(
        {"reason": ["negative_amount"], "client_id": ["c9"], "amount": ["-3"], "event_time": [None]}
    )
    identity_map = None
    if identity:
        anonymous = client_id[present % 3 == 0]
        identity_map = pd.DataFrame(
            {
                "id_type": ["client_id"] * n_clients + ["anonymous_id"] * len(anonymous),
                "id_value": [*client_id, *("a-" + anonymous)],
                "person_id": [*client_id, *anonymous],
                "first_seen": datetime(as_of.year, as_of.month, as_of.day, 1),
                "last_seen": datetime(as_of.year, as_of.month, as_of.day, 23),
            }
        )
    return PublishRequest(
        run_id=run_id or f"run-{as_of.isoformat()}",
        as_of=as_of,
        started_at=datetime(as_of.year, as_of.month, as_of.day, 2, 0, tzinfo=UTC),
        membership=membership,
        segments=segments,
        scores=scores,
        quarantine=quarantine,
        run_info={"events_read": 10 * n_clients, "events_quarantined": 1, "mlflow_run_id": "m1"},
        identity_map=identity_map,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default="segmentation")
    parser.add_argument("--dates", required=True, help="comma-separated ISO dates")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pause-stage")
    parser.add_argument("--pause-seconds", type=float, default=0.0)
    parser.add_argument("--signal")
    args = parser.parse_args(argv)
    store = open_store(args.url, args.schema)

    for text in args.dates.split(","):
        as_of = date.fromisoformat(text)

        def hook(stage: str, as_of: date = as_of) -> None:
            if stage == args.pause_stage:
                if args.signal:
                    Path(f"{args.signal}.{as_of.isoformat()}").touch()
                time.sleep(args.pause_seconds)

        request = make_request(as_of, args.clients, args.seed, identity=True)
        store.publish(request, _after_stage=hook)
    store.close()


if __name__ == "__main__":
    main()
