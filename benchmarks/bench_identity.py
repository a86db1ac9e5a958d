"""Benchmark of identity stitching: speed, memory and recovery of planted persons.

    python benchmarks/bench_identity.py --events 20000000 --persons 1000000
    python benchmarks/bench_identity.py --generator --clients 20000   # the journey generator

Without `--generator`, writes (or reuses, under `--workdir`) a numpy synthetic of the issue's
shape: `--persons` persons, about `--events` events with three identifiers each. Every person
has one to three devices, each with one to four cookies over time; a share never logs in; a
logged-in session carries client_id + device + cookie, an anonymous one device + cookie, an
email click the email hash + cookie, a store purchase the phone hash, which the links file
ties to the client. Planted traps: shared devices (two persons log in on one device) and a
call-center default email on `--trap-size` persons. With `--generator`, the data set comes from
`features.generator.write_dataset(..., identities=True)` instead.

In one process it loads the events into a DuckDB file (as the nightly run does), then times
`features.identity.stitch_events` alone, and prints one JSON object: the seconds of load and
stitching (and of each stitching stage), the peak resident memory (sampled per phase, and the
kernel's high-water mark up to the end of stitching), the persons and identifiers found, and the
recovery against the planted truth: the share of true persons whose identifiers all map to one
person id holding nobody else's (recovered), the number of person ids holding identifiers of
two or more true persons (false merges), and whether every trap identifier was quarantined.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from configs import IdentityConfig
from features.events import connect_duckdb, load_events
from features.identity import stitch_events

END = date(2025, 6, 30)
DAYS = 365
DAY_US = 86_400_000_000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--trap-size", type=int, default=500)
    parser.add_argument("--generator", action="store_true")
    parser.add_argument("--clients", type=int, default=20_000, help="with --generator")
    parser.add_argument("--workdir", default="/tmp/bench-identity")
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    work = Path(args.workdir)
    data = _dataset(args, work)
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    sampler = _PeakSampler()
    con = connect_duckdb(args.memory_limit, scratch, database=scratch / "events.duckdb")
    started = time.perf_counter()
    report = load_events(con, data["events"], now=pd.Timestamp(END).to_pydatetime())
    loaded = time.perf_counter() - started
    load_peak = sampler.peak_and_reset()
    started = time.perf_counter()
    stitching = stitch_events(con, END, IdentityConfig(), links_path=data["links"])
    seconds = time.perf_counter() - started
    stitch_peak = sampler.peak_and_reset()
    sampler.stop()
    # The kernel's high-water mark of the process up to here (load and stitching), which a
    # 50 ms sampler can miss; the truth comparison below is the benchmark's own and costs more.
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    recovery = _recovery(stitching.identity_map.to_pandas(), pd.read_parquet(data["truth"]))
    result = {
        "events": report.rows,
        "valid": report.valid,
        "load_seconds": round(loaded, 1),
        "stitch_seconds": round(seconds, 1),
        "peak_rss_gb_load": round(load_peak / 1e9, 2),
        "peak_rss_gb_stitch": round(stitch_peak / 1e9, 2),
        "max_rss_gb_through_stitch": round(max_rss / 1e9, 2),
        "events_per_second": round(report.valid / seconds),
        **{k: v for k, v in stitching.summary.items() if k != "links"},
        **recovery,
    }
    con.close()
    print(json.dumps(result))
    return result


def _recovery(identity_map: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Recovered persons, false merges and trap handling against the planted truth."""
    found = truth.merge(identity_map, on=["id_type", "id_value"], how="left", suffixes=("_x", "_y"))
    traps = found[found["trap"]]
    real = found[~found["trap"]]
    per_true = real.groupby("person_id_x")["person_id_y"].agg(["nunique", "count", "size"])
    whole = (per_true["nunique"] == 1) & (per_true["count"] == per_true["size"])
    per_found = real.dropna(subset=["person_id_y"]).groupby("person_id_y")["person_id_x"].nunique()
    false_merges = int((per_found > 1).sum())
    # A recovered person: all its identifiers on one found id, and that id holds nobody else.
    clean_ids = set(per_found[per_found == 1].index)
    first_found = real.groupby("person_id_x")["person_id_y"].first()
    recovered = whole & first_found.reindex(per_true.index).isin(clean_ids)
    return {
        "true_persons": len(per_true),
        "recovered_share": round(float(recovered.mean()), 5) if len(per_true) else None,
        "false_merges": false_merges,
        "trap_identifiers": len(traps),
        "traps_quarantined": int(traps["person_id_y"].isna().sum()),
    }


