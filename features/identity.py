"""Identity stitching: the identifiers seen together become one person, conservatively.

A site visitor is a cookie until they log in, the app knows a device, the store a loyalty
phone, the call center an email. The identity graph has one node per identifier (type and
value) and an edge between identifiers seen on the same event or linked by the CRM's links
file; its connected components (scipy.sparse.csgraph) are persons. Conservative, in three ways:

- an identifier linked to more distinct identifiers of a type than `identity.max_links`
  allows (a shared family tablet seen with two client ids, a call-center default email on
  hundreds of phones, a test account) merges nobody: it is quarantined as
  `identifier_over_linked`, with the count, and its events stay with the row's other
  identifiers;
- two known client ids are never merged through other identifiers unless
  `identity.merge_known_clients` says so: only a links-file row of id_type `client_id` merges
  them. Where other identifiers connect several known clients, each identifier goes to the
  client it is closest to in the graph; one equally close to two is quarantined as
  `identifier_ambiguous`;
- identifier values that identify nobody (placeholders, a repeated character, too long) were
  already ignored by the event load (`features.identifiers`).

A person's id is stable: the known client id when the component has one (the earliest seen
when a links-file row merged several), otherwise ``anon_`` + 16 hex digits of the md5 of the
component's earliest identifier (ties between identifiers first seen on the same event go by
the md5 of `type:value`). Point in time: the graph as of D reads only events and links
up to the end of D. Merges are found by comparing tonight's persons with the persons of the
graph as of the previous run's date, computed from the same input, so they do not depend on
what the store holds; an id merged before (`merged_before`) never comes back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

from configs import CONTRACT_COLUMNS, ID_TYPES, IdentityConfig
from features.events import EVENT_SCHEMA, EventContractError, ValidationReport, day_end
from features.identifiers import IdentifierRules, ignored_reason_sql, normalized_sql

__all__ = [
    "IDENTITY_MAP_COLUMNS",
    "MERGE_COLUMNS",
    "Graph",
    "Resolution",
    "Stitching",
    "identifier_columns_of",
    "identity_map_summary",
    "needs_stitching",
    "person_ids",
    "resolve_graph",
    "stitch_events",
]

log = logging.getLogger(__name__)

IDENTITY_MAP_COLUMNS = ("id_type", "id_value", "person_id", "first_seen", "last_seen")
MERGE_COLUMNS = ("merged_id", "into_id", "evidence")
# Which identifier of an event row decides its person when they disagree (a row's identifiers
# are normally one person; after a split the most stable one wins).
PRIORITY = ("client_id", "email_hash", "phone_hash", "device_id", "anonymous_id")
ANON_PREFIX = "anon_"
OK, OVER_LINKED, AMBIGUOUS, ABSENT = 0, 1, 2, 3
STATUS_REASON = {OVER_LINKED: "identifier_over_linked", AMBIGUOUS: "identifier_ambiguous"}
_NEVER = np.iinfo(np.int64).min  # the time of an undated link: it counts from the start
_SIZE_BINS = ((1, "1"), (2, "2"), (3, "3"), (5, "4-5"), (10, "6-10"), (None, "11+"))


@dataclass(frozen=True)
class Graph:
    """The identity graph: node types (index into ID_TYPES) and first-seen times (epoch
    microseconds, `_NEVER` for undated links), and deduplicated undirected edges (a < b) with
    the time they were first seen and whether a links-file row of id_type client_id made them
    (a merge of two known clients).

    Nodes are numbered earliest first: by when they were first seen on an event or a dated
    link, ties by the md5 of `type:value` (`_nodes`). The lowest node of a group is its
    earliest identifier: the known client a merged group keeps, the id of an anonymous one."""

    node_type: np.ndarray
    node_first: np.ndarray
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_first: np.ndarray
    edge_strong: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.node_type.size)


@dataclass(frozen=True)
class Resolution:
    """The persons of a graph as of a cutoff: per node its status (OK, OVER_LINKED, AMBIGUOUS,
    ABSENT), its person's representative node (-1 unless OK: a client node, or the earliest
    node of an anonymous component), and for a quarantined node the identifier type and count
    that broke the limit (or the number of clients equally close)."""

    status: np.ndarray
    rep: np.ndarray
    worst_type: np.ndarray
    worst_count: np.ndarray


@dataclass(frozen=True)
class Stitching:
    """What stitching the events as of a date gave: the identity map (one row per usable
    identifier, `IDENTITY_MAP_COLUMNS`), the merges since the previous run (`MERGE_COLUMNS`),
    the identifiers quarantined, the events quarantined for lack of a usable identifier, and
    a summary for the report and the `identity` command."""

    as_of: date
    identity_map: pa.Table
    merges: pd.DataFrame
    quarantined_identifiers: pd.DataFrame
    events_quarantined: dict[str, int]
    summary: dict[str, Any] = field(default_factory=dict)


def identifier_columns_of(con: duckdb.DuckDBPyConnection, table: str = "events") -> list[str]:
    """The identifier columns (client_id first) of the loaded events table."""
    names = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
    return [c for c in ID_TYPES if c in names]


def needs_stitching(
    con: duckdb.DuckDBPyConnection, links_path: str | None, table: str = "events"
) -> bool:
    """True when the events carry identifiers besides client_id, or a links file is given."""
    return bool(links_path) or len(identifier_columns_of(con, table)) > 1


def stitch_events(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    identity: IdentityConfig,
    *,
    links_path: str | os.PathLike[str] | None = None,
    previous_as_of: date | None = None,
    merged_before: Mapping[str, str] | None = None,
    events_table: str = "events",
    quarantine_table: str = "quarantine",
) -> Stitching:
    """Resolve the identifiers of the loaded events into persons as of `as_of` and rewrite
    `events_table` on person ids.

    After this, `events_table` holds the events up to the end of `as_of` with `client_id` set
    to the person id and no identifier columns: the feature build runs on it unchanged.
    Events whose every identifier was quarantined (over-linked or ambiguous) move to
    `quarantine_table` with that reason; so does one row per quarantined identifier (its
    value in its own column, the count in `detail`) and each unusable links-file row.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        Holds `events_table` (as `features.events.load_events` leaves it) and
        `quarantine_table`.
    as_of : datetime.date
        Only events and links up to the end of this day count.
    identity : IdentityConfig
        Limits, placeholders and whether known clients may merge through other identifiers.
    links_path : str or os.PathLike, optional
        A Parquet or CSV file with `id_type`, `id_value`, `client_id` and optionally
        `linked_at` (UTC; a link without it counts from the start).
    previous_as_of : datetime.date, optional
        The date of the last published run: merges are the persons of that date's graph that
        are part of another person tonight. None on a first run: only merges of known client
        ids (through the links file) are reported.
    merged_before : mapping of str to str, optional
        Ids merged by earlier runs -> the id they went into; such an id never comes back as
        a person of its own.

    Returns
    -------
    Stitching
    """
    rules = IdentifierRules.from_config(identity)
    cutoff = day_end(as_of)
    ids = identifier_columns_of(con, events_table)
    seconds: dict[str, float] = {}
    clock = _stopwatch(seconds)
    links = _load_links(con, links_path, rules, cutoff, quarantine_table) if links_path else None
    _tuples(con, events_table, ids, cutoff)
    clock("tuples")
    n_nodes, ignored = _nodes(con, ids, links is not None, rules)
    clock("nodes")
    graph, tuple_nodes = _graph(con, ids, links is not None, n_nodes)
    clock("graph")
    limits = np.array([identity.max_links[t] for t in ID_TYPES], dtype=np.int64)
    tonight = resolve_graph(graph, _micros(cutoff), limits, identity.merge_known_clients)
    before = (
        resolve_graph(graph, _micros(day_end(previous_as_of)), limits, identity.merge_known_clients)
        if previous_as_of is not None and previous_as_of < as_of
        else None
    )
    clock("resolve")
    names = _PersonNames.of(con, tonight.rep, merged_before or {})
    merges = _merges(con, graph, tonight, before, names, merged_before or {}, previous_as_of)
    clock("merges")
    quarantined_ids = _quarantine_identifiers(con, tonight, limits, quarantine_table)
    moved = _rewrite_events(con, events_table, quarantine_table, ids, tuple_nodes, tonight, cutoff)
    clock("rewrite")
    identity_map = _identity_map(con, tonight)
    summary = _summary(identity_map, quarantined_ids, merges, moved, links)
    summary["ignored_identifiers"] = ignored
    clock("summary")
    summary["seconds"] = seconds
    _drop_temp(con)
    return Stitching(as_of, identity_map, merges, quarantined_ids, moved, summary)


_ANONYMOUS = ID_TYPES.index("anonymous_id")


def resolve_graph(
    graph: Graph, cutoff_us: int, max_links: np.ndarray, merge_known_clients: bool = False
) -> Resolution:
    """The persons of `graph` from the nodes and edges first seen before `cutoff_us`.

    `max_links[t]` is the most distinct neighbours of type t (index into ID_TYPES) a node may
    have; a node past any limit is OVER_LINKED and takes no part. Known clients (type 0) are
    merged only through strong edges, unless `merge_known_clients`; where other identifiers
    connect several known clients, every node joins the client nearest to it (breadth-first,
    all clients at once) and a node equally near two is AMBIGUOUS.
    """
    n = graph.n_nodes
    n_types = len(ID_TYPES)
    present = graph.node_first < cutoff_us
    live = graph.edge_first < cutoff_us
    a, b = graph.edge_a[live], graph.edge_b[live]
    strong = graph.edge_strong[live]
    # Distinct neighbours per (node, neighbour type); strong edges (CRM merges) do not count.
    weak = ~strong
    ends = np.concatenate([a[weak], b[weak]])
    others = np.concatenate([b[weak], a[weak]])
    counts = (
        np.bincount(
            ends.astype(np.int64) * n_types + graph.node_type[others], minlength=n * n_types
        )
        .astype(np.int32)
        .reshape(n, n_types)
    )
    status = np.where(present, OK, ABSENT).astype(np.int8)
    over = counts > max_links[None, :]
    if merge_known_clients:  # then a client-to-client path merges anyway: no client limit
        over[:, 0] = False
    # A known client's anonymous ids (cookies, sessions) grow with its activity: a heavy
    # user logged in over 20,000 sessions is one person, not a shared identifier. Limiting
    # them shut the busiest clients out and split their events into one anonymous person per
    # session. Their devices, emails and phones stay limited (a test or staff account).
    over[graph.node_type == 0, _ANONYMOUS] = False
    status[present & over.any(axis=1)] = OVER_LINKED
    # For a quarantined node: the type whose limit it passes most, and its count.
    worst_type = np.zeros(n, dtype=np.int8)
    worst_count = np.zeros(n, dtype=np.int64)
    bad = np.flatnonzero(status == OVER_LINKED)
    if bad.size:
        worst_type[bad] = np.argmax(counts[bad] / max_links[None, :], axis=1)
        worst_count[bad] = counts[bad, worst_type[bad]]
    del counts, over
    keep = (status[a] == OK) & (status[b] == OK)
    a, b, strong = a[keep], b[keep], strong[keep]
    is_client = (graph.node_type == 0) & (status == OK)
    if merge_known_clients:
        owner = np.full(n, -1, dtype=np.int64)
        comp = _components(n, a, b)
    else:
        if strong.any():  # links-file merges of known clients: the earliest of each group
            owner = _earliest_in(_components(n, a[strong], b[strong]), is_client)
        else:  # every known client is its own owner
            owner = np.where(is_client, np.arange(n), -1)
        comp = _components(n, a, b)
    rep = np.full(n, -1, dtype=np.int64)
    # Per component: its distinct owners (canonical known clients), or none.
    client_comp = comp[is_client]
    if merge_known_clients:
        first_client = _earliest_in(comp, is_client)
        owner[is_client] = first_client[is_client]
        pairs = np.unique(client_comp * n + first_client[is_client])
    else:
        pairs = np.unique(client_comp * n + owner[is_client])
    owners = np.stack([pairs // n, pairs % n])
    n_owners = np.bincount(owners[0], minlength=n)
    comp_owner = np.full(n, -1, dtype=np.int64)
    single = n_owners[owners[0]] == 1
    comp_owner[owners[0][single]] = owners[1][single]
    earliest = _earliest_in(comp, status == OK)
    ok = status == OK
    rep[ok] = np.where(comp_owner[comp[ok]] >= 0, comp_owner[comp[ok]], earliest[ok])
    conflicted = ok & (n_owners[comp] > 1)
    if conflicted.any():
        near, tied, n_tied = _nearest_owner(n, a, b, conflicted, is_client, owner)
        rep[conflicted] = near[conflicted]
        status[tied] = AMBIGUOUS
        rep[tied] = -1
        worst_type[tied] = 0
        worst_count[tied] = n_tied[tied]
    return Resolution(status, rep, worst_type, worst_count)


@dataclass(frozen=True)
class _PersonNames:
    """The person id of each representative node, registered in DuckDB as `_id_rep_name`
    (rep, person_id) so that the big tables are joined to it there."""

    reps: np.ndarray
    names: np.ndarray

    @classmethod
    def of(
        cls, con: duckdb.DuckDBPyConnection, rep: np.ndarray, merged_before: Mapping[str, str]
    ) -> _PersonNames:
        reps = np.flatnonzero(np.bincount(rep[rep >= 0], minlength=rep.size))  # sorted, unique
        names = _resolve_merged(person_ids(con, reps, "_id_nodes"), merged_before)
        con.register(
            "_id_rep_name",
            pa.table(
                {"rep": pa.array(reps, pa.int64()), "person_id": pa.array(names, pa.string())}
            ),
        )
        return cls(reps, names)

    def of_reps(self, reps: np.ndarray) -> np.ndarray:
        """The person ids of representative nodes (each one of `self.reps`)."""
        return self.names[np.searchsorted(self.reps, reps)]


def person_ids(con: duckdb.DuckDBPyConnection, reps: np.ndarray, nodes: str) -> np.ndarray:
    """The person id a representative node gives: its value for a client id, else ``anon_``
    + 16 hex digits of md5(`type:value`) (an anonymous component's earliest identifier).
    `reps` are sorted unique node numbers of the `nodes` table."""
    if not reps.size:
        return np.empty(0, dtype=object)
    con.register("_id_reps", pa.table({"node": pa.array(reps, pa.int64())}))
    names = con.sql(
        f"""SELECT CASE WHEN n.id_type = 'client_id' THEN n.id_value
                    ELSE '{ANON_PREFIX}' || left(md5(n.id_type || ':' || n.id_value), 16) END
                    AS person_id
        FROM _id_reps r JOIN {nodes} n ON n.node = r.node ORDER BY r.node"""
    ).to_arrow_table()["person_id"]
    con.unregister("_id_reps")
    return names.to_numpy(zero_copy_only=False)


# -- the graph from the events -------------------------------------------------------------


def _tuples(con: duckdb.DuckDBPyConnection, table: str, ids: list[str], cutoff: datetime) -> None:
    """The distinct combinations of identifier values of the events up to the cutoff, with
    how many events carry each and when it was first and last seen (`_id_tuples`, numbered
    `tid`). Values are judged usable later, once per distinct value (`_nodes`)."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _id_tuples AS
        SELECT row_number() OVER () - 1 AS tid, {_tuple_hash(ids)} AS h, * FROM (
            SELECT {", ".join(ids)}, count(*) AS n,
                   min(event_time) AS first_seen, max(event_time) AS last_seen
            FROM {table} WHERE event_time < ? GROUP BY ALL
        )""",
        [cutoff],
    )


def _tuple_hash(ids: list[str], alias: str = "") -> str:
    """A 64-bit hash of a row's identifier values: the events find their combination by this
    one integer (a hash join on one column instead of five text columns; `_rewrite_events`
    checks that no two combinations share a hash)."""
    return f"hash({', '.join(alias + c for c in ids)})"


def _nodes(
    con: duckdb.DuckDBPyConnection, ids: list[str], with_links: bool, rules: IdentifierRules
) -> tuple[int, dict[str, int]]:
    """`_id_nodes`: one row per usable identifier (type, value), numbered earliest first
    (`Graph`). A value that identifies nobody (`features.identifiers`) is left out; returns
    the node count and the events carrying such values, by `type:reason`.

    The rules run once per distinct value, not once per event: a repeated-character test on
    every identifier of 20M events costs DuckDB about 30 s, on the distinct values about 1 s."""
    parts = [
        f"SELECT '{c}' AS id_type, {c} AS id_value, first_seen, last_seen FROM _id_tuples"
        f" WHERE {c} IS NOT NULL"
        for c in ids
    ]
    if with_links:
        parts += [
            "SELECT id_type, id_value, linked_at, linked_at FROM _id_links",
            "SELECT 'client_id', client_id, linked_at, linked_at FROM _id_links",
        ]
    type_order = " ".join(f"WHEN '{t}' THEN {i}" for i, t in enumerate(ID_TYPES))
    reason = " ".join(
        f"WHEN '{t}' THEN {ignored_reason_sql('id_value', t, rules)}" for t in ID_TYPES
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _id_values AS
        SELECT id_type, id_value, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
               bool_or(first_seen IS NULL) AS undated
        FROM ({" UNION ALL ".join(parts)}) GROUP BY id_type, id_value"""
    )
    # Only values that could be ignored are judged (short, long, or starting and ending
    # alike or with a separator): the full test on every value costs seconds per million.
    seps = ", ".join(f"'{c}'" for c in "-_.:/ ")
    longest = max((len(p.encode()) for p in rules.placeholders), default=0)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _id_ignored AS
        SELECT id_type, id_value, reason FROM (
            SELECT id_type, id_value, CASE id_type {reason} END AS reason FROM _id_values
            WHERE strlen(id_value) <= {max(longest, 1)} OR strlen(id_value) > {rules.max_length}
               OR left(id_value, 1) = right(id_value, 1)
               OR left(id_value, 1) IN ({seps}) OR right(id_value, 1) IN ({seps})
        ) WHERE reason IS NOT NULL"""
    )
    # Nodes are numbered earliest first, ties by the md5 of the identifier: the resolution's
    # order without a sort of millions of strings.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _id_nodes AS
        SELECT v.id_type, v.id_value, v.first_seen, v.last_seen, v.undated,
               CAST(CASE v.id_type {type_order} END AS TINYINT) AS type_code,
               row_number() OVER (
                   ORDER BY coalesce(epoch_us(v.first_seen), {_NEVER}),
                            md5_number_lower(v.id_type || ':' || v.id_value)
               ) - 1 AS node
        FROM _id_values v ANTI JOIN _id_ignored i
            ON i.id_type = v.id_type AND i.id_value = v.id_value"""
    )
    con.execute("DROP TABLE _id_values")
    ignored: dict[str, int] = {}
    for c in ids:
        for why, n in con.execute(
            f"SELECT i.reason, sum(t.n) FROM _id_tuples t JOIN _id_ignored i"
            f" ON i.id_type = '{c}' AND i.id_value = t.{c} GROUP BY i.reason"
        ).fetchall():
            ignored[f"{c}:{why}"] = int(n)
    n_nodes = int(con.execute("SELECT count(*) FROM _id_nodes").fetchall()[0][0])
    return n_nodes, dict(sorted(ignored.items()))


