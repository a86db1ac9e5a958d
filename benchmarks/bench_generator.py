"""Benchmark of the synthetic journey generator: events written per second and peak memory."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import date

from features.generator import DEFAULT_ROWS_PER_FILE, write_dataset


def main(argv: list[str] | None = None) -> dict:
    """Write a dataset to a temporary directory and print events, seconds, events/s, peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--end", type=date.fromisoformat, default=date(2025, 6, 30))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-generator-") as out:
        started = time.perf_counter()
        summary = write_dataset(
            out, args.clients, args.days, args.end, args.seed, rows_per_file=args.rows_per_file
        )
        seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "clients": args.clients,
        "days": args.days,
        "events": summary["events"],
        "files": summary["files"],
        "seconds": round(seconds, 2),
        "events_per_second": round(summary["events"] / seconds),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
