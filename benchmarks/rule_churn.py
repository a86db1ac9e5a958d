"""Night-to-night churn of the business segments, with and without the rules' hysteresis.

Usage: python benchmarks/rule_churn.py [--clients 20000] [--nights 14] [--seed 7]

Generates journeys, fits the clusters once, then runs the rule layer every night for
`--nights` nights before the generator's planned shift, twice: with the configured rules
(`stay_when` keeps members) and with every `stay_when` removed. Prints, per variant, the mean
number of rule-segment entries and exits per night (each one a campaign trigger) and the share
of clients whose final segment changed per night.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config
from features.events import load_events
from features.generator import write_dataset
from pipelines import steps
from segmentation.rules import rules_from_mapping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--nights", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    start = time.perf_counter()
    config = load_config()
    path = config.config_file(config.rules.file)
    raw = yaml.safe_load(Path(path).read_text())
    plain = {
        **raw,
        "segments": [{k: v for k, v in s.items() if k != "stay_when"} for s in raw["segments"]],
    }
    variants = {
        "stay_when (configured)": steps.load_ruleset(config),
        "no stay_when": rules_from_mapping(plain, source="no stay_when"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, args.clients, 365, date(2026, 6, 30), args.seed)
        truth = pd.read_parquet(Path(tmp) / "truth.parquet")
        shift = pd.Timestamp(truth["shift_date"].dropna().min()).date()
        con = duckdb.connect()
        load_events(con, str(Path(tmp) / "events"))
        first = shift - timedelta(days=args.nights + 1)
        nights = []
        for k in range(args.nights + 1):
            as_of = first + timedelta(days=k)
            features = steps.compute_features(con, as_of, config)
            btyd = steps.btyd_inputs(features)
            scores = steps.score_clients(
                steps.fit_cltv(con, as_of, btyd, config), features, config, "b"
            )
            nights.append((features, scores))
        bundle = steps.fit_clusters(nights[0][0], first, config, None, None)
    for label, rules in variants.items():
        previous, moves, rule_moves = None, [], []
        for features, scores in nights:
            seg = steps.segment_clients(features, scores, bundle, rules, "b", "b", previous)
            current = seg.membership[["client_id", "segment_id", "segment_source"]]
            if previous is not None:
                m = previous.merge(current, on="client_id", suffixes=("_prev", ""))
                changed = m["segment_id"] != m["segment_id_prev"]
                touched = (m["segment_source"] == "rule") | (m["segment_source_prev"] == "rule")
                moves.append(float(changed.mean()))
                rule_moves.append(int((changed & touched).sum()))
            previous = current
        in_rules = int((previous["segment_source"] == "rule").sum())
        print(
            f"{label}: rule entries+exits per night {np.mean(rule_moves):.0f}"
            f" (of {len(previous):,} clients, {in_rules:,} in rule segments on the last night);"
            f" clients changing segment per night {100 * np.mean(moves):.2f}%"
        )
    print(f"elapsed {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