def _graph(
    con: duckdb.DuckDBPyConnection, ids: list[str], with_links: bool, n_nodes: int
) -> tuple[Graph, dict[str, np.ndarray]]:
    """The graph's arrays, and each combination's node per identifier column (-1: none)."""
    joins = " ".join(
        f"LEFT JOIN _id_nodes n{k} ON n{k}.id_type = '{c}' AND n{k}.id_value = t.{c}"
        for k, c in enumerate(ids)
    )
    selected = ", ".join(f"coalesce(n{k}.node, -1) AS {c}" for k, c in enumerate(ids))
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _id_tn AS"
        f" SELECT t.tid, {selected}, epoch_us(t.first_seen) AS first_us FROM _id_tuples t {joins}"
    )
    tuples = con.sql(f"SELECT {', '.join(ids)} FROM _id_tn ORDER BY tid").to_arrow_table()
    tuple_nodes = {c: tuples[c].to_numpy().astype(np.int32) for c in ids}
    del tuples
    # Every pair of identifiers seen on one event, and the links: one edge per node pair,
    # first seen at its earliest (a group-by in DuckDB, not a sort of tens of millions).
    pairs = [
        f"SELECT {ci} AS x, {cj} AS y, first_us AS t, false AS strong FROM _id_tn"
        f" WHERE {ci} >= 0 AND {cj} >= 0"
        for i, ci in enumerate(ids)
        for cj in ids[i + 1 :]
    ]
    if with_links:
        pairs.append(
            f"""SELECT a.node, c.node, coalesce(epoch_us(l.linked_at), {_NEVER}),
                       l.id_type = 'client_id'
            FROM _id_links l
            JOIN _id_nodes a ON a.id_type = l.id_type AND a.id_value = l.id_value
            JOIN _id_nodes c ON c.id_type = 'client_id' AND c.id_value = l.client_id
            WHERE a.node <> c.node"""
        )
    if pairs:
        edges = con.sql(
            f"""SELECT least(x, y) AS a, greatest(x, y) AS b, min(t) AS t, bool_or(strong) AS s
            FROM ({" UNION ALL ".join(pairs)}) GROUP BY 1, 2"""
        ).to_arrow_table()
        a = edges["a"].to_numpy().astype(np.int64)
        b = edges["b"].to_numpy().astype(np.int64)
        t = edges["t"].to_numpy().astype(np.int64)
        strong = edges["s"].to_numpy(zero_copy_only=False).astype(bool)
        del edges
    else:
        a = b = t = np.empty(0, np.int64)
        strong = np.empty(0, bool)
    con.execute("DROP TABLE _id_tn")
    nodes = con.sql(
        f"SELECT type_code, CASE WHEN undated THEN {_NEVER} ELSE epoch_us(first_seen) END"
        " AS first_us FROM _id_nodes ORDER BY node"
    ).to_arrow_table()
    graph = Graph(
        node_type=nodes["type_code"].to_numpy().astype(np.int8),
        node_first=nodes["first_us"].to_numpy().astype(np.int64),
        edge_a=a,
        edge_b=b,
        edge_first=t,
        edge_strong=strong,
    )
    return graph, tuple_nodes