def _dataset(args: argparse.Namespace, work: Path) -> dict[str, str]:
    if args.generator:
        from features.generator import write_dataset

        out = work / f"generator-{args.clients}-{args.seed}"
        if not (out / "identity_truth.parquet").exists():
            write_dataset(out, args.clients, DAYS, END, args.seed, identities=True, overwrite=True)
        return {
            "events": str(out / "events"),
            "links": str(out / "identity_links.parquet"),
            "truth": str(out / "identity_truth.parquet"),
        }
    out = work / f"synthetic-{args.persons}-{args.events}-{args.seed}"
    if not (out / "truth.parquet").exists():
        out.mkdir(parents=True, exist_ok=True)
        _synthetic(out, args.persons, args.events, args.trap_size, args.seed)
    return {
        "events": str(out / "events.parquet"),
        "links": str(out / "links.parquet"),
        "truth": str(out / "truth.parquet"),
    }


def _synthetic(out: Path, persons: int, events: int, trap_size: int, seed: int) -> None:
    """Events with three identifiers each, the links file and the truth (see the docstring)."""
    rng = np.random.default_rng(seed)
    n_dev = rng.integers(1, 4, persons)
    dev_owner = np.repeat(np.arange(persons), n_dev)
    n_cookie = rng.integers(1, 5, dev_owner.size)
    cookie_dev = np.repeat(np.arange(dev_owner.size), n_cookie)
    logs_in = rng.random(persons) > 0.12
    login_day = rng.uniform(0, DAYS, persons)
    # Events: each picks a person, then a cookie of one of the person's devices.
    person = rng.integers(0, persons, events)
    t = rng.uniform(0, DAYS, events)
    first_dev = np.r_[0, np.cumsum(n_dev)[:-1]]
    dev = first_dev[person] + (rng.random(events) * n_dev[person]).astype(np.int64)
    first_cookie = np.r_[0, np.cumsum(n_cookie)[:-1]]
    # cookies rotate over the year: the cookie index follows the time
    cookie = first_cookie[dev] + np.minimum(
        (t / DAYS * n_cookie[dev]).astype(np.int64), n_cookie[dev] - 1
    )
    kind = rng.random(events)
    logged = logs_in[person] & (t >= login_day[person]) & (kind < 0.6)
    email = kind >= 0.92
    store = (kind >= 0.88) & (kind < 0.92) & logs_in[person]
    # Every device is used logged-in at least once by a person who logs in, and every
    # never-logged-in person clicks an email on each device: no person is split by design.
    per_dev = np.arange(dev_owner.size)
    extra_t = np.full(per_dev.size, DAYS - 0.5)
    extra_cookie = first_cookie[per_dev] + n_cookie[per_dev] - 1
    person = np.r_[person, dev_owner[per_dev]]
    t = np.r_[t, extra_t]
    dev = np.r_[dev, per_dev]
    cookie = np.r_[cookie, extra_cookie]
    logged = np.r_[logged, logs_in[dev_owner[per_dev]]]
    email = np.r_[email, ~logs_in[dev_owner[per_dev]]]
    store = np.r_[store, np.zeros(per_dev.size, bool)]
    pid = np.char.add("c", person.astype(str))
    client = np.where(logged & ~email & ~store, pid, None)
    anon = np.where(store, None, np.char.add("a", cookie.astype(str)))
    device = np.where(store, None, np.char.add("d", dev.astype(str)))
    email_hash = np.where(email, np.char.add("e", person.astype(str)), None)
    phone_hash = np.where(store, np.char.add("p", person.astype(str)), None)
    traps = _traps(rng, persons, logs_in, trap_size)
    # shared devices: the second person logs in on the first's device
    a_dev = first_dev[traps["shared_a"]]
    share = pd.DataFrame(
        {
            "client_id": np.r_[
                np.char.add("c", traps["shared_a"].astype(str)),
                np.char.add("c", traps["shared_b"].astype(str)),
            ],
            "anonymous_id": np.r_[
                np.char.add("sa", traps["shared_a"].astype(str)),
                np.char.add("sb", traps["shared_b"].astype(str)),
            ],
            "device_id": np.r_[
                np.char.add("d", a_dev.astype(str)), np.char.add("d", a_dev.astype(str))
            ],
        }
    )
    call = traps["call_center"]
    frame = pd.DataFrame(
        {
            "client_id": client,
            "anonymous_id": anon,
            "device_id": device,
            "email_hash": email_hash,
            "phone_hash": phone_hash,
            "t": t,
        }
    )
    extra = pd.concat(
        [
            share.assign(t=DAYS - 1.0),
            pd.DataFrame(
                {
                    "email_hash": "callcenter-default",
                    "phone_hash": np.char.add("p", call.astype(str)),
                    "client_id": np.char.add("c", call.astype(str)),
                    "t": DAYS - 2.0,
                }
            ),
        ]
    )
    frame = pd.concat([frame, extra], ignore_index=True)
    start_us = (pd.Timestamp(END) - pd.Timedelta(days=DAYS - 1)).value // 1000
    frame["event_time"] = pd.to_datetime(
        start_us + (frame.pop("t").to_numpy() * DAY_US).astype(np.int64), unit="us", utc=True
    )
    frame["event_type"] = "page_view"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out / "events.parquet")
    logged_persons = np.flatnonzero(logs_in)
    links = pd.DataFrame(
        {
            "id_type": "phone_hash",
            "id_value": np.char.add("p", logged_persons.astype(str)),
            "client_id": np.char.add("c", logged_persons.astype(str)),
        }
    )
    links.to_parquet(out / "links.parquet")
    _truth(out, frame, links, dev_owner, cookie_dev, traps)


