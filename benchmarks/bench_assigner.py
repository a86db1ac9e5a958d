"""Benchmark of the fast assigner: fit on a 20k sample, assign 1M clients, print clients/s.

Usage: python benchmarks/bench_assigner.py [--clients 1000000] [--sample 20000] [--jobs -1]

Prints the fit time, the assigner's held-out agreement with the fitted HDBSCAN labels, its
agreement with hdbscan.approximate_predict on new clients (and approximate_predict's speed),
and the assignment speed: assigner alone (transformed points) and end to end (predict on the
feature frame). CPU seconds are printed too: on a shared machine wall time includes waiting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import hdbscan
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segmentation.clustering import ClusterModel
from tests.segmentation.behavioral_data import make_behavioral_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=-1)
    parser.add_argument("--check", type=int, default=5_000, help="points for approximate_predict")
    args = parser.parse_args()

    t = time.perf_counter()
    frame = make_behavioral_frame(args.clients, seed=2024)
    print(f"data: {len(frame):,} clients x {frame.shape[1] - 2} features "
          f"({time.perf_counter() - t:.1f}s to generate)")  # fmt: skip

    t, c = time.perf_counter(), time.process_time()
    model = ClusterModel(sample_size=args.sample, n_jobs=args.jobs).fit(frame)
    m = model.metrics_
    print(
        f"fit on {m['sample_size']:,}: {time.perf_counter() - t:.1f}s wall, "
        f"{time.process_time() - c:.1f}s cpu; {m['n_clusters']} clusters, "
        f"noise {m['noise_share']:.3f}, DBCV {m['quality']}, selection {m.get('selection')}"
    )
    print(f"held-out agreement (assigner on 80% of the sample vs fitted labels): "
          f"{m['assigner_agreement']:.4f}")  # fmt: skip

    # agreement with hdbscan.approximate_predict on clients outside the sample
    outside = frame[~frame["client_id"].isin(model.sample_ids_)].head(args.check)
    Z_out = model.pipeline_.transform(outside)
    model.hdbscan_.generate_prediction_data()
    t = time.perf_counter()
    expected, _ = hdbscan.approximate_predict(model.hdbscan_, Z_out)
    ap_rate = len(Z_out) / (time.perf_counter() - t)
    got = model.assigner_.predict(Z_out)
    print(f"agreement with approximate_predict on {len(Z_out):,} new clients: "
          f"{np.mean(got == expected):.4f} (approximate_predict: {ap_rate:,.0f} clients/s)")  # fmt: skip

    Z = model.pipeline_.transform(frame)
    t, c = time.perf_counter(), time.process_time()
    model.assigner_.assign(Z)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"assigner only: {len(Z):,} clients in {wall:.2f}s -> {len(Z) / wall:,.0f} clients/s "
          f"(cpu {cpu:.2f}s, {len(Z) / cpu:,.0f} clients per cpu-second)")  # fmt: skip

    t, c = time.perf_counter(), time.process_time()
    pred = model.predict(frame)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"predict end to end: {len(pred):,} clients in {wall:.2f}s -> "
          f"{len(pred) / wall:,.0f} clients/s (cpu {cpu:.2f}s); "
          f"noise share {pred['is_noise'].mean():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