# -- resolution helpers --------------------------------------------------------------------


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected component label of every node (isolated nodes are their own component)."""
    matrix = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(matrix, directed=False)
    return labels.astype(np.int64)


def _earliest_in(labels: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Per node, the lowest (earliest: `Graph`) eligible node of its label, -1 when none."""
    n = labels.size
    lowest = np.full(n, n, dtype=np.int64)
    idx = np.flatnonzero(eligible)
    np.minimum.at(lowest, labels[idx], idx)
    found = lowest[labels]
    return np.where(found < n, found, -1)


def _nearest_owner(
    n: int,
    a: np.ndarray,
    b: np.ndarray,
    conflicted: np.ndarray,
    is_client: np.ndarray,
    owner: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In the components that hold several known clients: each node's nearest client owner
    (breadth-first from all clients at once), whether it is tied between owners, and for a
    tied node how many owners are equally near."""
    nodes = np.flatnonzero(conflicted)
    local = np.full(n, -1, dtype=np.int64)
    local[nodes] = np.arange(nodes.size)
    inside = (local[a] >= 0) & (local[b] >= 0)
    la, lb = local[a[inside]], local[b[inside]]
    m = nodes.size
    matrix = coo_matrix((np.ones(la.size), (la, lb)), shape=(m, m)).tocsr()
    sources = local[np.flatnonzero(is_client & conflicted)]
    dist, _, src = dijkstra(
        matrix,
        directed=False,
        indices=sources,
        unweighted=True,
        min_only=True,
        return_predecessors=True,
    )
    own = owner[nodes[src]]  # the canonical client of the nearest source
    tied = np.zeros(m, dtype=bool)
    n_tied = np.ones(m, dtype=np.int64)
    # Level by level, a node is tied when its predecessors (one step nearer) disagree on
    # the owner, or one of them is tied.
    u = np.concatenate([la, lb])
    v = np.concatenate([lb, la])
    step = dist[v] == dist[u] + 1
    u, v = u[step], v[step]
    level = dist[v].astype(np.int64)
    for d in range(1, int(level.max()) + 1 if level.size else 1):
        at = level == d
        if not at.any():
            continue
        uu, vv = u[at], v[at]
        low = np.full(m, np.iinfo(np.int64).max, dtype=np.int64)
        high = np.full(m, -1, dtype=np.int64)
        np.minimum.at(low, vv, own[uu])
        np.maximum.at(high, vv, own[uu])
        any_tied = np.zeros(m, dtype=bool)
        np.logical_or.at(any_tied, vv, tied[uu])
        hit = np.unique(vv)
        newly = (low[hit] != high[hit]) | any_tied[hit]
        tied[hit[newly]] = True
        pairs = np.unique(np.stack([vv, own[uu]]), axis=1)
        n_tied[hit] = np.bincount(pairs[0], minlength=m)[hit]
    near = np.full(n, -1, dtype=np.int64)
    near[nodes] = own
    tied_all = np.zeros(n, dtype=bool)
    tied_all[nodes] = tied
    n_tied_all = np.zeros(n, dtype=np.int64)
    n_tied_all[nodes] = n_tied
    return near, tied_all, n_tied_all


def _resolve_merged(names: np.ndarray, merged_before: Mapping[str, str]) -> np.ndarray:
    """Person ids with every id merged by an earlier run replaced by where it went (chains
    followed): a merged id never comes back."""
    if not merged_before or not names.size:
        return names

    def final(pid: str) -> str:
        seen = set()
        while pid in merged_before and pid not in seen:
            seen.add(pid)
            pid = merged_before[pid]
        return pid

    out = names.copy()
    for i in np.flatnonzero(pd.Series(names).isin(list(merged_before)).to_numpy()):
        out[i] = final(names[i])
    return out


# -- merges --------------------------------------------------------------------------------


def _merges(
    con: duckdb.DuckDBPyConnection,
    graph: Graph,
    tonight: Resolution,
    before: Resolution | None,
    names: _PersonNames,
    merged_before: Mapping[str, str],
    previous_as_of: date | None,
) -> pd.DataFrame:
    """The person ids that are part of another person tonight: the persons of the previous
    run's graph whose identifiers now belong to another person, and known client ids that a
    links-file row (or `merge_known_clients`) merged into another."""
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    current = _LazySet(names.names)  # tonight's person ids, built only when asked
    if before is not None:
        both = (before.status == OK) & (tonight.status == OK) & (before.rep != tonight.rep)
        if both.any():
            old_reps = before.rep[both]
            unique_old = np.unique(old_reps)
            old = _resolve_merged(person_ids(con, unique_old, "_id_nodes"), merged_before)
            frame = pd.DataFrame(
                {
                    "old": old[np.searchsorted(unique_old, old_reps)],
                    "new": names.of_reps(tonight.rep[both]),
                }
            )
            frame = frame[(frame["old"] != frame["new"]) & ~frame["old"].isin(current.values)]
            counts = frame.value_counts().reset_index(name="identifiers")
            counts = counts.sort_values(
                ["old", "identifiers", "new"], ascending=[True, False, True]
            )
            for old_id, new_id, k in counts.drop_duplicates("old").itertuples(index=False):
                rows[old_id] = (new_id, {"identifiers": int(k), "since": str(previous_as_of)})
    nodes = np.arange(graph.n_nodes)
    client = (graph.node_type == 0) & (tonight.status == OK) & (tonight.rep != nodes)
    if client.any():
        values = _node_values(con, np.flatnonzero(client))
        for value, person in zip(values, names.of_reps(tonight.rep[client]), strict=True):
            if value != person and value not in merged_before and value not in current:
                rows.setdefault(value, (person, {"identifiers": 1, "via": "links_file"}))
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in MERGE_COLUMNS})
    merged = sorted(rows)
    return pd.DataFrame(
        {
            "merged_id": merged,
            "into_id": [rows[m][0] for m in merged],
            "evidence": [json.dumps(rows[m][1], sort_keys=True) for m in merged],
        }
    )


class _LazySet:
    """A set of strings built from an array on the first membership test."""

    def __init__(self, items: np.ndarray) -> None:
        self._items = items
        self._set: set[str] | None = None

    @property
    def values(self) -> set[str]:
        if self._set is None:
            self._set = set(self._items.tolist())
        return self._set

    def __contains__(self, item: object) -> bool:
        return item in self.values


def _node_values(con: duckdb.DuckDBPyConnection, nodes: np.ndarray) -> list[str]:
    con.register("_id_pick", pa.table({"node": pa.array(nodes, pa.int64())}))
    values = [
        r[0]
        for r in con.execute(
            "SELECT n.id_value FROM _id_pick p JOIN _id_nodes n ON n.node = p.node ORDER BY p.node"
        ).fetchall()
    ]
    con.unregister("_id_pick")
    return values


# -- writing the results -------------------------------------------------------------------


def _quarantine_identifiers(
    con: duckdb.DuckDBPyConnection, res: Resolution, limits: np.ndarray, quarantine: str
) -> pd.DataFrame:
    """One quarantine row per over-linked or ambiguous identifier (its value in its own
    column, the count in `detail`); returns them (id_type, id_value, reason, detail, count)."""
    bad = np.flatnonzero((res.status == OVER_LINKED) | (res.status == AMBIGUOUS))
    columns = ["id_type", "id_value", "reason", "detail", "count"]
    if not bad.size:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    con.register("_id_bad", pa.table({"node": pa.array(bad, pa.int64())}))
    found = con.execute(
        "SELECT n.id_type, n.id_value FROM _id_bad b JOIN _id_nodes n ON n.node = b.node"
        " ORDER BY b.node"
    ).df()
    con.unregister("_id_bad")
    status, kind, count = res.status[bad], res.worst_type[bad], res.worst_count[bad]
    found["reason"] = [STATUS_REASON[int(x)] for x in status]
    found["detail"] = [
        f"linked to {n} {ID_TYPES[t]} (limit {limits[t]})"
        if x == OVER_LINKED
        else f"equally close to {n} known clients"
        for x, t, n in zip(status, kind, count, strict=True)
    ]
    found["count"] = count.astype(np.int64)
    found = found.sort_values(["count", "id_type", "id_value"], ascending=[False, True, True])
    con.register("_id_bad_rows", found)
    for id_type in found["id_type"].unique():
        con.execute(
            f"INSERT INTO {quarantine} (reason, {id_type}, detail)"
            f" SELECT reason, id_value, detail FROM _id_bad_rows WHERE id_type = ?",
            [id_type],
        )
    con.unregister("_id_bad_rows")
    return found[columns].reset_index(drop=True)


def _rewrite_events(
    con: duckdb.DuckDBPyConnection,
    table: str,
    quarantine: str,
    ids: list[str],
    tuple_nodes: dict[str, np.ndarray],
    res: Resolution,
    cutoff: datetime,
) -> dict[str, int]:
    """Replace `table` by its events up to the cutoff on person ids; an event left without a
    usable identifier goes to the quarantine: `identifier_over_linked` or
    `identifier_ambiguous` after its first such identifier, else `no_identifier` (every value
    it carries identifies nobody)."""
    n_tuples = next(iter(tuple_nodes.values())).size if tuple_nodes else 0
    rep = np.full(n_tuples, -1, dtype=np.int64)
    why = np.zeros(n_tuples, dtype=np.int8)  # 0: none, else the status of the first bad id
    for c in [p for p in PRIORITY if p in ids]:
        node = tuple_nodes[c]
        has = node >= 0
        status = np.full(n_tuples, ABSENT, dtype=np.int8)
        status[has] = res.status[node[has]]
        take = (status == OK) & (rep < 0)
        rep[take] = res.rep[node[take]]
        bad = ((status == OVER_LINKED) | (status == AMBIGUOUS)) & (why == 0)
        why[bad] = status[bad]
    reasons = np.array(["no_identifier", STATUS_REASON[OVER_LINKED], STATUS_REASON[AMBIGUOUS]])
    con.register(
        "_id_tuple_rep",
        pa.table(
            {
                "tid": pa.array(np.arange(n_tuples), pa.int64()),
                "rep": pa.array(rep, pa.int64()),
                "why": pa.array(reasons[np.where(why == AMBIGUOUS, 2, np.minimum(why, 1))]),
            }
        ),
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _id_tuple_person AS
        SELECT t.h, r.person_id, CASE WHEN r.person_id IS NULL THEN p.why END AS why
        FROM _id_tuples t JOIN _id_tuple_rep p ON p.tid = t.tid
        LEFT JOIN _id_rep_name r ON r.rep = p.rep"""
    )
    con.unregister("_id_tuple_rep")
    hashes, distinct = con.execute(
        "SELECT count(*), count(DISTINCT h) FROM _id_tuple_person"
    ).fetchall()[0]
    if hashes == distinct:  # one integer finds the combination: a hash join on it
        join = f"_id_tuple_person p ON p.h = {_tuple_hash(ids, 'e.')}"
    else:  # two combinations share a hash (about once in 10^6 runs at 10M combinations)
        log.info("identity: %d identifier combinations share a hash", hashes - distinct)
        keys = " AND ".join(f"coalesce(e.{c}, chr(0)) = coalesce(t.{c}, chr(0))" for c in ids)
        join = (
            f"(SELECT t.*, p.person_id, p.why FROM _id_tuples t"
            f" JOIN _id_tuple_person p ON p.h = t.h) p ON {keys.replace('t.', 'p.')}"
        )
    moved = dict(
        con.execute(
            "SELECT p.why, sum(t.n) FROM _id_tuples t JOIN _id_tuple_person p ON p.h = t.h"
            " WHERE p.person_id IS NULL GROUP BY p.why"
        ).fetchall()
        if hashes == distinct
        else con.execute(
            f"SELECT p.why, count(*) FROM {table} e JOIN {join}"
            " WHERE p.person_id IS NULL AND e.event_time < ? GROUP BY p.why",
            [cutoff],
        ).fetchall()
    )
    if moved:
        raw = ", ".join(
            f"CAST(e.{c} AS VARCHAR)" if c in ids or c in EVENT_SCHEMA else "NULL"
            for c in _QUARANTINE_RAW
        )
        con.execute(
            f"""INSERT INTO {quarantine} (reason, {", ".join(_QUARANTINE_RAW)}, detail)
            SELECT p.why, {raw}, 'no usable identifier left on the event'
            FROM {table} e JOIN {join}
            WHERE p.person_id IS NULL AND e.event_time < ?""",
            [cutoff],
        )
    columns = ", ".join(
        "p.person_id AS client_id" if c == "client_id" else f"e.{c}" for c in EVENT_SCHEMA
    )
    con.execute(
        f"""CREATE OR REPLACE TABLE {table} AS
        SELECT {columns} FROM {table} e JOIN {join}
        WHERE p.person_id IS NOT NULL AND e.event_time < ?""",
        [cutoff],
    )
    con.execute("DROP TABLE _id_tuple_person")
    return {str(k): int(v) for k, v in sorted(moved.items())}


