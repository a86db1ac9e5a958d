"""The `segmentation` command line: demo, generate, validate, features, run, backfill, serve, report, models.

Every command exits 0 on success and non-zero with a one-line reason on stderr on failure.
An engine error (`configs.SegmentationError`: bad input, config, store, model) is the whole
story in that line; any other exception is a bug, so its line names the exception type and
says that `-v` shows the traceback. Heavy imports (Prefect, MLflow, hdbscan, scikit-learn)
happen inside the commands that need them, so `segmentation validate` stays quick.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from configs import IDENTIFIER_COLUMNS, EngineConfig, SegmentationError, load_config

__all__ = ["CommandLineError", "main"]

VERBOSE_HINT = "(unexpected error: run again with -v to see the traceback)"


class CommandLineError(SegmentationError, ValueError):
    """Arguments that parse but do not fit together (an --end before --start, a missing
    VERSION); the message names them."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script `segmentation`.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: `sys.argv[1:]`).

    Returns
    -------
    int
        The exit code: 0 on success; 1 after a failure, reported as one line on stderr
        (for an exception that is not a `SegmentationError`, the line names its type and
        says that `-v` shows the traceback; with `-v` the traceback is logged); 130 when
        interrupted. Argument errors exit with 2 (argparse).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_libraries(args.verbose)
    logging.basicConfig(
        level=logging.WARNING if not args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("segmentation: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line on stderr, whatever failed
        if args.verbose:
            logging.exception("command failed")
        line = _one_line(exc, args.verbose)
        print(f"segmentation {args.command}: error: {line}", file=sys.stderr)
        # Drop the frames that still hold open DuckDB connections, so they close now
        # rather than being reported as leaked at interpreter exit.
        traceback.clear_frames(exc.__traceback__)
        del exc
        gc.collect()
        return 1


def _one_line(exc: Exception, verbose: bool) -> str:
    """The error as one line: an engine error's message; for anything else (a bug), the
    exception type too and, without -v, the hint that -v shows the traceback."""
    from pipelines.store import mask_url  # only on the way out: keeps the commands' imports light

    message = " ".join(mask_url(str(exc)).split())  # no URL password, whatever raised it
    if isinstance(exc, SegmentationError):
        return message or type(exc).__name__
    line = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return line if verbose else f"{line} {VERBOSE_HINT}"


def _quiet_libraries(verbose: bool) -> None:
    """Prefect and MLflow log freely; without --verbose only our one-line outcome shows."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "CRITICAL")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        logging.getLogger("alembic").setLevel(logging.ERROR)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmentation",
        description="Dynamic behavioral segments and CLTV from customer-journey events.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate data and run everything on embedded defaults")
    p.add_argument("--workdir", default="./segmentation-work", help="where to put everything")
    p.add_argument("--clients", type=int, default=20_000, help="synthetic clients")
    p.add_argument("--days", type=int, default=365, help="days of history")
    p.add_argument("--nights", type=int, default=5, help="nightly runs across the behavior shift")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("generate", help="write a synthetic journey data set and its ground truth")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--end", type=_date, required=True, help="last day of events (YYYY-MM-DD)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shift-share", type=float, default=0.2, help="share of clients that shift")
    p.add_argument(
        "--identities",
        action="store_true",
        help="add identifiers (cookies, devices, hashed emails and phones) for identity"
        " stitching, and write identity_links.parquet and identity_truth.parquet",
    )
    p.set_defaults(handler=_generate)

    p = sub.add_parser("validate", help="check events against the contract; print a JSON summary")
    p.add_argument("--events", required=True, help="Parquet/CSV file, directory or glob")
    p.add_argument(
        "--samples", type=int, default=3, help="rejected rows shown per reason (0: none)"
    )
    _config_arg(p)
    p.set_defaults(handler=_validate)

    p = sub.add_parser("features", help="build the point-in-time feature table as Parquet")
    p.add_argument("--events", required=True)
    p.add_argument("--as-of", type=_date, required=True)
    p.add_argument("--out", required=True, help="output Parquet file")
    _config_arg(p)
    p.set_defaults(handler=_features)

    p = sub.add_parser(
        "identity", help="stitch identifiers into persons as of a date; print a summary"
    )
    p.add_argument("--events", required=True, help="Parquet/CSV file, directory or glob")
    p.add_argument("--as-of", type=_date, required=True)
    p.add_argument(
        "--links", help="identity-links file (default: the config's identity.links_file)"
    )
    p.add_argument("--since", type=_date, help="also list the merges since this date")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--top", type=int, default=10, help="over-linked identifiers and merges shown")
    _config_arg(p)
    p.set_defaults(handler=_identity)

    p = sub.add_parser("run", help="the nightly run for one as-of date")
    _config_arg(p)
    p.add_argument("--events", help="events (default: the config's events.path)")
    p.add_argument("--as-of", type=_date, help="default: yesterday (UTC)")
    _store_arg(p)
    p.add_argument("--refit", action="store_true", help="refit the clustering whatever the policy")
    p.add_argument("--rebuild", action="store_true", help="allow an as-of older than the latest")
    _allow_future_arg(p)
    p.set_defaults(handler=_run)

    p = sub.add_parser("backfill", help="nightly runs for a range of dates, in order")
    _config_arg(p)
    p.add_argument("--events")
    _store_arg(p)
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, required=True)
    _allow_future_arg(p)
    p.set_defaults(handler=_backfill)

    p = sub.add_parser("serve", help="run the nightly flow on the configured cron (Prefect)")
    _config_arg(p)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("report", help="write the run report as one self-contained HTML file")
    _config_arg(p)
    _store_arg(p)
    p.add_argument("--as-of", type=_date)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_report)

    p = sub.add_parser("models", help="list, promote or roll back registered models")
    _config_arg(p)
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?", type=int, help="the version to promote")
    p.add_argument("--model", choices=["clusters", "cltv"], default="clusters")
    p.set_defaults(handler=_models)
    return parser


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="YAML config (default: $SEGMENTATION_CONFIG or the shipped one)"
    )


def _allow_future_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-future", action="store_true", help="allow an as-of date after today (UTC)"
    )


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store URL (default: $SEGMENTATION_STORE_URL or the config's)")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _config(args: argparse.Namespace) -> EngineConfig:
    return load_config(getattr(args, "config", None))


def _generate(args: argparse.Namespace) -> int:
    from features.generator import write_dataset

    summary = write_dataset(
        args.out,
        clients=args.clients,
        days=args.days,
        end=args.end,
        seed=args.seed,
        shift_share=args.shift_share,
        identities=args.identities,
    )
    print(json.dumps(summary, default=str))
    return 0


def _validate(args: argparse.Namespace) -> int:
    import duckdb

    from features.events import check_bad_share, load_configured_events
    from segmentation.rules import load_rules

    config = _config(args)
    load_rules(config.config_file(config.rules.file))  # a config's rules fail here, not at night
    con = duckdb.connect()
    report = load_configured_events(con, config, args.events)
    summary: dict[str, Any] = dict(report.to_dict())
    if args.samples > 0 and report.quarantined:
        summary["samples"] = _quarantine_samples(con, args.samples)
    print(json.dumps(summary, default=str))
    check_bad_share(report, config.events.max_bad_share)
    return 0


def _quarantine_samples(con: Any, per_reason: int) -> dict[str, list[dict[str, Any]]]:
    """Up to `per_reason` rejected rows of each reason, in file order, with their raw values
    (columns that are empty in every sample left out)."""
    rows = con.execute(
        "SELECT * EXCLUDE (k) FROM (SELECT *, row_number() OVER (PARTITION BY reason"
        " ORDER BY source_file, line_number NULLS LAST, event_time, client_id) AS k"
        " FROM quarantine) WHERE k <= ? ORDER BY reason, k",
        [per_reason],
    ).df()
    samples: dict[str, list[dict[str, Any]]] = {}
    for reason, group in rows.groupby("reason", sort=True):
        group = group.drop(columns="reason").dropna(axis=1, how="all")
        samples[str(reason)] = group.astype(object).where(group.notna(), None).to_dict("records")
    return samples


def _features(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from features.build import build_features
    from features.events import check_bad_share, load_configured_events
    from features.identity import needs_stitching, stitch_events
    from pipelines.scratch import events_connection

    config = _config(args)
    config.workdir_path.mkdir(parents=True, exist_ok=True)
    with events_connection(config) as con:
        report = load_configured_events(con, config, args.events)
        check_bad_share(report, config.events.max_bad_share)
        if needs_stitching(con, config.links_path):  # the features of persons, not identifiers
            stitch_events(con, args.as_of, config.identity, links_path=config.links_path)
        table = build_features(con, args.as_of, config.features, shards=config.features.shards)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    print(
        json.dumps({"clients": table.num_rows, "features": table.num_columns - 1, "out": str(out)})
    )
    return 0


def _identity(args: argparse.Namespace) -> int:
    from features.events import check_bad_share, load_configured_events
    from features.identity import needs_stitching, stitch_events
    from pipelines.scratch import events_connection

    config = _config(args)
    links = args.links or config.links_path
    config.workdir_path.mkdir(parents=True, exist_ok=True)
    with events_connection(config) as con:
        report = load_configured_events(con, config, args.events)
        check_bad_share(report, config.events.max_bad_share)
        if not needs_stitching(con, links):
            raise SegmentationError(
                f"events at {args.events} carry no identifier besides client_id"
                f" ({', '.join(IDENTIFIER_COLUMNS)}) and no links file is given: nothing to stitch"
            )
        stitching = stitch_events(
            con,
            args.as_of,
            config.identity,
            links_path=links,
            previous_as_of=args.since,
        )
    summary = dict(stitching.summary)
    top = max(args.top, 0)
    summary["over_linked_identifiers"] = stitching.quarantined_identifiers.head(top).to_dict(
        "records"
    )
    summary["merges_since"] = str(args.since) if args.since else None
    summary["merge_list"] = stitching.merges.head(top).to_dict("records")
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(_identity_text(args.as_of, summary))
    return 0


def _identity_text(as_of: date, s: dict[str, Any]) -> str:
    """The identity summary as lines for a terminal."""
    by_type = ", ".join(f"{k} {v:,}" for k, v in s["identifiers_by_type"].items())
    sizes = ", ".join(f"{k}: {v:,}" for k, v in s["persons_by_identifiers"].items())
    lines = [
        f"Identity as of {as_of}: {s['persons']:,} persons from {s['identifiers']:,} identifiers"
        f" ({by_type})",
        f"  known (a client_id): {s['known_persons']:,}; anonymous: {s['anonymous_persons']:,};"
        f" largest person: {s['largest_person']:,} identifiers",
        f"  persons by number of identifiers: {sizes}",
        f"  quarantined identifiers: {s['over_linked']:,} over-linked, {s['ambiguous']:,}"
        " ambiguous (between known clients)",
    ]
    for row in s["over_linked_identifiers"]:
        lines.append(f"    {row['id_type']} {row['id_value']}: {row['detail']}")
    ignored = s.get("ignored_identifiers") or {}
    if ignored:
        lines.append(
            "  identifier values ignored (events): "
            + ", ".join(f"{k} {v:,}" for k, v in ignored.items())
        )
    moved = s.get("events_quarantined") or {}
    if moved:
        lines.append(
            "  events without a usable identifier: "
            + ", ".join(f"{k} {v:,}" for k, v in moved.items())
        )
    if s.get("links"):
        links = s["links"]
        lines.append(
            f"  links file: {links['rows']:,} rows, {links['used']:,} used,"
            f" {links['rejected']:,} rejected"
        )
    since = f" since {s['merges_since']}" if s.get("merges_since") else " (known client ids)"
    lines.append(f"  merges{since}: {s['merges']:,}")
    for row in s["merge_list"]:
        lines.append(f"    {row['merged_id']} -> {row['into_id']}  {row['evidence']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from pipelines.nightly import _as_of_or_yesterday, run_nightly
    from pipelines.preflight import preflight

    config = _config(args)
    preflight(
        config,
        as_of=_as_of_or_yesterday(args.as_of.isoformat() if args.as_of else None),
        events=args.events,
        store_url=args.store,
        rebuild=args.rebuild,
        allow_future=args.allow_future,
    )
    result = run_nightly(
        config,
        as_of=args.as_of,
        events=args.events,
        store_url=args.store,
        force_refit=args.refit,
        rebuild=args.rebuild,
    )
    print(json.dumps(result, default=str))
    return 0


def _backfill(args: argparse.Namespace) -> int:
    if args.end < args.start:
        raise CommandLineError(f"--end {args.end} is before --start {args.start}")
    from pipelines.nightly import run_backfill
    from pipelines.preflight import preflight

    config = _config(args)
    for day in (args.end, args.start):  # the future check on the last, the order on the first
        preflight(
            config,
            as_of=day,
            events=args.events,
            store_url=args.store,
            allow_future=args.allow_future,
        )
    results = run_backfill(
        config, start=args.start, end=args.end, events=args.events, store_url=args.store
    )
    for result in results:
        print(json.dumps(result, default=str))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pipelines.nightly import serve

    serve(_config(args))
    return 0


def _report(args: argparse.Namespace) -> int:
    from pipelines.report import write_report

    config = _config(args)
    path = write_report(config, store_url=args.store, as_of=args.as_of, out=args.out)
    print(json.dumps({"report": str(path)}))
    return 0


def _models(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.action == "promote" and args.version is None:
        raise CommandLineError("models promote needs a VERSION")
    from pipelines.nightly import manage_models

    output = manage_models(config, args.action, model=args.model, version=args.version)
    print(output)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(workdir=args.workdir, clients=args.clients, days=args.days, nights=args.nights)


if __name__ == "__main__":
    raise SystemExit(main())