def _traps(rng: np.random.Generator, persons: int, logs_in: np.ndarray, size: int) -> dict:
    logged = np.flatnonzero(logs_in)
    pairs = max(1, persons // 2000)
    chosen = rng.choice(logged, size=2 * pairs + min(size, logged.size // 4), replace=False)
    return {
        "shared_a": chosen[:pairs],
        "shared_b": chosen[pairs : 2 * pairs],
        "call_center": chosen[2 * pairs :],
    }


def _truth(
    out: Path,
    frame: pd.DataFrame,
    links: pd.DataFrame,
    dev_owner: np.ndarray,
    cookie_dev: np.ndarray,
    traps: dict,
) -> None:
    """Every identifier seen (events or links) with its true person; traps flagged."""

    def named(prefix: str, numbers: np.ndarray, owners: np.ndarray, id_type: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "id_type": id_type,
                "id_value": np.char.add(prefix, numbers.astype(str)),
                "person_id": np.char.add("c", owners.astype(str)),
            }
        )

    persons = np.arange(dev_owner.max() + 1)
    shared = np.r_[traps["shared_a"], traps["shared_b"]]
    truth = pd.concat(
        [
            named("c", persons, persons, "client_id"),
            named("e", persons, persons, "email_hash"),
            named("p", persons, persons, "phone_hash"),
            named("d", np.arange(dev_owner.size), dev_owner, "device_id"),
            named("a", np.arange(cookie_dev.size), dev_owner[cookie_dev], "anonymous_id"),
            named("sa", traps["shared_a"], traps["shared_a"], "anonymous_id"),
            named("sb", traps["shared_b"], traps["shared_b"], "anonymous_id"),
            pd.DataFrame(
                {"id_type": ["email_hash"], "id_value": ["callcenter-default"], "person_id": [None]}
            ),
        ],
        ignore_index=True,
    )
    shared_devices = {
        f"d{d}"
        for d in np.r_[0, np.cumsum(np.bincount(dev_owner))[:-1]][shared[: shared.size // 2]]
    }
    truth["trap"] = (truth["id_value"] == "callcenter-default") | (
        (truth["id_type"] == "device_id") & truth["id_value"].isin(shared_devices)
    )
    truth.loc[truth["trap"], "person_id"] = None
    seen = pd.concat(
        [
            frame[c].dropna().drop_duplicates().to_frame("id_value").assign(id_type=c)
            for c in ("client_id", "anonymous_id", "device_id", "email_hash", "phone_hash")
        ]
        + [
            links[["id_type", "id_value"]],
            links[["client_id"]]
            .rename(columns={"client_id": "id_value"})
            .assign(id_type="client_id"),
        ]
    ).drop_duplicates()
    truth = truth.merge(seen, on=["id_type", "id_value"])
    truth.to_parquet(out / "truth.parquet")


class _PeakSampler:
    """Samples this process's resident memory every 50 ms; reports the peak since reset."""

    def __init__(self) -> None:
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, _rss())

    def peak_and_reset(self) -> int:
        peak = max(self._peak, _rss())
        self._peak = 0
        return peak

    def stop(self) -> None:
        self._stop.set()


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


if __name__ == "__main__":
    main(sys.argv[1:])