_QUARANTINE_RAW = CONTRACT_COLUMNS  # the raw values a quarantined event keeps


def _identity_map(con: duckdb.DuckDBPyConnection, res: Resolution) -> pa.Table:
    """The usable identifiers and their person (in no particular order)."""
    ok = np.flatnonzero(res.status == OK)
    con.register(
        "_id_node_rep",
        pa.table({"node": pa.array(ok, pa.int64()), "rep": pa.array(res.rep[ok], pa.int64())}),
    )
    table = con.sql(
        "SELECT n.id_type, n.id_value, r.person_id, n.first_seen, n.last_seen"
        " FROM _id_node_rep p JOIN _id_nodes n ON n.node = p.node"
        " JOIN _id_rep_name r ON r.rep = p.rep"
    ).to_arrow_table()
    con.unregister("_id_node_rep")
    return table


def identity_map_summary(person_id: pd.Series, id_type: pd.Series) -> dict[str, Any]:
    """How many persons came from how many identifiers: the counts of an identity map
    (its `person_id` and `id_type` columns), for the report and the `identity` command."""
    return _size_summary(person_id.value_counts(), id_type.value_counts())


def _size_summary(sizes: pd.Series, types: pd.Series) -> dict[str, Any]:
    """`identity_map_summary` from identifiers per person and identifiers per type."""
    anonymous = sizes.index.to_series().astype(str).str.startswith(ANON_PREFIX)
    distribution: dict[str, int] = {}
    low = 1
    for high, label in _SIZE_BINS:
        inside = sizes >= low if high is None else (sizes >= low) & (sizes <= high)
        distribution[label] = int(inside.sum())
        low = (high or low) + 1
    return {
        "identifiers": int(sizes.sum()),
        "identifiers_by_type": {str(k): int(v) for k, v in sorted(types.items())},
        "persons": len(sizes),
        "known_persons": int((~anonymous).sum()),
        "anonymous_persons": int(anonymous.sum()),
        "persons_by_identifiers": distribution,
        "largest_person": int(sizes.max()) if len(sizes) else 0,
    }


