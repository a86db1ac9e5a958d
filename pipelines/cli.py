"""The `segmentation` command line: demo, generate, validate, features, run, backfill, serve, report,
models, and the daily operation commands export, explain, runs and status (`pipelines/operate.py`).

Every command exits 0 on success and non-zero with a one-line reason on stderr on failure.
An engine error (`configs.SegmentationError`: bad input, config, store, model) is the whole
story in that line; any other exception is a bug, so its line names the exception type and
says that `-v` shows the traceback. Heavy imports (Prefect, MLflow, hdbscan, scikit-learn)
happen inside the commands that need them, so `segmentation validate` stays quick.

`-v/--verbose` and `-q/--quiet` go before or after the command. Progress lines (one per step,
with the seconds since the run started) go to stderr unless -q; -v adds the engine's own log
and tracebacks; -v -v adds the chatter of Prefect and the HTTP clients.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs import IDENTIFIER_COLUMNS, EngineConfig, SegmentationError, load_config

if TYPE_CHECKING:
    import pyarrow as pa

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
    args.verbose = int(args.verbose or 0) + int(getattr(args, "sub_verbose", 0) or 0)
    args.quiet = bool(args.quiet or getattr(args, "sub_quiet", False))
    _configure_logging(args.verbose, args.quiet)
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


# Libraries whose INFO lines are chatter (HTTP requests, Prefect's own run states): shown
# only with -v -v.
_CHATTY = ("httpx", "httpcore", "urllib3", "prefect", "uvicorn", "alembic", "mlflow", "docket")


def _configure_logging(verbosity: int, quiet: bool) -> None:
    """Levels for our log, the progress lines and the libraries (see the module docstring)."""
    from pipelines.operate import progress_logger

    _quiet_libraries(verbosity)
    logging.basicConfig(
        level=logging.WARNING if not verbosity else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger().setLevel(logging.WARNING if not verbosity else logging.INFO)
    for name in _CHATTY:
        level = (
            logging.INFO if verbosity >= 2 else logging.ERROR if not verbosity else logging.WARNING
        )
        logging.getLogger(name).setLevel(level)
    progress_logger(quiet)


def _quiet_libraries(verbosity: int) -> None:
    """Prefect and MLflow log freely: without -v only our one-line outcome and the progress
    lines show; with -v their warnings; with -v -v everything."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    level = "CRITICAL" if not verbosity else "WARNING" if verbosity == 1 else "INFO"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", level)
    os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", level)
    if verbosity < 2:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmentation",
        description="Dynamic behavioral segments and CLTV from customer-journey events.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more (-v: the engine's log and tracebacks; -v -v: Prefect and HTTP too)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    # The same flags after the command (`segmentation run -v`), counted with those before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0, dest="sub_verbose", help=argparse.SUPPRESS
    )
    common.add_argument("-q", "--quiet", action="store_true", dest="sub_quiet", help="no progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_commands(sub, common)
    return parser


def _add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The subcommands of the original contract (the operation commands: `_add_operation`)."""
    add = _with_parents(sub, common)

    p = add("demo", help="generate data and run everything on embedded defaults")
    p.add_argument("--workdir", default="./segmentation-work", help="where to put everything")
    p.add_argument("--clients", type=int, default=20_000, help="synthetic clients")
    p.add_argument("--days", type=int, default=365, help="days of history")
    p.add_argument("--nights", type=int, default=5, help="nightly runs across the behavior shift")
    p.add_argument(
        "--end", type=_date, help="last day of the generated events (default: yesterday, UTC)"
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="keep the demo's store and MLflow registry and re-run its nights over them"
        " (default: start over, removing only what an earlier demo made in --workdir)",
    )
    p.set_defaults(handler=_demo)

    p = add("generate", help="write a synthetic journey data set and its ground truth")
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

    p = add("validate", help="check events against the contract; print a JSON summary")
    p.add_argument("--events", required=True, help="Parquet/CSV file, directory or glob")
    p.add_argument(
        "--samples", type=int, default=3, help="rejected rows shown per reason (0: none)"
    )
    _config_arg(p)
    p.set_defaults(handler=_validate)

    p = add("features", help="build the point-in-time feature table as Parquet")
    p.add_argument("--events", required=True)
    p.add_argument("--as-of", type=_date, required=True)
    p.add_argument("--out", required=True, help="output Parquet file")
    _config_arg(p)
    p.set_defaults(handler=_features)

    p = add("partition", help="rewrite events as Parquet partitioned by client hash (shard=k)")
    p.add_argument("--events", required=True, help="Parquet/CSV/JSON lines file, folder or glob")
    p.add_argument("--out", required=True, help="the folder written (atomically)")
    p.add_argument("--shards", type=int, required=True, help="the execution.shards of the build")
    _config_arg(p)
    p.set_defaults(handler=_partition)

    p = add("identity", help="stitch identifiers into persons as of a date; print a summary")
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

    p = add("run", help="the nightly run for one as-of date")
    _config_arg(p)
    p.add_argument("--events", help="events (default: the config's events.path)")
    p.add_argument("--as-of", type=_date, help="default: yesterday (UTC)")
    _store_arg(p)
    p.add_argument("--refit", action="store_true", help="refit the clustering whatever the policy")
    p.add_argument("--rebuild", action="store_true", help="allow an as-of older than the latest")
    _allow_future_arg(p)
    p.set_defaults(handler=_run)

    p = add("backfill", help="nightly runs for a range of dates, in order")
    _config_arg(p)
    p.add_argument("--events")
    _store_arg(p)
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, required=True)
    _allow_future_arg(p)
    p.set_defaults(handler=_backfill)

    p = add("serve", help="run the nightly flow on the configured cron (Prefect)")
    _config_arg(p)
    p.set_defaults(handler=_serve)

    p = add("report", help="write the run report as one self-contained HTML file")
    _config_arg(p)
    _store_arg(p)
    p.add_argument("--as-of", type=_date)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_report)

    p = add("models", help="list, promote or roll back registered models")
    _config_arg(p)
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?", type=int, help="the version to promote")
    p.add_argument("--model", choices=["clusters", "cltv"], default="clusters")
    p.set_defaults(handler=_models)
    _add_operation(add)


def _with_parents(sub: Any, common: argparse.ArgumentParser) -> Any:
    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    return add


def _add_operation(add: Any) -> None:
    """export, explain, runs, status, journey, preview, deliver: the daily operation."""
    p = add("export", help="write a segment's members, or its entries/exits since a date")
    p.add_argument("--segment", required=True, help="segment id (see the segments table)")
    p.add_argument(
        "--entries-since", type=_date, help="the entries since this date instead of the members"
    )
    p.add_argument("--exits", action="store_true", help="with --entries-since: the exits too")
    p.add_argument(
        "--format", choices=["csv", "parquet"], help="default: from the --out file's ending"
    )
    p.add_argument("--out", required=True, help="the file written (atomically)")
    _store_arg(p)
    _config_arg(p)
    p.set_defaults(handler=_export)

    p = add("explain", help="a client's segment, reason, scores and last moves")
    p.add_argument("client", metavar="CLIENT")
    p.add_argument("--moves", type=int, default=10, help="last membership stretches shown")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _store_arg(p)
    _config_arg(p)
    p.set_defaults(handler=_explain)

    p = add("runs", help="the run log, newest first")
    p.add_argument("--limit", type=int, default=20, help="runs shown (default 20)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    _store_arg(p)
    _config_arg(p)
    p.set_defaults(handler=_runs)

    p = add("status", help="exit non-zero when the latest run failed or is too old")
    p.add_argument(
        "--max-age",
        type=float,
        default=26.0,
        metavar="HOURS",
        help="the latest successful run may have finished at most this long ago (default 26)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _store_arg(p)
    _config_arg(p)
    p.set_defaults(handler=_status)

    p = add("journey", help="the customer journey map of a segment (or all clients)")
    p.add_argument("--segment", default="*", help="segment id (default *: all clients)")
    p.add_argument("--as-of", type=_date, help="default: the latest successful run")
    p.add_argument("--json", action="store_true", help="print the map's rows as JSON")
    p.add_argument("--width", type=int, default=100, help="terminal width of the stage grid")
    _store_arg(p)
    _config_arg(p)
    p.set_defaults(handler=_journey)

    p = add("preview", help="dry run: how membership would change, nothing published")
    p.add_argument("--rules", help="a rules file to try (default: the config's)")
    p.add_argument("--events", help="events path (default: the config's)")
    p.add_argument("--as-of", type=_date, help="default: the latest published as-of date")
    p.add_argument("--segment", help="show this segment only")
    p.add_argument("--examples", type=int, default=3, help="moved clients shown per segment")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _store_arg(p)
    _config_arg(p)
    p.set_defaults(handler=_preview)

    p = add("deliver", help="send the day's entries and exits to the configured destinations")
    p.add_argument("--retry", action="store_true", help="also re-send failed batches")
    p.add_argument("--as-of", type=_date, help="default: the latest successful run")
    _store_arg(p)
    _config_arg(p)
    p.set_defaults(handler=_deliver)


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
    from features.identity import needs_stitching, stitch_events, stitched_report
    from segmentation.rules import load_rules

    config = _config(args)
    load_rules(config.config_file(config.rules.file))  # a config's rules fail here, not at night
    con = duckdb.connect()
    report = load_configured_events(con, config, args.events)
    if needs_stitching(con, config.links_path):
        # what a run would quarantine too: events left without a usable identifier once the
        # identifiers are judged (placeholders, over-linked), as of the newest valid event
        newest = con.execute("SELECT max(event_time)::DATE FROM events").fetchall()[0][0]
        if newest is not None:
            stitching = stitch_events(con, newest, config.identity, links_path=config.links_path)
            report = stitched_report(report, stitching)
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
    from pipelines import steps
    from pipelines.scratch import events_connection

    config = _config(args)
    config.workdir_path.mkdir(parents=True, exist_ok=True)
    if config.execution.mode == "dask":
        table = _features_on_dask(config, args.events, args.as_of)
    else:
        with events_connection(config) as con:
            # features of persons, not identifiers; the bad share counts the events that
            # stitching leaves without a usable identifier, as in a run
            events = steps.read_events(con, config, args.events)
            steps.stitch_identities(con, config, args.as_of, events)
            table = build_features(con, args.as_of, config.features, shards=config.features.shards)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    print(
        json.dumps({"clients": table.num_rows, "features": table.num_columns - 1, "out": str(out)})
    )
    return 0


def _features_on_dask(config: EngineConfig, events: str, as_of: date) -> pa.Table:
    """The feature table built shard by shard on Dask (`execution.mode: dask`): the shards
    keep their rows in a scratch folder (or `execution.shared_dir`), merged here in the
    one-process order."""
    import pyarrow.parquet as pq

    from features.build import _sorted_by_client
    from features.events import resolve_sources
    from pipelines.distributed import build_features_on_dask, check_ready
    from pipelines.scratch import shared_folder

    check_ready(config, events, resolve_sources(events)[0])
    with shared_folder(config, "features") as shared:
        built = build_features_on_dask(config, events, as_of, shared=shared)
        assert built.kept is not None  # asked for by `shared`
        return _sorted_by_client([pq.read_table(f) for f in built.kept.files])


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
    from pipelines.preflight import preflight

    started = time.perf_counter()
    as_of = args.as_of or (datetime.now(UTC).date() - timedelta(days=1))
    config = _config(args)
    preflight(
        config,
        as_of=as_of,
        events=args.events,
        store_url=args.store,
        rebuild=args.rebuild,
        allow_future=args.allow_future,
    )
    _progress(started, "checks passed; starting the nightly flow (Prefect)")
    from pipelines.nightly import run_nightly

    result = run_nightly(
        config,
        as_of=as_of,
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
    from pipelines.preflight import preflight

    started = time.perf_counter()
    config = _config(args)
    for day in (args.end, args.start):  # the future check on the last, the order on the first
        preflight(
            config,
            as_of=day,
            events=args.events,
            store_url=args.store,
            allow_future=args.allow_future,
        )
    _progress(started, "checks passed; starting the backfill flow (Prefect)")
    from pipelines.nightly import run_backfill

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
    from pipelines.operate import manage_models

    output = manage_models(config, args.action, model=args.model, version=args.version)
    print(output)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(
        workdir=args.workdir,
        clients=args.clients,
        days=args.days,
        nights=args.nights,
        end=args.end,
        rebuild=args.rebuild,
    )


def _export(args: argparse.Namespace) -> int:
    from pipelines.operate import export_segment, open_config_store

    fmt = args.format or _format_of(args.out)
    store = open_config_store(_config(args), args.store)
    try:
        result = export_segment(
            store,
            args.segment,
            out=args.out,
            fmt=fmt,
            entries_since=args.entries_since,
            exits=args.exits,
        )
    finally:
        store.close()
    what = (
        "members" if result.kind == "members" else "entries and exits" if args.exits else "entries"
    )
    print(f"{result.rows:,} {what} of segment {args.segment} written to {result.path}")
    return 0


def _format_of(out: str) -> str:
    for ending, fmt in ((".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if out.lower().endswith(ending):
            return fmt
    raise CommandLineError(f"--out {out}: give --format csv or parquet (or a .csv/.parquet name)")


def _explain(args: argparse.Namespace) -> int:
    from pipelines.operate import explain_client, explain_text, open_config_store

    store = open_config_store(_config(args), args.store)
    try:
        answer = explain_client(store, args.client, moves=max(args.moves, 0))
    finally:
        store.close()
    print(json.dumps(answer, default=str) if args.json else explain_text(answer))
    return 0


def _runs(args: argparse.Namespace) -> int:
    from pipelines.operate import open_config_store, run_log, runs_records, runs_text

    store = open_config_store(_config(args), args.store)
    try:
        runs = run_log(store, args.limit)
    finally:
        store.close()
    print(json.dumps(runs_records(runs)) if args.json else runs_text(runs))
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipelines.operate import StatusError, check_status, open_config_store

    store = open_config_store(_config(args), args.store)
    try:
        status = check_status(store, max_age_hours=args.max_age)
    finally:
        store.close()
    if args.json:
        print(json.dumps(status.to_dict()))
    if not status.ok:
        raise StatusError(status.message)
    if not args.json:
        print(status.message)
    return 0


def _journey(args: argparse.Namespace) -> int:
    from pipelines.journey_view import JourneyTables, journey_text, segment_ids
    from pipelines.operate import open_config_store, unknown_segment_error

    store = open_config_store(_config(args), args.store)
    try:
        with store.snapshot() as reader:  # one publish's tables, even while another lands
            tables = JourneyTables(
                reader.journey_stages(as_of=args.as_of),
                reader.journey_touchpoints(as_of=args.as_of),
                reader.journey_dropoffs(as_of=args.as_of),
            )
    finally:
        store.close()
    if tables.empty:
        when = f"as of {args.as_of}" if args.as_of else "for the latest run"
        raise CommandLineError(
            f"no journey map is published {when} (is journey.enabled on? run `segmentation run`)"
        )
    known = segment_ids(tables)
    if args.segment not in known:
        raise unknown_segment_error(args.segment, known)
    if args.json:
        mine = {
            name: frame[frame["segment_id"] == args.segment].to_dict("records")
            for name, frame in (
                ("stages", tables.stages),
                ("touchpoints", tables.touchpoints),
                ("dropoffs", tables.dropoffs),
            )
        }
        print(json.dumps(mine, default=str))
    else:
        print(journey_text(tables, args.segment, width=args.width))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pipelines.operate import unknown_segment_error
    from pipelines.preview import preview, preview_text

    started = time.perf_counter()
    result = preview(
        _config(args),
        rules_file=args.rules,
        events=args.events,
        store_url=args.store,
        as_of=args.as_of,
        examples=max(args.examples, 0),
        progress=lambda message: _progress(started, message),
    )
    if args.segment is not None:
        known = [str(s) for s in result.by_segment["segment_id"]]
        if args.segment not in known:
            raise unknown_segment_error(args.segment, known)
        result = replace(
            result,
            by_segment=result.by_segment[result.by_segment["segment_id"] == args.segment],
            examples=result.examples[result.examples["to_segment_id"] == args.segment],
        )
    print(json.dumps(result.to_dict(), default=str) if args.json else preview_text(result))
    return 0


def _deliver(args: argparse.Namespace) -> int:
    from pipelines.destinations import deliver_command

    return deliver_command(_config(args), store_url=args.store, as_of=args.as_of, retry=args.retry)


def _partition(args: argparse.Namespace) -> int:
    from pipelines.partition import partition_events

    manifest = partition_events(_config(args), args.events, args.out, args.shards)
    print(
        json.dumps(
            {
                "out": str(Path(args.out).resolve()),
                "shards": manifest.shards,
                "rows": manifest.rows,
                "rows_by_shard": manifest.rows_by_shard,
            }
        )
    )
    return 0


def _progress(started: float, message: str) -> None:
    """A progress line of the command itself (stderr unless -q)."""
    logging.getLogger("pipelines.progress").info(
        "%6.1fs %s", time.perf_counter() - started, message
    )


if __name__ == "__main__":
    raise SystemExit(main())
