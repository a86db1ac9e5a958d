"""Tonight's feature rows as the nightly's later steps use them: in this process, or kept by
the Dask shards so that only samples, sums and per-client results reach the driver.

The nightly asks its features for eight things (and, once the segments are assigned, to
let go of its rows): how many clients and which features, the
BTYD inputs, how the champion clustering fits them, the rows a cluster refit is fitted on,
the CLTV scores, the segment memberships, the journey map and the members' outcomes since
entry (the holdout comparison). `InMemoryFeatures` answers from the feature frame (and the
events on the run's connection) with the steps of `pipelines.steps`. `ShardedFeatures`
answers from the files the shards left in the run's shared folder (`pipelines.distributed`):
a refit fits on the sample rows it would draw from the whole frame
(`segmentation.clustering.sample_client_ids`), the drift check adds the shards' bin counts,
each shard scores and assigns its own clients on a worker with the models fitted in the
driver, and each computes its clients' per-client journey tables and outcomes from its own
events. Both give the same tables
(tests/pipelines/test_nightly_dask.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import numpy as np
import pandas as pd

from configs import EngineConfig
from pipelines import steps
from pipelines.policy import ChampionFit
from pipelines.steps import CltvBundle, ClusterBundle, EventsRead, Segmentation

if TYPE_CHECKING:
    import pyarrow as pa
    from distributed import Client

    from features.journey import JourneyMap
    from pipelines.distributed import KeptFeatures
    from segmentation.drift import DriftReference
    from segmentation.rules import RuleSet

__all__ = [
    "FeatureRows",
    "InMemoryFeatures",
    "ShardedFeatures",
    "build_on_dask",
    "iter_kept",
    "read_kept",
]


class FeatureRows(Protocol):
    """What the nightly's steps after the feature build need from tonight's feature rows."""

    @property
    def clients(self) -> int: ...

    @property
    def names(self) -> list[str]: ...

    def btyd(self) -> pd.DataFrame: ...

    def champion_fit(self, champion: ClusterBundle, config: EngineConfig) -> ChampionFit: ...

    def fitting_rows(self, config: EngineConfig) -> pd.DataFrame: ...

    def scores(
        self, bundle: CltvBundle | None, config: EngineConfig, version: str
    ) -> pd.DataFrame: ...

    def segmentation(
        self,
        scores: pd.DataFrame,
        clusters: ClusterBundle | None,
        rules: RuleSet,
        cluster_version: str,
        rules_version: str,
        previous: pd.DataFrame | None,
        as_of: date,
        config: EngineConfig,
    ) -> Segmentation: ...

    def journey(
        self,
        con: duckdb.DuckDBPyConnection,
        as_of: date,
        membership: pd.DataFrame,
        config: EngineConfig,
    ) -> JourneyMap | None: ...

    def outcomes(
        self, con: duckdb.DuckDBPyConnection, config: EngineConfig
    ) -> Callable[[pd.DataFrame, date], pd.DataFrame]: ...

    def release(self) -> None: ...


@dataclass(eq=False)
class InMemoryFeatures:
    """The feature frame in this process (`steps.compute_features`).

    Not frozen on purpose: `release` lets go of the rows in place. Prefect keeps every task's
    parameters and return value until the flow run ends (its transaction holds each task
    run's engine for a rollback), so the steps this object went through all still reference
    it; emptying it is what frees the frame (2.4 GB at 2.26M clients) before the journey map."""

    frame: pd.DataFrame
    clients: int = field(init=False)  # kept: the released frame has no rows, only columns

    def __post_init__(self) -> None:
        self.clients = len(self.frame)

    @property
    def names(self) -> list[str]:
        return list(self.frame.columns[1:])

    def release(self) -> None:
        """Drop the rows once the segments are assigned (the map and outcomes read events).

        The frame's columns were allocated by Arrow (DuckDB's result), whose mimalloc pool
        keeps freed memory resident; it is handed back to the system here, where DuckDB's
        scans that follow can use it."""
        import pyarrow as pa

        # an empty copy: an empty slice would be a view that keeps the whole blocks alive
        self.frame = self.frame.iloc[:0].copy()
        pa.default_memory_pool().release_unused()

    def btyd(self) -> pd.DataFrame:
        return steps.btyd_inputs(self.frame)

    def champion_fit(self, champion: ClusterBundle, config: EngineConfig) -> ChampionFit:
        return steps.champion_fit(champion, self.frame, config)

    def fitting_rows(self, config: EngineConfig) -> pd.DataFrame:
        """The rows of the clients a cluster refit samples, as on the shards: a task given
        the whole frame would keep it alive for the rest of the run (see the class)."""
        from segmentation.clustering import sample_client_ids

        chosen = sample_client_ids(
            self.frame["client_id"], config.clustering.sample_size, config.seed
        )
        at = pd.Index(self.frame["client_id"].astype(str)).get_indexer(pd.Index(chosen))
        return self.frame.iloc[at].reset_index(drop=True)

    def scores(self, bundle: CltvBundle | None, config: EngineConfig, version: str) -> pd.DataFrame:
        return steps.score_clients(bundle, self.frame, config, version)

    def segmentation(
        self,
        scores: pd.DataFrame,
        clusters: ClusterBundle | None,
        rules: RuleSet,
        cluster_version: str,
        rules_version: str,
        previous: pd.DataFrame | None,
        as_of: date,
        config: EngineConfig,
    ) -> Segmentation:
        return steps.segment_clients(
            self.frame,
            scores,
            clusters,
            rules,
            cluster_version,
            rules_version,
            previous,
            as_of,
            config=config,
        )

    def journey(
        self,
        con: duckdb.DuckDBPyConnection,
        as_of: date,
        membership: pd.DataFrame,
        config: EngineConfig,
    ) -> JourneyMap | None:
        return steps.map_journeys(con, as_of, membership, config)

    def outcomes(
        self, con: duckdb.DuckDBPyConnection, config: EngineConfig
    ) -> Callable[[pd.DataFrame, date], pd.DataFrame]:
        """`features.outcomes.outcomes_since` over the events on `con`."""
        from features.outcomes import outcomes_since

        return lambda since, as_of: outcomes_since(con, since, as_of)


@dataclass(frozen=True)
class ShardedFeatures:
    """Feature rows kept by the Dask shards (`pipelines.distributed.KeptFeatures`), with the
    client ids and BTYD inputs of every client in this process, in the one-process order."""

    client: Client
    kept: KeptFeatures
    index: pd.DataFrame  # client_id and the BTYD inputs, sorted by client_id

    @property
    def clients(self) -> int:
        return len(self.index)

    @property
    def names(self) -> list[str]:
        return list(self.kept.columns[1:])

    def btyd(self) -> pd.DataFrame:
        return steps.btyd_inputs(self.index)

    def champion_fit(self, champion: ClusterBundle, config: EngineConfig) -> ChampionFit:
        """`steps.champion_fit` from the shards' bin counts and the same sample's rows."""
        from segmentation.drift import psi_from_counts, sum_counts

        counts = sum_counts(self._map(_bin_counts, champion.reference, steps.SCORE_BATCH))
        drift = psi_from_counts(champion.reference, counts, self.clients)
        ids = self.index["client_id"].to_numpy()
        positions = steps.champion_sample_positions(self.clients, config)
        sample = self.rows(ids[positions])
        return ChampionFit(psi=drift, noise_share=steps.noise_share(champion, sample))

    def fitting_rows(self, config: EngineConfig) -> pd.DataFrame:
        """The rows of the clients a cluster refit samples (all of them when there are
        fewer than `clustering.sample_size`)."""
        from segmentation.clustering import sample_client_ids

        chosen = sample_client_ids(
            self.index["client_id"], config.clustering.sample_size, config.seed
        )
        return self.rows(chosen)

    def scores(self, bundle: CltvBundle | None, config: EngineConfig, version: str) -> pd.DataFrame:
        """`steps.score_clients`: each shard predicts its clients on a worker; the percentile
        among all clients is taken here."""
        if bundle is None:
            return steps.score_clients(None, self.index, config, version)
        predicted = self._in_order(self._map(_predict_scores, bundle, steps.SCORE_BATCH))
        return steps.finish_scores(predicted, bundle, version)

    def segmentation(
        self,
        scores: pd.DataFrame,
        clusters: ClusterBundle | None,
        rules: RuleSet,
        cluster_version: str,
        rules_version: str,
        previous: pd.DataFrame | None,
        as_of: date,
        config: EngineConfig,
    ) -> Segmentation:
        """`steps.segment_clients`: each shard assigns its clients on a worker, with its
        clients' scores and previous memberships; the segments and metrics are taken here."""
        by_shard = [pd.Index(ids) for ids in self.kept.shard_ids]
        models = self._scattered(clusters, rules, config)
        futures = [
            self.client.submit(
                _assign_members,
                file,
                self.kept.nullable,
                steps.SCORE_BATCH,
                *self._scattered(
                    _rows_of(scores, ids),
                    _rows_of(previous, ids) if previous is not None else None,
                ),
                *models,
                as_of,
                pure=False,
            )
            for file, ids in zip(self.kept.files, by_shard, strict=True)
        ]
        membership = self._in_order(self.client.gather(futures))
        return Segmentation(
            membership,
            steps.segment_rows(clusters, rules, cluster_version, rules_version),
            steps._membership_metrics(membership),
        )

    def journey(
        self,
        con: duckdb.DuckDBPyConnection,
        as_of: date,
        membership: pd.DataFrame,
        config: EngineConfig,
    ) -> JourneyMap | None:
        """`steps.map_journeys`: each shard computes its clients' per-client journey tables
        from its own events file on a worker (`features.journey.journey_client_tables`); the
        statistics are taken here from those tables, so no process scans every event."""
        if not config.journey.enabled:
            return None
        from features.journey import CLIENT_TABLES, journey_map

        members = membership[list(steps.JOURNEY_MEMBER_COLUMNS)]
        folder = str(Path(self.kept.files[0]).parent)
        parts = self._on_events(_journey_part, "journey map", members, config, as_of, folder)
        files = {name: [part[name] for part in parts] for name in CLIENT_TABLES}
        return journey_map(con, as_of, members, config.journey, parts=files)

    def outcomes(
        self, con: duckdb.DuckDBPyConnection, config: EngineConfig
    ) -> Callable[[pd.DataFrame, date], pd.DataFrame]:
        """`features.outcomes.outcomes_since`, each shard over its own events file on a
        worker (a client's outcomes are its own events'), in the order of `since`."""

        def outcomes_of(since: pd.DataFrame, as_of: date) -> pd.DataFrame:
            parts = self._on_events(_outcomes_part, "holdout outcomes", since, config, as_of)
            frame = pd.concat(parts, ignore_index=True)
            order = pd.Index(frame["client_id"]).get_indexer(since["client_id"])
            if (order < 0).any():  # every member is some shard's client
                missing = since["client_id"].to_numpy()[order < 0][:5]
                raise RuntimeError(f"holdout outcomes: no shard has the clients {list(missing)}")
            return frame.iloc[order].reset_index(drop=True)

        return outcomes_of

    def _on_events(
        self,
        fn: Callable[..., Any],
        step: str,
        rows: pd.DataFrame,
        config: EngineConfig,
        *args: Any,
    ) -> list[Any]:
        """`fn(events file of shard k, its clients' `rows`, config, *args, k, shards)` for
        every shard on the workers, in shard order (retried once; a failure names its
        shard)."""
        from pipelines.distributed import events_file_name, gather_by_shard

        folder = Path(self.kept.files[0]).parent
        settings = self._scattered(config)
        futures = [
            self.client.submit(
                fn,
                str(folder / events_file_name(k)),
                *self._scattered(_rows_of(rows, pd.Index(ids))),
                *settings,
                *args,
                k,
                len(self.kept.files),
                pure=False,
                retries=1,
            )
            for k, ids in enumerate(self.kept.shard_ids)
        ]
        return gather_by_shard(self.client, futures, step)

    def release(self) -> None:
        """The rows stay on the shards: nothing to let go of here."""

    def rows(self, client_ids: Sequence[str] | np.ndarray) -> pd.DataFrame:
        """The feature rows of these clients, in this order, with the one-process types."""
        wanted = pd.Index([str(c) for c in client_ids], dtype=object)
        futures = []
        for file, ids in zip(self.kept.files, self.kept.shard_ids, strict=True):
            mine = wanted[wanted.isin(ids)]
            if len(mine):
                futures.append(
                    self.client.submit(read_kept, file, self.kept.nullable, list(mine), pure=False)
                )
        parts = self.client.gather(futures)
        frame = pd.concat(parts, ignore_index=True) if parts else _empty(self.kept.columns)
        return frame.set_index("client_id").loc[wanted].reset_index()

    def _map(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """`fn(frame of shard k, *args)` for every shard on the workers, in shard order."""
        shared = self._scattered(*args)
        futures = [
            self.client.submit(fn, file, self.kept.nullable, *shared, pure=False)
            for file in self.kept.files
        ]
        return list(self.client.gather(futures))

    def _scattered(self, *values: Any) -> list[Any]:
        """Each value sent to the cluster once, as a future the tasks take (a model or a
        frame in the task graph itself would be copied into every task). Under a key of its
        own (`hash=False`): with a key from the value's hash, an equal value scattered by an
        earlier step shares the key, and that step's futures, released as it returns, can
        drop the data this step's tasks wait for ("lost dependencies")."""
        return [self.client.scatter([value], hash=False)[0] for value in values]

    def _in_order(self, parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
        """Per-shard rows (client_id a column) concatenated in the one-process client order."""
        kept = [part for part in parts if len(part)]  # an empty shard would retype columns
        frame = pd.concat(kept, ignore_index=True) if kept else parts[0]
        order = pd.Index(frame["client_id"]).get_indexer(self.index["client_id"])
        return frame.iloc[order].reset_index(drop=True)


def build_on_dask(
    con: duckdb.DuckDBPyConnection,
    config: EngineConfig,
    events_path: str,
    as_of: date,
    shared: Path,
    client: Client,
    history: Callable[[], tuple[date | None, Mapping[str, str]]] | None = None,
) -> tuple[EventsRead, ShardedFeatures]:
    """`steps.read_events`, `steps.stitch_identities` and `steps.compute_features` shard by
    shard on Dask.

    The shards validate their clients' events and build their features on the workers
    (`pipelines.distributed`), and leave in `shared` (a folder the workers and this process
    share) their valid events and their feature rows. Events that need identity stitching are
    validated and stitched in this process first (`history`, called only then: the previous
    as-of date and the ids merged before, as `steps.stitch_identities` takes them), then
    sharded by person.
    `con` gets an ``events`` view over the events files, so the steps that read events (CLTV
    training windows, journey map, holdout) read the one-process rows without this process
    loading them; the feature rows stay where they are (`ShardedFeatures`)."""
    from pipelines.distributed import build_features_on_dask, events_view

    shared.mkdir(parents=True, exist_ok=True)
    built = build_features_on_dask(
        config, events_path, as_of, client=client, shared=shared, history=history
    )
    assert built.kept is not None  # asked for by `shared`
    events_view(con, str(shared / "events-*.parquet"))
    events = EventsRead(built.report, built.quarantine, built.stitching)
    return events, ShardedFeatures(client, built.kept, built.features)


# ------------------------------------------------------------------ the shards' tasks


def read_kept(
    file: str, nullable: frozenset[str], client_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """A shard's kept feature rows (or those of `client_ids`) as the one-process feature
    frame types them: a column with a null in any shard is typed as nullable here too."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(file)
    if client_ids is not None:
        table = table.filter(pc.is_in(pc.cast(table["client_id"], "string"), pa.array(client_ids)))
    return _typed_kept(table, nullable)


def iter_kept(file: str, nullable: frozenset[str], batch_rows: int) -> Iterator[pd.DataFrame]:
    """A shard's kept feature rows `batch_rows` at a time, typed as `read_kept` types them
    (one empty frame for a shard without clients): a task that works client by client
    holds one batch of rows, not its whole shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(file)
    found = False
    for batch in source.iter_batches(batch_size=batch_rows):
        found = True
        yield _typed_kept(pa.Table.from_batches([batch]), nullable)
    if not found:
        yield _typed_kept(source.schema_arrow.empty_table(), nullable)


def _typed_kept(table: pa.Table, nullable: frozenset[str]) -> pd.DataFrame:
    import pyarrow as pa

    frame = steps._feature_frame(table)
    for name in nullable:
        column = table[name]
        if column.null_count == 0 and _typed_by_nulls(column.type):
            padded = pa.chunked_array([*column.chunks, pa.nulls(1, column.type)], column.type)
            frame[name] = padded.to_pandas().iloc[:-1].to_numpy()
    return frame


def _typed_by_nulls(kind: pa.DataType) -> bool:
    """Arrow types whose pandas type depends on whether a null is present."""
    import pyarrow as pa

    return bool(pa.types.is_integer(kind) or pa.types.is_boolean(kind))


def _bin_counts(
    file: str, nullable: frozenset[str], reference: DriftReference, batch_rows: int
) -> dict[str, np.ndarray]:
    """The shard's rows per bin of `reference`, counted batch by batch (counts add up)."""
    from segmentation.drift import bin_counts, sum_counts

    return sum_counts(bin_counts(reference, part) for part in iter_kept(file, nullable, batch_rows))


def _predict_scores(
    file: str, nullable: frozenset[str], bundle: CltvBundle, batch_rows: int
) -> pd.DataFrame:
    """The shard's clients' own CLTV figures, scored batch by batch."""
    return pd.concat(
        [steps.predict_scores(bundle, part) for part in iter_kept(file, nullable, batch_rows)],
        ignore_index=True,
    )


def _assign_members(
    file: str,
    nullable: frozenset[str],
    batch_rows: int,
    scores: pd.DataFrame,
    previous: pd.DataFrame | None,
    clusters: ClusterBundle | None,
    rules: RuleSet,
    config: EngineConfig,
    as_of: date,
) -> pd.DataFrame:
    """The shard's clients' membership rows, assigned batch by batch (each client's row is
    its own: its features, scores and previous membership)."""
    parts = []
    for part in iter_kept(file, nullable, batch_rows):
        mine = pd.Index(part["client_id"])
        parts.append(
            steps.assign_members(
                part,
                _rows_of(scores, mine) if len(scores) else scores,
                clusters,
                rules,
                _rows_of(previous, mine) if previous is not None else None,
                as_of,
                config,
            )
        )
    kept = [part for part in parts if len(part)]
    return pd.concat(kept, ignore_index=True) if kept else parts[0]


def _journey_part(
    events_file: str,
    members: pd.DataFrame,
    config: EngineConfig,
    as_of: date,
    out: str,
    shard: int,
    shards: int,
) -> dict[str, str]:
    """One shard's per-client journey tables, from its events file, written to `out`."""
    from features.journey import journey_client_tables
    from pipelines.distributed import events_view, worker_connection

    with worker_connection(config, shards, f"journey-{shard}-") as (con, _):
        events_view(con, events_file)
        return journey_client_tables(con, as_of, members, out, shard, config.journey)


def _outcomes_part(
    events_file: str,
    since: pd.DataFrame,
    config: EngineConfig,
    as_of: date,
    shard: int,
    shards: int,
) -> pd.DataFrame:
    """One shard's members' outcomes since their entry, from its events file."""
    from features.outcomes import outcomes_since
    from pipelines.distributed import events_view, worker_connection

    with worker_connection(config, shards, f"outcomes-{shard}-") as (con, _):
        events_view(con, events_file)
        return outcomes_since(con, since, as_of)


def _rows_of(frame: pd.DataFrame, client_ids: pd.Index) -> pd.DataFrame:
    """The rows of `frame` (client_id a column) whose client is in `client_ids`."""
    return frame[frame["client_id"].isin(client_ids)].reset_index(drop=True)


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