def _summary(
    identity_map: pa.Table,
    quarantined: pd.DataFrame,
    merges: pd.DataFrame,
    moved: dict[str, int],
    links: dict[str, int] | None,
) -> dict[str, Any]:
    """Counts for the report, the run's log and the `identity` command."""
    with duckdb.connect() as con:  # a group-by of millions of ids: DuckDB, not pandas
        con.register("m", identity_map)
        sizes = con.execute("SELECT person_id, count(*) AS n FROM m GROUP BY 1").df()
        types = con.execute("SELECT id_type, count(*) AS n FROM m GROUP BY 1").df()
    return {
        **_size_summary(sizes.set_index("person_id")["n"], types.set_index("id_type")["n"]),
        "over_linked": int((quarantined["reason"] == STATUS_REASON[OVER_LINKED]).sum()),
        "ambiguous": int((quarantined["reason"] == STATUS_REASON[AMBIGUOUS]).sum()),
        "merges": len(merges),
        "events_quarantined": dict(moved),
        "links": dict(links or {}),
    }


# -- the links file ------------------------------------------------------------------------


def _load_links(
    con: duckdb.DuckDBPyConnection,
    path: str | os.PathLike[str],
    rules: IdentifierRules,
    cutoff: datetime,
    quarantine: str,
) -> dict[str, int]:
    """`_id_links` (id_type, id_value, client_id, linked_at) from a Parquet or CSV file: the
    usable links up to the cutoff. An unusable row (unknown id_type, an identifier that
    identifies nobody, an unparseable time) goes to the quarantine as `bad_identity_link`."""
    file = Path(path)
    if not file.exists() and not any(c in str(path) for c in "*?["):
        raise EventContractError(f"identity links file {path}: not found")
    text = str(path).replace("'", "''")
    if file.suffix.lower() in (".csv", ".gz", ".txt") and not file.name.endswith(".parquet"):
        reader = f"read_csv('{text}', header = true, all_varchar = true)"
    else:
        reader = f"read_parquet('{text}')"
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
    except duckdb.Error as exc:
        raise EventContractError(f"identity links file {path}: cannot be read: {exc}") from exc
    columns = {str(r[0]).strip().lower(): str(r[0]) for r in described}
    missing = [c for c in ("id_type", "id_value", "client_id") if c not in columns]
    if missing:
        raise EventContractError(
            f"identity links file {path}: missing column(s) {', '.join(missing)}"
            f" (found: {', '.join(columns.values())})"
        )

    def col(name: str) -> str:
        return 'trim(CAST("' + columns[name].replace('"', '""') + '" AS VARCHAR))'

    linked = (
        f"timezone('UTC', TRY_CAST({col('linked_at')} AS TIMESTAMPTZ))"
        if "linked_at" in columns
        else "NULL::TIMESTAMP"
    )
    kinds = ", ".join(f"'{t}'" for t in ID_TYPES)
    value_case = " ".join(f"WHEN '{t}' THEN {normalized_sql('id_value', t)}" for t in ID_TYPES)
    reason_case = " ".join(
        f"WHEN '{t}' THEN {ignored_reason_sql('id_value', t, rules)}" for t in ID_TYPES
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _id_links_raw AS
        SELECT id_type, CASE id_type {value_case} ELSE id_value END AS id_value, client_id,
               linked_at, raw_time
        FROM (
            SELECT lower({col("id_type")}) AS id_type, nullif({col("id_value")}, '') AS id_value,
                   nullif({col("client_id")}, '') AS client_id,
                   {linked} AS linked_at,
                   {col("linked_at") if "linked_at" in columns else "NULL"} AS raw_time
            FROM {reader}
        )"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _id_links_checked AS
        SELECT *, CASE
            WHEN id_type IS NULL OR id_type NOT IN ({kinds}) THEN 'unknown id_type'
            WHEN id_value IS NULL THEN 'no id_value'
            WHEN client_id IS NULL THEN 'no client_id'
            WHEN (CASE id_type {reason_case} END) IS NOT NULL
                THEN 'id_value: ' || (CASE id_type {reason_case} END)
            WHEN {ignored_reason_sql("client_id", "client_id", rules)} IS NOT NULL
                THEN 'client_id: ' || {ignored_reason_sql("client_id", "client_id", rules)}
            WHEN raw_time IS NOT NULL AND raw_time <> '' AND linked_at IS NULL
                THEN 'unparseable linked_at'
            ELSE NULL END AS problem
        FROM _id_links_raw"""
    )
    con.execute(
        f"""INSERT INTO {quarantine} (reason, client_id, source_file, detail)
        SELECT 'bad_identity_link', client_id, '{text}',
               problem || ': id_type=' || coalesce(id_type, '') || ' id_value='
               || coalesce(id_value, '')
        FROM _id_links_checked WHERE problem IS NOT NULL"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _id_links AS
        SELECT id_type, id_value, client_id, linked_at FROM _id_links_checked
        WHERE problem IS NULL AND (linked_at IS NULL OR linked_at < ?)""",
        [cutoff],
    )
    counts = con.execute(
        """SELECT count(*) FILTER (WHERE problem IS NULL),
                  count(*) FILTER (WHERE problem IS NOT NULL),
                  (SELECT count(*) FROM _id_links)
        FROM _id_links_checked"""
    ).fetchall()[0]
    con.execute("DROP TABLE _id_links_raw")
    con.execute("DROP TABLE _id_links_checked")
    return {"rows": int(counts[0] + counts[1]), "rejected": int(counts[1]), "used": int(counts[2])}


def _micros(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds()) * 1_000_000


def _drop_temp(con: duckdb.DuckDBPyConnection) -> None:
    for name in ("_id_tuples", "_id_nodes", "_id_links", "_id_ignored"):
        con.execute(f"DROP TABLE IF EXISTS {name}")
    con.unregister("_id_rep_name")


def _stopwatch(seconds: dict[str, float]) -> Callable[[str], None]:
    """A function that records the seconds since its last call under a stage name."""
    last = [time.perf_counter()]

    def mark(stage: str) -> None:
        now = time.perf_counter()
        seconds[stage] = round(now - last[0], 2)
        last[0] = now

    return mark


def stitched_report(report: ValidationReport, stitching: Stitching) -> ValidationReport:
    """The validation counts once stitching has quarantined the events left without a usable
    identifier (and counted the identifier values it ignored)."""
    moved = stitching.events_quarantined
    by_reason = dict(report.by_reason)
    for reason, n in moved.items():
        by_reason[reason] = by_reason.get(reason, 0) + n
    return dataclasses.replace(
        report,
        valid=report.valid - sum(moved.values()),
        quarantined=report.quarantined + sum(moved.values()),
        by_reason=dict(sorted(by_reason.items())),
        ignored_identifiers=stitching.summary.get("ignored_identifiers", {}),
    )
