"""Segment quality on generated data: persona recovery, noise, cluster quality, shift, stability.

Usage: python benchmarks/quality_report.py [--clients 20000] [--days 365] [--seed 7]

Generates journeys with known personas and a planned shift, runs the nightly steps at a week
before the shift, the day before (refit matched to the first) and 60 days after (same model and
refit), and prints the figures of `pipelines.quality.measure_quality`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.generator import write_dataset
from pipelines.quality import measure_quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, args.clients, args.days, date(2026, 6, 30), args.seed)
        r = measure_quality(tmp, supervised_ceiling=True)
    print(f"clients generated {args.clients}, present before the shift {r.extra['clients_before']}")
    print(
        f"ARI vs persona_before: segments {r.ari_segments:.3f}, clusters only {r.ari_clusters:.3f}"
    )
    print(
        f"ceilings: true personas in place of the clusters, with the rules"
        f" {r.extra['ari_personas_with_rules']:.3f}; a supervised classifier on the clustering"
        f" features {r.extra['ari_supervised']:.3f}, with the rules"
        f" {r.extra['ari_supervised_with_rules']:.3f}"
    )
    print(f"noise share (sample) {r.noise_share:.3f}; {r.quality_metric} {r.quality}")
    print(f"clusters {r.n_clusters}, fallback {r.fallback}; sources {r.extra['segment_sources']}")
    print(f"sizes {r.sizes}")
    for night, k in r.extra["k_selection"].items():
        print(
            f"k-means {night}: k {k['kmeans_k']}, init {k['kmeans_init']}, scores {k['kmeans_k_scores']}"
        )
    print(
        f"refit stability (unshifted keep segment, 7 days apart) {r.refit_stability_unshifted:.3f};"
        f" steady (no dropout of their own either) {r.extra['refit_stability_steady']:.3f}"
    )
    for label, rates in (("same model", r.change_predict), ("refit", r.change_refit)):
        ratio = rates["shifted"] / max(rates["unshifted"], 1e-9)
        steady = rates["shifted"] / max(rates["steady"], 1e-9)
        print(
            f"changed segment by shift+60d ({label}): shifted {rates['shifted']:.3f}, "
            f"unshifted {rates['unshifted']:.3f} ({ratio:.2f}x), steady {rates['steady']:.3f}"
            f" ({steady:.2f}x)"
        )
    print(
        f"lapsers (own activity stops at the shift) out of their segment by shift+60d:"
        f" same model {r.lapse_moved['same_model']:.3f}, refit {r.lapse_moved['refit']:.3f}"
    )
    print(f"changes by segment source (share of each group): {r.extra['changes_by_source']}")
    print(f"elapsed {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
