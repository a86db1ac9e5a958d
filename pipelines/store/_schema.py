"""The published tables and reader views: one definition, rendered for DuckDB and PostgreSQL."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pipelines.store._common import StoreArgumentError

__all__ = [
    "ADDED_COLUMNS",
    "ADDED_TABLES",
    "AS_OF_TABLES",
    "COLUMN_FILLS",
    "DESTINATION_DELIVERIES",
    "HISTORY",
    "HOLDOUT_OUTCOMES",
    "IDENTITY_MAP",
    "IDENTITY_MERGES",
    "IDENTITY_UNDO_HISTORY",
    "IDENTITY_UNDO_TRANSITIONS",
    "INTERNAL_TABLES",
    "JOURNEY_DROPOFFS",
    "JOURNEY_STAGES",
    "JOURNEY_TOUCHPOINTS",
    "MEMBERSHIP",
    "QUARANTINE",
    "QUARANTINE_IDENTIFIERS",
    "QUARANTINE_RAW",
    "READABLE",
    "RUNS",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_TABLE",
    "SCORES",
    "SEGMENTS",
    "TABLES",
    "TRANSITIONS",
    "TYPES",
    "VIEWS",
    "Table",
    "migration_statements",
    "validate_identifier",
]

SCHEMA_VERSION = 5

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Logical column types and how each backend spells them (the same types on both).
TYPES = {
    # Binary ("C") collation on PostgreSQL: the same ordering as DuckDB, and fast indexes.
    "text": {"duckdb": "VARCHAR", "postgresql": 'TEXT COLLATE "C"'},
    "date": {"duckdb": "DATE", "postgresql": "DATE"},
    "timestamp": {"duckdb": "TIMESTAMP", "postgresql": "TIMESTAMP"},
    "double": {"duckdb": "DOUBLE", "postgresql": "DOUBLE PRECISION"},
    "bigint": {"duckdb": "BIGINT", "postgresql": "BIGINT"},
    "integer": {"duckdb": "INTEGER", "postgresql": "INTEGER"},
    "boolean": {"duckdb": "BOOLEAN", "postgresql": "BOOLEAN"},
}


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return `name` when it is a plain lower-case SQL identifier, else raise
    StoreArgumentError (a ValueError) naming `what`."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise StoreArgumentError(
            f"{what} {name!r} is not a valid identifier: use lower-case letters, digits and"
            " underscores, starting with a letter or underscore, at most 63 characters"
        )
    return name


@dataclass(frozen=True)
class Table:
    """A published table: ordered (column, logical type) pairs and PostgreSQL indexes."""

    name: str
    columns: tuple[tuple[str, str], ...]
    # PostgreSQL indexes (suffix, columns, unique). Few and non-unique on the big tables: the
    # store validates uniqueness itself, and each index costs seconds per million rows loaded.
    pg_indexes: tuple[tuple[str, str, bool], ...] = ()
    # A primary key (both backends), for the small tables upserted by key.
    primary_key: str | None = None

    @property
    def column_names(self) -> list[str]:
        """The column names, in order."""
        return [name for name, _ in self.columns]

    def ddl(self, schema: str, dialect: str) -> list[str]:
        """CREATE TABLE (and, on PostgreSQL, CREATE INDEX) statements under `schema`."""
        cols = ", ".join(f"{name} {TYPES[kind][dialect]}" for name, kind in self.columns)
        if self.primary_key is not None:
            cols += f", PRIMARY KEY ({self.primary_key})"
        statements = [f"CREATE TABLE IF NOT EXISTS {schema}.{self.name} ({cols})"]
        if dialect == "postgresql":
            for suffix, columns, unique in self.pg_indexes:
                index = validate_identifier(f"{self.name}_{suffix}", "index name")
                kind = "UNIQUE INDEX" if unique else "INDEX"
                statements.append(
                    f"CREATE {kind} IF NOT EXISTS {index} ON {schema}.{self.name} ({columns})"
                )
        return statements


MEMBERSHIP = Table(
    "segment_membership",
    (
        ("client_id", "text"),
        ("segment_id", "text"),
        ("segment_name", "text"),
        ("segment_source", "text"),
        ("cluster_id", "integer"),
        ("confidence", "double"),
        ("lifecycle_stage", "text"),
        ("journey_stage", "text"),
        ("reason", "text"),
        ("valid_from", "date"),
        ("as_of", "date"),
        ("run_id", "text"),
        ("holdout", "boolean"),  # schema version 5: held out of campaigns
    ),
    (("client", "client_id", False),),
)
HISTORY = Table(
    "segment_history",
    (
        ("client_id", "text"),
        ("segment_id", "text"),
        ("lifecycle_stage", "text"),
        ("valid_from", "date"),
        ("valid_to", "date"),
        ("run_id", "text"),
    ),
    (("client", "client_id", False),),
)
TRANSITIONS = Table(
    "segment_transitions",
    (
        ("as_of", "date"),
        ("client_id", "text"),
        ("from_segment_id", "text"),
        ("to_segment_id", "text"),
        ("from_lifecycle", "text"),
        ("to_lifecycle", "text"),
        ("run_id", "text"),
    ),
    (("as_of", "as_of", False),),
)
SEGMENTS = Table(
    "segments",
    (
        ("segment_id", "text"),
        ("segment_name", "text"),
        ("kind", "text"),
        ("definition", "text"),
        ("size", "bigint"),
        ("mean_predicted_cltv", "double"),
        ("model_version", "text"),
        ("first_run_id", "text"),
        ("last_run_id", "text"),
    ),
    (),
)
SCORES = Table(
    "client_scores",
    (
        ("client_id", "text"),
        ("as_of", "date"),
        ("p_alive", "double"),
        ("p_purchase", "double"),
        ("expected_purchases", "double"),
        ("expected_avg_value", "double"),
        ("predicted_cltv", "double"),
        ("cltv_model", "text"),
        ("horizon_days", "integer"),
        ("model_version", "text"),
        ("run_id", "text"),
    ),
    (("client", "client_id", False),),
)
RUNS = Table(
    "runs",
    (
        ("run_id", "text"),
        ("as_of", "date"),
        ("started_at", "timestamp"),
        ("finished_at", "timestamp"),
        ("status", "text"),
        ("events_read", "bigint"),
        ("events_quarantined", "bigint"),
        ("clients", "bigint"),
        ("segments", "bigint"),
        ("cluster_model_version", "text"),
        ("cltv_model_version", "text"),
        ("mlflow_run_id", "text"),
        ("error", "text"),  # schema version 2: why a failed run failed (one line, masked)
    ),
    (("id", "run_id", True),),
)
# The raw text of a rejected event row (the event contract's columns, named here so that a
# column added to the contract changes the store only through a migration; a test checks
# that every contract column is kept), its source file, and for a malformed file line
# (reason malformed_line) the whole line and its number (schema version 2), since it has no
# fields to split. Version 4 adds the other identifiers of identity stitching and `detail`
# (why, in words, e.g. "linked to 2 client_id (limit 1)"; null for ordinary rejected rows).
_QUARANTINE_V1_RAW = (
    "client_id",
    "event_time",
    "event_type",
    "channel",
    "amount",
    "category",
    "sentiment",
    "event_id",
)
QUARANTINE_IDENTIFIERS = ("anonymous_id", "device_id", "email_hash", "phone_hash")
QUARANTINE_RAW = (*_QUARANTINE_V1_RAW, *QUARANTINE_IDENTIFIERS, "source_file", "raw_line")
QUARANTINE = Table(
    "quarantine",
    (
        ("run_id", "text"),
        ("reason", "text"),
        *((c, "text") for c in _QUARANTINE_V1_RAW),
        ("source_file", "text"),
        ("raw_line", "text"),
        ("line_number", "bigint"),
        *((c, "text") for c in QUARANTINE_IDENTIFIERS),
        ("detail", "text"),
    ),
    (("run", "run_id", False),),
)
# Identity stitching (schema version 4). The current identifier -> person map, replaced by
# every publish (emptied by a run that did no stitching), and the append-only merge log.
IDENTITY_MAP = Table(
    "identity_map",
    (
        ("id_type", "text"),
        ("id_value", "text"),
        ("person_id", "text"),
        ("first_seen", "timestamp"),
        ("last_seen", "timestamp"),
        ("as_of", "date"),
        ("run_id", "text"),
    ),
    (("person", "person_id", False), ("id", "id_type, id_value", False)),
)
IDENTITY_MERGES = Table(
    "identity_merges",
    (
        ("as_of", "date"),
        ("merged_id", "text"),
        ("into_id", "text"),
        ("evidence", "text"),
        ("run_id", "text"),
    ),
    (("merged", "merged_id", False),),
)
# Internal, not for tools: the history and transitions of the ids whose history a merge
# re-keyed (the continued merged id and its survivor), as they were just before, so that
# undoing that run (a re-run of the day, a rebuild) restores them exactly.
IDENTITY_UNDO_HISTORY = Table(
    "identity_undo_history",
    (("merge_as_of", "date"), ("into_id", "text"), *HISTORY.columns),
    (("as_of", "merge_as_of", False),),
)
IDENTITY_UNDO_TRANSITIONS = Table(
    "identity_undo_transitions",
    (("merge_as_of", "date"), *TRANSITIONS.columns),
    (("as_of", "merge_as_of", False),),
)
# The journey map (schema version 5), one set per as_of: the stage flow, the touchpoints of
# each stage and the drop-off points with their causes and moments of truth, per segment
# ('*': all clients). A run replaces its as_of's rows; the rows of other dates are history.
_BY_SEGMENT = (("segment", "as_of, segment_id", False),)
JOURNEY_STAGES = Table(
    "journey_stages",
    (
        ("as_of", "date"),
        ("segment_id", "text"),
        ("segment_name", "text"),
        ("stage", "text"),
        ("to_stage", "text"),
        ("clients", "bigint"),
        ("moved", "bigint"),
        ("conversion_rate", "double"),
        ("median_days", "double"),
        ("p90_days", "double"),
        ("stalled", "bigint"),
        ("stall_share", "double"),
        ("in_progress", "bigint"),
        ("events", "bigint"),
        ("sentiment_mean", "double"),
        ("sentiment_events", "bigint"),
        ("note", "text"),
        ("run_id", "text"),
    ),
    _BY_SEGMENT,
)
JOURNEY_TOUCHPOINTS = Table(
    "journey_touchpoints",
    (
        ("as_of", "date"),
        ("segment_id", "text"),
        ("segment_name", "text"),
        ("stage", "text"),
        ("event_type", "text"),
        ("channel", "text"),
        ("initiated_by", "text"),
        ("rank", "integer"),
        ("events", "bigint"),
        ("clients", "bigint"),
        ("reach", "double"),
        ("sentiment_mean", "double"),
        ("sentiment_events", "bigint"),
        ("negative_events", "bigint"),
        ("is_pain", "boolean"),
        ("note", "text"),
        ("run_id", "text"),
    ),
    _BY_SEGMENT,
)
JOURNEY_DROPOFFS = Table(
    "journey_dropoffs",
    (
        ("as_of", "date"),
        ("segment_id", "text"),
        ("segment_name", "text"),
        ("kind", "text"),
        ("rank", "integer"),
        ("stage", "text"),
        ("to_stage", "text"),
        ("event_type", "text"),
        ("channel", "text"),
        ("factor_kind", "text"),
        ("factor", "text"),
        ("clients", "bigint"),
        ("group_clients", "bigint"),
        ("group_with", "bigint"),
        ("other_clients", "bigint"),
        ("other_with", "bigint"),
        ("effect", "double"),
        ("effect_low", "double"),
        ("effect_high", "double"),
        ("note", "text"),
        ("run_id", "text"),
    ),
    _BY_SEGMENT,
)
# Campaign lift per segment (schema version 5): members held out of campaigns against the
# treated ones, one row per segment and as_of, replaced like the journey map.
HOLDOUT_OUTCOMES = Table(
    "holdout_outcomes",
    (
        ("as_of", "date"),
        ("segment_id", "text"),
        ("segment_name", "text"),
        ("treated_clients", "bigint"),
        ("holdout_clients", "bigint"),
        ("days_after_entry_mean", "double"),
        ("treated_purchases_mean", "double"),
        ("holdout_purchases_mean", "double"),
        ("purchases_diff", "double"),
        ("purchases_diff_low", "double"),
        ("purchases_diff_high", "double"),
        ("treated_spend_mean", "double"),
        ("holdout_spend_mean", "double"),
        ("spend_diff", "double"),
        ("spend_diff_low", "double"),
        ("spend_diff_high", "double"),
        ("note", "text"),
        ("run_id", "text"),
    ),
    _BY_SEGMENT,
)
# What the destinations were sent (schema version 5): one row per batch, upserted by its
# idempotency key by the delivery code after a publish, never deleted by re-runs or rebuilds
# (a batch that was sent stays sent).
DESTINATION_DELIVERIES = Table(
    "destination_deliveries",
    (
        ("batch_id", "text"),
        ("run_id", "text"),
        ("as_of", "date"),
        ("destination", "text"),
        ("segment_id", "text"),
        ("kind", "text"),
        ("batch_number", "integer"),
        ("clients", "integer"),
        ("status", "text"),
        ("attempts", "integer"),
        ("first_attempt_at", "timestamp"),
        ("last_attempt_at", "timestamp"),
        ("delivered_at", "timestamp"),
        ("error", "text"),
        ("location", "text"),
    ),
    (("as_of", "as_of, destination", False),),
    primary_key="batch_id",
)
SCHEMA_VERSION_TABLE = Table(
    "schema_version", (("version", "integer"), ("applied_at", "timestamp"))
)

# The published tables (readable by tools), and the store's own bookkeeping tables.
TABLES = (
    MEMBERSHIP,
    HISTORY,
    TRANSITIONS,
    SEGMENTS,
    SCORES,
    RUNS,
    QUARANTINE,
    IDENTITY_MAP,
    IDENTITY_MERGES,
    JOURNEY_STAGES,
    JOURNEY_TOUCHPOINTS,
    JOURNEY_DROPOFFS,
    HOLDOUT_OUTCOMES,
    DESTINATION_DELIVERIES,
)
# The per-as_of tables a publish fills from optional request frames: a re-run replaces its
# as_of's rows, a rebuild deletes the rows of the dates it undoes.
AS_OF_TABLES = (JOURNEY_STAGES, JOURNEY_TOUCHPOINTS, JOURNEY_DROPOFFS, HOLDOUT_OUTCOMES)
INTERNAL_TABLES = (IDENTITY_UNDO_HISTORY, IDENTITY_UNDO_TRANSITIONS)

_LATEST = "(SELECT max(as_of) FROM {v}runs WHERE status = 'success')"

# Reader views for marketing tools (documented in docs/store.md).
VIEWS = {
    "v_segment_members": """
        SELECT m.segment_id, m.segment_name, s.kind AS segment_kind, m.client_id,
               m.segment_source, m.cluster_id, m.confidence, m.lifecycle_stage,
               m.journey_stage, m.reason, m.holdout, m.valid_from, m.as_of, m.run_id
        FROM {v}segment_membership m LEFT JOIN {v}segments s ON s.segment_id = m.segment_id
    """,
    "v_todays_transitions": """
        SELECT t.as_of, t.client_id, t.from_segment_id, sf.segment_name AS from_segment_name,
               t.to_segment_id, st.segment_name AS to_segment_name,
               t.from_lifecycle, t.to_lifecycle,
               CASE WHEN t.from_segment_id IS NULL THEN 'entry'
                    WHEN t.to_segment_id IS NULL THEN 'exit'
                    WHEN t.from_segment_id <> t.to_segment_id THEN 'move'
                    ELSE 'lifecycle' END AS kind,
               t.run_id
        FROM {v}segment_transitions t
        LEFT JOIN {v}segments sf ON sf.segment_id = t.from_segment_id
        LEFT JOIN {v}segments st ON st.segment_id = t.to_segment_id
        WHERE t.as_of = """
    + _LATEST
    + """
    """,
    "v_todays_entries_exits": """
        WITH latest AS (SELECT """
    + _LATEST
    + """ AS as_of),
        moves AS (
            SELECT t.to_segment_id AS segment_id, 1 AS entered, 0 AS exited
            FROM {v}segment_transitions t, latest
            WHERE t.as_of = latest.as_of AND t.to_segment_id IS NOT NULL
              AND t.to_segment_id IS DISTINCT FROM t.from_segment_id
            UNION ALL
            SELECT t.from_segment_id, 0, 1
            FROM {v}segment_transitions t, latest
            WHERE t.as_of = latest.as_of AND t.from_segment_id IS NOT NULL
              AND t.from_segment_id IS DISTINCT FROM t.to_segment_id
        ),
        counts AS (
            SELECT segment_id, sum(entered) AS entries, sum(exited) AS exits
            FROM moves GROUP BY segment_id
        )
        SELECT latest.as_of, s.segment_id, s.segment_name, s.size,
               CAST(coalesce(c.entries, 0) AS BIGINT) AS entries,
               CAST(coalesce(c.exits, 0) AS BIGINT) AS exits
        FROM latest, {v}segments s LEFT JOIN counts c ON c.segment_id = s.segment_id
        WHERE latest.as_of IS NOT NULL
    """,
    "v_client_current": """
        SELECT m.client_id, m.segment_id, m.segment_name, m.segment_source, m.cluster_id,
               m.confidence, m.lifecycle_stage, m.journey_stage, m.reason, m.holdout,
               m.valid_from, c.p_alive, c.p_purchase, c.expected_purchases,
               c.expected_avg_value, c.predicted_cltv, c.cltv_model, c.horizon_days,
               c.model_version AS cltv_model_version, m.as_of, m.run_id
        FROM {v}segment_membership m LEFT JOIN {v}client_scores c ON c.client_id = m.client_id
    """,
}

READABLE = (*(t.name for t in TABLES), "schema_version", *VIEWS)

# Columns added after version 1, by the version that adds them: (version, table, column).
# Version 1 creates the tables without them, so a store migrates the same way from any version.
ADDED_COLUMNS: tuple[tuple[int, Table, str], ...] = (
    (2, RUNS, "error"),
    (2, QUARANTINE, "raw_line"),
    (2, QUARANTINE, "line_number"),
    (3, SCORES, "p_purchase"),
    (3, SCORES, "cltv_model"),
    *((4, QUARANTINE, column) for column in (*QUARANTINE_IDENTIFIERS, "detail")),
    (5, MEMBERSHIP, "holdout"),
)
# The value an added column takes in the rows a store already holds (else null): the
# members published before version 5 were held out of nothing.
COLUMN_FILLS: dict[tuple[str, str], str] = {(MEMBERSHIP.name, "holdout"): "false"}
# Tables added after version 1, by the version that adds them: its migration creates them
# (with their indexes), version 1 does not.
ADDED_TABLES: tuple[tuple[int, Table], ...] = (
    (4, IDENTITY_MAP),
    (4, IDENTITY_MERGES),
    (4, IDENTITY_UNDO_HISTORY),
    (4, IDENTITY_UNDO_TRANSITIONS),
    *((5, table) for table in (*AS_OF_TABLES, DESTINATION_DELIVERIES)),
)
# Views whose body changed after version 1, by the version that changes them (its migration
# re-creates them).
CHANGED_VIEWS: dict[int, tuple[str, ...]] = {
    3: ("v_client_current",),
    5: ("v_segment_members", "v_todays_transitions", "v_client_current"),
}
# The bodies later versions replaced, by (view, version that created them): a store migrated
# step by step gets at each step the body that names only the columns it has then.
_OLD_VIEWS: dict[tuple[str, int], str] = {
    ("v_segment_members", 1): """
        SELECT m.segment_id, m.segment_name, s.kind AS segment_kind, m.client_id,
               m.segment_source, m.cluster_id, m.confidence, m.lifecycle_stage,
               m.journey_stage, m.reason, m.valid_from, m.as_of, m.run_id
        FROM {v}segment_membership m LEFT JOIN {v}segments s ON s.segment_id = m.segment_id
    """,
    ("v_todays_transitions", 1): """
        SELECT t.as_of, t.client_id, t.from_segment_id, t.to_segment_id,
               t.from_lifecycle, t.to_lifecycle,
               CASE WHEN t.from_segment_id IS NULL THEN 'entry'
                    WHEN t.to_segment_id IS NULL THEN 'exit'
                    WHEN t.from_segment_id <> t.to_segment_id THEN 'move'
                    ELSE 'lifecycle' END AS kind,
               t.run_id
        FROM {v}segment_transitions t
        WHERE t.as_of = """
    + _LATEST
    + """
    """,
    ("v_client_current", 1): """
        SELECT m.client_id, m.segment_id, m.segment_name, m.segment_source, m.cluster_id,
               m.confidence, m.lifecycle_stage, m.journey_stage, m.reason, m.valid_from,
               c.p_alive, c.expected_purchases, c.expected_avg_value, c.predicted_cltv,
               c.horizon_days, c.model_version AS cltv_model_version, m.as_of, m.run_id
        FROM {v}segment_membership m LEFT JOIN {v}client_scores c ON c.client_id = m.client_id
    """,
    ("v_client_current", 3): """
        SELECT m.client_id, m.segment_id, m.segment_name, m.segment_source, m.cluster_id,
               m.confidence, m.lifecycle_stage, m.journey_stage, m.reason, m.valid_from,
               c.p_alive, c.p_purchase, c.expected_purchases, c.expected_avg_value,
               c.predicted_cltv, c.cltv_model, c.horizon_days,
               c.model_version AS cltv_model_version, m.as_of, m.run_id
        FROM {v}segment_membership m LEFT JOIN {v}client_scores c ON c.client_id = m.client_id
    """,
}


def migration_statements(version: int, schema: str, dialect: str) -> list[str]:
    """The DDL that takes a store from `version - 1` to `version`.

    `schema` is the qualified schema prefix. View bodies name tables unqualified on DuckDB
    (a DuckDB view binds in its own schema, and a file named like its schema would make
    `schema.table` ambiguous) and schema-qualified on PostgreSQL."""
    if version == 1:
        return _version_1(schema, dialect)
    added = [(table, column) for v, table, column in ADDED_COLUMNS if v == version]
    tables = [table for v, table in ADDED_TABLES if v == version]
    if not added and not tables and version not in CHANGED_VIEWS:
        raise ValueError(f"no migration to schema version {version}")
    statements = []
    for table in tables:
        statements.extend(table.ddl(schema, dialect))
    for table, column in added:
        kind = TYPES[dict(table.columns)[column]][dialect]
        statements.append(
            f"ALTER TABLE {schema}.{table.name} ADD COLUMN IF NOT EXISTS {column} {kind}"
        )
        fill = COLUMN_FILLS.get((table.name, column))
        if fill is not None:
            statements.append(
                f"UPDATE {schema}.{table.name} SET {column} = {fill} WHERE {column} IS NULL"
            )
    for name in CHANGED_VIEWS.get(version, ()):
        statements.extend(_view_ddl(schema, dialect, name, _view_body(name, version)))
    return statements


def _version_1(schema: str, dialect: str) -> list[str]:
    """The first schema: the tables of version 1 without the columns later versions add, and
    the views."""
    later = {(table.name, column) for _, table, column in ADDED_COLUMNS}
    later_tables = {table.name for _, table in ADDED_TABLES}
    statements: list[str] = []
    for table in (*TABLES, *INTERNAL_TABLES):
        if table.name in later_tables:
            continue
        columns = tuple(c for c in table.columns if (table.name, c[0]) not in later)
        statements.extend(replace(table, columns=columns).ddl(schema, dialect))
    for name in VIEWS:
        statements.extend(_view_ddl(schema, dialect, name, _view_body(name, 1)))
    return statements


def _view_body(name: str, version: int) -> str:
    """The body of view `name` in a store of schema `version`."""
    changed = [v for v, names in CHANGED_VIEWS.items() if name in names and v <= version]
    return _OLD_VIEWS.get((name, max([1, *changed])), VIEWS[name])


def _view_ddl(schema: str, dialect: str, name: str, body: str) -> list[str]:
    prefix = "" if dialect == "duckdb" else f"{schema}."
    return [
        f"DROP VIEW IF EXISTS {schema}.{name}",
        f"CREATE VIEW {schema}.{name} AS {body.format(v=prefix).strip()}",
    ]
