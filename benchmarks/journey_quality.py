"""Does the journey map find what the generator planted, where it was planted and only there?

The generator (features/generator.py, `journey_truth.json`) plants, for one persona, a drop-off
cause (a page about delivery costs before checkout, after which checkout stalls) and, for
another, a moment of truth (a call-center consultation that raises purchase conversion).
This runs the real nightly (`segmentation run`) on generated data and reads the published
journey tables: for every segment, its share of the planted persona, the rank of the planted
cause among the causes of its checkout drop-off points, and the rank of the planted moment
among the touchpoints that raise consideration -> purchase. "Found" means ranked in the top 3
with an interval that excludes no effect. Segments are behavioral, not personas: the check
is that the effect is found where the persona is concentrated and not where it is absent.

    python benchmarks/journey_quality.py --clients 20000 [--seed 7] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

from features.generator import write_dataset
from pipelines.store import open_store

TOP = 3
MIN_LOST = 30  # clients lost at checkout for a segment's causes to be judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--end", type=date.fromisoformat, default=date(2025, 9, 30))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="journey-quality-"))
    data = work / "data"
    write_dataset(data, args.clients, args.days, args.end, args.seed, overwrite=True)
    truth = json.loads((data / "journey_truth.json").read_text())
    config = work / "config.yaml"
    config.write_text(f"workdir: {work / 'run'}\nevents:\n  path: {data / 'events'}\n")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "-q", "run", "--config", str(config),
         "--as-of", args.end.isoformat()],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    print(f"nightly run: {time.perf_counter() - started:.0f} s ({args.clients:,} clients)")
    store = open_store(f"duckdb:///{work / 'run' / 'store.duckdb'}")
    membership = store.membership()[["client_id", "segment_id", "segment_name"]]
    drops = store.journey_dropoffs()
    personas = pd.read_parquet(data / "truth.parquet", columns=["client_id", "persona_after"])
    store.close()
    composition = membership.merge(personas, on="client_id")
    cause, moment = truth["dropoff"], truth["moment"]
    rows = []
    for segment_id, members in composition.groupby("segment_id"):
        rows.append(
            {
                "segment_id": segment_id,
                "clients": len(members),
                f"{cause['persona']}_share": (members["persona_after"] == cause["persona"]).mean(),
                "checkout_lost": _lost(drops, segment_id, cause["event_type"]),
                "cause_rank": _cause_rank(drops, segment_id, cause),
                f"{moment['persona']}_share": (
                    members["persona_after"] == moment["persona"]
                ).mean(),
                "moment_rank": _moment_rank(drops, segment_id, moment),
            }
        )
    table = pd.DataFrame(rows).sort_values("clients", ascending=False)
    print(f"planted cause: category {cause['cause']['category']} before {cause['event_type']}"
          f" ({cause['persona']}); planted moment: {moment['touchpoint']['event_type']}/"
          f"{moment['touchpoint']['channel']} ({moment['persona']})")  # fmt: skip
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    # a drop-off cause can only be found where clients dropped off: a segment of clients
    # active by definition (a rule on recent activity) has no stalled journeys to explain
    _verdict(table, cause["persona"], "cause_rank", table["checkout_lost"] >= MIN_LOST)
    _verdict(table, moment["persona"], "moment_rank", pd.Series(True, index=table.index))


def _lost(drops: pd.DataFrame, segment_id: str, event_type: str) -> int:
    """Clients of the segment who stalled with `event_type` as their last touchpoint."""
    mine = drops[
        (drops["segment_id"] == segment_id)
        & (drops["kind"] == "dropoff")
        & (drops["event_type"] == event_type)
    ]
    return int(mine["clients"].sum())


def _cause_rank(drops: pd.DataFrame, segment_id: str, cause: dict) -> float:
    """Best rank of the planted category among the causes of the segment's checkout points
    (found only with an interval above 1); NaN when not found."""
    mine = drops[
        (drops["segment_id"] == segment_id)
        & (drops["kind"] == "cause")
        & (drops["event_type"] == cause["event_type"])
        & (drops["factor_kind"] == "category")
        & (drops["factor"] == cause["cause"]["category"])
        & (drops["effect_low"] > 1)
    ]
    return float(mine["rank"].min()) if len(mine) else float("nan")


def _moment_rank(drops: pd.DataFrame, segment_id: str, moment: dict) -> float:
    touchpoint = f"{moment['touchpoint']['event_type']}/{moment['touchpoint']['channel']}"
    mine = drops[
        (drops["segment_id"] == segment_id)
        & (drops["kind"] == "moment")
        & (drops["stage"] == moment["stage"])
        & (drops["factor_kind"] == "raises")
        & (drops["factor"] == touchpoint)
        & (drops["effect_low"] > 0)
    ]
    return float(mine["rank"].min()) if len(mine) else float("nan")


def _verdict(table: pd.DataFrame, persona: str, column: str, judged: pd.Series) -> None:
    """Where the persona is concentrated (at least a quarter of the segment and 1.5 times its
    overall share) the effect should be found, among the `judged` segments (for a drop-off
    cause: those with lost checkouts to explain); where it is nearly absent (under 5%), it
    should not be found at all."""
    share = table[f"{persona}_share"]
    overall = (share * table["clients"]).sum() / table["clients"].sum()
    found = table[column] <= TOP
    planted = (share >= max(0.25, 1.5 * overall)) & judged
    absent = share < 0.05
    print(
        f"{column}: found in {int(found[planted].sum())} of {int(planted.sum())} segments where"
        f" {persona} is concentrated (>= {max(0.25, 1.5 * overall):.0%} of members); in"
        f" {int(found[absent].sum())} of {int(absent.sum())} segments with under 5% {persona}"
    )


if __name__ == "__main__":
    main()
