"""A dry run: how membership would change under other rules or another config, nothing published.

Why: a rule edit can move thousands of clients into a campaign overnight. `segmentation preview
--rules new.yaml` computes the membership the next run would publish with the champion models
held fixed (so only the rules or settings differ), and compares it with the published
membership: per segment, its size now and after, the entries and exits, and a few example
clients with their reasons. No table, model or MLflow run is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from configs import EngineConfig, SegmentationError

if TYPE_CHECKING:
    from pipelines.sharded import FeatureRows

__all__ = ["Preview", "PreviewError", "preview", "preview_text"]

log = logging.getLogger(__name__)


class PreviewError(SegmentationError, ValueError):
    """A preview cannot be computed (no events, a bad rules file, ...)."""


@dataclass(frozen=True)
class Preview:
    """The membership a run would publish against the published one, per segment."""

    as_of: date
    compared_with: date | None  # the published as-of date the preview is compared with
    rules_file: str
    clients: int
    moved: int  # clients whose segment would change, arriving and leaving ones included
    by_segment: pd.DataFrame  # segment_id, segment_name, published, preview, entries, exits
    examples: pd.DataFrame  # client_id, from_segment_id, to_segment_id, reason
    notes: list[str] = field(default_factory=list)
    arrived: int = 0  # of `moved`: clients with no published membership
    left: int = 0  # of `moved`: published clients with none tonight

    def to_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "compared_with": self.compared_with.isoformat() if self.compared_with else None,
            "rules_file": self.rules_file,
            "clients": self.clients,
            "moved": self.moved,
            "arrived": self.arrived,
            "left": self.left,
            "by_segment": self.by_segment.to_dict("records"),
            "examples": self.examples.to_dict("records"),
            "notes": self.notes,
        }


def preview(
    config: EngineConfig,
    *,
    rules_file: str | None = None,
    events: str | None = None,
    store_url: str | None = None,
    as_of: date | None = None,
    examples: int = 3,
    progress: Callable[[str], None] | None = None,
) -> Preview:
    """The membership as of `as_of` (default: the latest published as-of, else yesterday)
    under `rules_file` (default: the config's rules) compared with the published membership.

    The champion cluster and CLTV models serve unchanged; without a champion they are fitted
    in memory and not registered. Nothing is written to the store or MLflow. With
    `execution.mode: dask` the features are built, and the clients scored and assigned,
    shard by shard as in the nightly run (the same membership)."""
    from pipelines import scratch, steps
    from pipelines.operate import open_config_store
    from pipelines.policy import RefitDecision
    from pipelines.registry import ModelRegistry
    from segmentation.rules import load_rules

    say = progress or log.info
    rules_path = Path(rules_file) if rules_file else config.config_file(config.rules.file)
    ruleset = load_rules(rules_path)  # a bad rule fails here, before any event is read
    store = open_config_store(config, store_url)
    try:
        latest = store.latest_as_of()
        published = store.membership(columns=steps.PREVIOUS_COLUMNS) if latest is not None else None
    finally:
        store.close()
    day = as_of or latest or (datetime.now(UTC).date() - timedelta(days=1))
    notes = []
    if published is None:
        notes.append("nothing is published yet: every client would enter a segment")
    elif latest is not None and latest != day:
        later = latest > day
        notes.append(
            f"compared with the membership published as of {latest}"
            + (f" (clients first seen after {day} count as leaving)" if later else "")
        )
    registry = ModelRegistry(config.tracking_uri) if config.mlflow.enabled else None
    config.workdir_path.mkdir(parents=True, exist_ok=True)  # the scratch folder lives there
    path = events or config.events_path
    with ExitStack() as stack:
        con = stack.enter_context(scratch.events_connection(config))
        say(f"preview as of {day}: reading events")
        features = _features(stack, con, config, path, day)
        champions = steps.load_champions(registry, config)
        cltv = steps.choose_cltv_model(
            con, day, features.btyd(), config, champions.cltv, False, None
        )
        scores = features.scores(cltv.bundle, config, cltv.version)
        if champions.clusters is None:
            notes.append("no champion clustering: a clustering was fitted for the preview only")
            decision = RefitDecision(True, "preview: no champion model")
        else:
            decision = RefitDecision(False, "preview: the champion model serves")
        clusters = steps.choose_cluster_model(
            features.fitting_rows(config) if decision.refit else pd.DataFrame(),
            day,
            config,
            champions.clusters,
            decision,
            published,
            None,
        )
        say(f"preview: assigning segments to {features.clients:,} clients")
        segmentation = features.segmentation(
            scores,
            clusters.bundle,
            ruleset,
            clusters.version,
            f"rules-preview-{config.digest()[:8]}",
            published,
            day,
            config,
        )
    by_segment, moved, sample = membership_diff(published, segmentation.membership, examples)
    arrived, left = arrivals(published, segmentation.membership)
    return Preview(
        as_of=day,
        compared_with=latest,
        rules_file=str(rules_path),
        clients=len(segmentation.membership),
        moved=moved,
        by_segment=by_segment,
        examples=sample,
        notes=notes,
        arrived=arrived,
        left=left,
    )


def _features(
    stack: ExitStack, con: Any, config: EngineConfig, events: str, day: date
) -> FeatureRows:
    """The events read, stitched and built into features as the nightly does: in this
    process, or shard by shard on Dask (`execution.mode: dask`; the cluster and the shards'
    folder live as long as `stack`)."""
    from pipelines import steps
    from pipelines.sharded import InMemoryFeatures

    if config.execution.mode == "dask":
        from features.events import resolve_sources
        from pipelines.distributed import check_ready, dask_client
        from pipelines.scratch import shared_folder
        from pipelines.sharded import build_on_dask

        check_ready(config, events, resolve_sources(events)[0])
        client = stack.enter_context(dask_client(config.execution))
        shared = stack.enter_context(shared_folder(config, "preview"))
        _, sharded = build_on_dask(con, config, events, day, shared, client)
        return sharded
    read = steps.read_events(con, config, events)
    steps.stitch_identities(con, config, day, read)
    return InMemoryFeatures(steps.compute_features(con, day, config))


def membership_diff(
    published: pd.DataFrame | None, preview: pd.DataFrame, examples: int = 3
) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """Per segment: size published and previewed, entries and exits; the number of clients
    whose segment changes; up to `examples` moved clients per segment they would enter."""
    before = (
        published[["client_id", "segment_id"]]
        if published is not None
        else pd.DataFrame(
            {"client_id": pd.Series(dtype=object), "segment_id": pd.Series(dtype=object)}
        )
    )
    after = preview[["client_id", "segment_id", "segment_name", "reason"]]
    both = before.merge(after, on="client_id", how="outer", suffixes=("_from", "_to"))
    same = both["segment_id_from"].eq(both["segment_id_to"]).fillna(False).astype(bool)
    changed = both[~same]  # a side missing (new or gone client) is a change
    names = dict(zip(after["segment_id"], after["segment_name"], strict=False))
    if published is not None and "segment_name" in published.columns:
        names = {
            **dict(zip(published["segment_id"], published["segment_name"], strict=False)),
            **names,
        }
    ids = sorted(set(before["segment_id"].dropna()) | set(after["segment_id"].dropna()))
    rows = []
    for segment_id in ids:
        rows.append(
            {
                "segment_id": segment_id,
                "segment_name": names.get(segment_id),
                "published": int((before["segment_id"] == segment_id).sum()),
                "preview": int((after["segment_id"] == segment_id).sum()),
                "entries": int((changed["segment_id_to"] == segment_id).sum()),
                "exits": int((changed["segment_id_from"] == segment_id).sum()),
            }
        )
    table = pd.DataFrame(
        rows, columns=["segment_id", "segment_name", "published", "preview", "entries", "exits"]
    )
    sample = (
        changed.dropna(subset=["segment_id_to"])
        .sort_values(["segment_id_to", "client_id"], kind="stable")
        .groupby("segment_id_to", sort=True)
        .head(examples)
        .rename(columns={"segment_id_from": "from_segment_id", "segment_id_to": "to_segment_id"})
    )[["client_id", "from_segment_id", "to_segment_id", "reason"]]
    return table, len(changed), sample.reset_index(drop=True)


def arrivals(published: pd.DataFrame | None, preview: pd.DataFrame) -> tuple[int, int]:
    """Clients of `preview` with no published membership, and published clients not in it."""
    before = set() if published is None else set(published["client_id"])
    after = set(preview["client_id"])
    return len(after - before), len(before - after)


def preview_text(result: Preview) -> str:
    """The preview for the terminal: the changing segments first, then a few moved clients.

    The headline counts moves among the clients published and previewed apart from clients
    who arrive or leave: a night's new clients are not a rule change's doing."""
    head = f"Preview as of {result.as_of} with {result.rules_file}: "
    kept = result.clients - result.arrived
    if kept == 0 and result.left == 0:
        head += f"nothing is published yet; all {result.clients:,} clients would enter a segment"
    else:
        switched = result.moved - result.arrived - result.left
        head += f"{switched:,} of {kept:,} published clients would change segment"
        if result.arrived:
            head += f", {_clients(result.arrived, 'new')} would enter one"
        if result.left:
            head += f", {_clients(result.left, 'published')} would leave theirs"
    lines = [head + " (nothing was published)."]
    lines += [f"  note: {n}" for n in result.notes]
    table = result.by_segment.assign(change=lambda f: f["preview"] - f["published"])
    table = table.sort_values(["entries", "exits"], ascending=False, kind="stable")
    lines.append("")
    lines.append(f"  {'segment':<28}{'published':>10}{'preview':>10}{'entries':>9}{'exits':>8}")
    for _, row in table.iterrows():
        label = f"{row['segment_id']}"
        lines.append(
            f"  {label[:27]:<28}{row['published']:>10,}{row['preview']:>10,}"
            f"{row['entries']:>9,}{row['exits']:>8,}"
        )
    if len(result.examples):
        lines += ["", "  examples of clients who would move:"]
        for _, ex in result.examples.iterrows():
            source = ex["from_segment_id"] if isinstance(ex["from_segment_id"], str) else "(new)"
            lines.append(f"  {ex['client_id']}: {source} -> {ex['to_segment_id']}: {ex['reason']}")
    return "\n".join(lines)


def _clients(count: int, kind: str) -> str:
    return f"{count:,} {kind} client{'' if count == 1 else 's'}"
