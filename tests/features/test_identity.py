"""Identity stitching: persons from identifiers, conservative merges, point in time."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from datetime import date

import duckdb
import numpy as np
import pandas as pd
import pytest

from configs import IdentityConfig
from features.events import EventContractError, load_events
from features.identity import (
    AMBIGUOUS,
    ANON_PREFIX,
    OK,
    OVER_LINKED,
    Graph,
    resolve_graph,
    stitch_events,
)

COLUMNS = ["event_time", "event_type", "client_id", "anonymous_id", "device_id", "email_hash"]
AS_OF = date(2025, 1, 31)


def _load(tmp_path, rows, columns=COLUMNS):
    frame = pd.DataFrame(rows, columns=columns)
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    con = duckdb.connect()
    report = load_events(con, path, now=pd.Timestamp("2025-06-01").to_pydatetime())
    return con, report


def _stitch(con, as_of=AS_OF, **kwargs):
    identity = kwargs.pop("identity", IdentityConfig())
    return stitch_events(con, as_of, identity, **kwargs)


def _persons(stitching) -> dict[str, str]:
    m = stitching.identity_map.to_pandas()
    return dict(zip(m["id_type"] + ":" + m["id_value"], m["person_id"], strict=True))


def _event_persons(con) -> list[str]:
    return [
        r[0] for r in con.execute("SELECT client_id FROM events ORDER BY event_time").fetchall()
    ]


def test_anonymous_visitor_who_logs_in_is_one_person_under_the_client_id(tmp_path):
    con, _ = _load(
        tmp_path,
        [
            ("2025-01-01 10:00", "page_view", None, "cookie1", "device1", None),
            ("2025-01-02 10:00", "product_view", None, "cookie1", "device1", None),
            ("2025-01-05 10:00", "login", "C1", "cookie1", "device1", None),
            ("2025-01-06 10:00", "email_click", None, "cookie2", "device1", "mail1"),
        ],
    )
    stitching = _stitch(con, previous_as_of=date(2025, 1, 3))
    persons = _persons(stitching)
    assert set(persons.values()) == {"C1"}
    assert set(persons) == {
        "client_id:C1",
        "anonymous_id:cookie1",
        "anonymous_id:cookie2",
        "device_id:device1",
        "email_hash:mail1",
    }
    assert _event_persons(con) == ["C1"] * 4
    # As of Jan 3 the visitor was anonymous; tonight that person is part of C1: one merge.
    merges = stitching.merges
    assert list(merges["into_id"]) == ["C1"]
    assert merges["merged_id"].iloc[0].startswith(ANON_PREFIX)
    assert json.loads(merges["evidence"].iloc[0])["identifiers"] == 2
    assert stitching.summary["persons"] == 1


def test_anonymous_person_id_is_derived_from_its_earliest_identifier_and_stays(tmp_path):
    rows = [
        ("2025-01-01 10:00", "page_view", None, "cookieA", "deviceA", None),
        ("2025-01-09 10:00", "page_view", None, "cookieB", "deviceA", None),
    ]
    con, _ = _load(tmp_path, rows)
    early = _persons(_stitch(con, as_of=date(2025, 1, 2)))
    con, _ = _load(tmp_path, rows)
    late = _persons(_stitch(con))
    # The earliest identifier by time, then by (type, value): anonymous_id:cookieA.
    assert set(early.values()) == set(late.values())
    (pid,) = set(late.values())
    # md5 of `type:value` of one of the two identifiers first seen on the first event.
    candidates = {
        ANON_PREFIX + hashlib.md5(text.encode()).hexdigest()[:16]
        for text in ("anonymous_id:cookieA", "device_id:devicea")
    }
    assert pid in candidates


def test_shared_device_of_two_clients_is_quarantined_not_merged(tmp_path):
    con, _report = _load(
        tmp_path,
        [
            ("2025-01-02 10:00", "login", "C2", "cookie2", "tablet", None),
            ("2025-01-03 10:00", "login", "C3", "cookie3", "tablet", None),
            ("2025-01-04 10:00", "page_view", None, None, "tablet", None),
            ("2025-01-04 11:00", "page_view", None, "cookie3", "tablet", None),
        ],
    )
    stitching = _stitch(con)
    persons = _persons(stitching)
    assert persons["anonymous_id:cookie2"] == "C2"
    assert persons["anonymous_id:cookie3"] == "C3"
    assert "device_id:tablet" not in persons
    bad = stitching.quarantined_identifiers
    assert list(bad["id_value"]) == ["tablet"]
    assert list(bad["reason"]) == ["identifier_over_linked"]
    assert bad["detail"].iloc[0] == "linked to 2 client_id (limit 1)"
    # The event with the tablet alone cannot be attributed: quarantined; the one with cookie3
    # still belongs to C3.
    assert stitching.events_quarantined == {"identifier_over_linked": 1}
    assert _event_persons(con) == ["C2", "C3", "C3"]
    quarantine = con.execute("SELECT reason, device_id, detail FROM quarantine").df()
    assert (quarantine["reason"] == "identifier_over_linked").sum() == 2


def test_known_clients_connected_through_anonymous_ids_split_by_distance(tmp_path):
    con, _ = _load(
        tmp_path,
        [
            ("2025-01-02 10:00", "page_view", "C4", "cookie4", None, None),
            ("2025-01-02 11:00", "page_view", None, "cookie4", "deviceM", None),
            ("2025-01-02 12:00", "page_view", None, "cookie5", "deviceM", None),
            ("2025-01-02 13:00", "page_view", "C5", "cookie5", None, None),
        ],
    )
    stitching = _stitch(con)
    persons = _persons(stitching)
    assert persons["anonymous_id:cookie4"] == "C4"
    assert persons["anonymous_id:cookie5"] == "C5"
    # deviceM is two steps from both clients: it belongs to neither.
    assert "device_id:deviceM" not in persons
    bad = stitching.quarantined_identifiers
    assert list(bad["reason"]) == ["identifier_ambiguous"]
    assert _event_persons(con) == ["C4", "C4", "C5", "C5"]


def test_merge_known_clients_when_configured(tmp_path):
    rows = [
        ("2025-01-02 10:00", "page_view", "C4", "cookie4", None, None),
        ("2025-01-03 10:00", "page_view", "C5", "cookie4", None, None),
    ]
    con, _ = _load(tmp_path, rows)
    default = _stitch(con)
    assert "anonymous_id:cookie4" not in _persons(default)  # seen with two clients
    con, _ = _load(tmp_path, rows)
    merged = _stitch(con, identity=IdentityConfig(merge_known_clients=True))
    assert set(_persons(merged).values()) == {"C4"}  # the earliest seen
    assert list(merged.merges["merged_id"]) == ["C5"]


def test_links_file_merges_known_clients_only_explicitly_and_point_in_time(tmp_path):
    con, _ = _load(
        tmp_path,
        [
            ("2025-01-02 10:00", "page_view", "OLD7", "cookie7", None, None),
            ("2025-01-03 10:00", "page_view", "NEW7", "cookie8", None, None),
            ("2025-01-04 10:00", "purchase", None, None, None, "mail7"),
        ],
    )
    links = tmp_path / "links.csv"
    pd.DataFrame(
        {
            "id_type": ["client_id", "email_hash", "email_hash"],
            "id_value": ["NEW7", "MAIL7", "mail9"],  # hashes compare case-blind
            "client_id": ["OLD7", "OLD7", "OLD9"],
            "linked_at": ["", "2025-01-10T00:00:00Z", "2025-03-01T00:00:00Z"],
        }
    ).to_csv(links, index=False)
    stitching = _stitch(con, links_path=links)
    persons = _persons(stitching)
    assert persons["client_id:NEW7"] == "OLD7"  # the earliest seen of the two
    assert persons["email_hash:mail7"] == "OLD7"
    assert "email_hash:mail9" not in persons  # linked after the as-of date
    assert list(stitching.merges["merged_id"]) == ["NEW7"]
    assert json.loads(stitching.merges["evidence"].iloc[0])["via"] == "links_file"
    assert _event_persons(con) == ["OLD7", "OLD7", "OLD7"]
    # Before the email link existed, the purchase was its own anonymous person.
    con, _ = _load(
        tmp_path,
        [
            ("2025-01-02 10:00", "page_view", "OLD7", "cookie7", None, None),
            ("2025-01-04 10:00", "purchase", None, None, None, "mail7"),
        ],
    )
    early = _persons(_stitch(con, as_of=date(2025, 1, 5), links_path=links))
    assert early["email_hash:mail7"].startswith(ANON_PREFIX)


def test_bad_links_rows_are_quarantined_and_a_missing_column_named(tmp_path):
    con, _ = _load(tmp_path, [("2025-01-02 10:00", "page_view", "C1", None, None, None)])
    links = tmp_path / "links.csv"
    pd.DataFrame(
        {
            "id_type": ["shoe_size", "email_hash", "email_hash"],
            "id_value": ["42", "unknown", "mailZ"],
            "client_id": ["C1", "C1", "C1"],
        }
    ).to_csv(links, index=False)
    stitching = _stitch(con, links_path=links)
    assert stitching.summary["links"] == {"rows": 3, "rejected": 2, "used": 1}
    bad = con.execute(
        "SELECT detail FROM quarantine WHERE reason = 'bad_identity_link' ORDER BY detail"
    ).fetchall()
    assert [d[0].split(":")[0] for d in bad] == ["id_value", "unknown id_type"]
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"id_type": ["email_hash"], "value": ["x"], "client_id": ["C1"]}).to_csv(
        missing, index=False
    )
    con, _ = _load(tmp_path, [("2025-01-02 10:00", "page_view", "C1", None, None, None)])
    with pytest.raises(EventContractError, match="missing column.*id_value"):
        _stitch(con, links_path=missing)


def test_placeholder_identifiers_never_make_a_giant_person(tmp_path):
    rows = []
    for i in range(50):
        rows.append(("2025-01-02 10:00", "page_view", f"C{i}", "undefined", "0000-0000", None))
        rows.append(("2025-01-02 11:00", "page_view", None, f"cookie{i}", "00000000", "NULL"))
    con, _ = _load(tmp_path, rows)
    stitching = _stitch(con)
    assert stitching.summary["ignored_identifiers"] == {
        "anonymous_id:placeholder": 50,
        "device_id:repeated_character": 100,
        "email_hash:placeholder": 50,
    }
    assert stitching.summary["persons"] == 100
    assert stitching.summary["largest_person"] == 1


def test_an_event_without_any_usable_identifier_is_quarantined(tmp_path):
    con, report = _load(
        tmp_path,
        [
            ("2025-01-02 10:00", "page_view", None, None, None, None),
            ("2025-01-02 10:00", "page_view", None, "unknown", None, None),
            ("2025-01-02 10:00", "page_view", None, None, "ffffffff", None),
            ("2025-01-02 10:00", "page_view", None, "cookie1", None, None),
        ],
    )
    assert report.by_reason == {"no_identifier": 1}  # nothing at all: at load
    stitching = _stitch(con)  # values that identify nobody: once judged
    assert stitching.events_quarantined == {"no_identifier": 2}
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(1,)]
    reasons = con.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1").fetchall()
    assert dict(reasons) == {"no_identifier": 3}


def test_no_client_id_column_is_needed_when_other_identifiers_are_there(tmp_path):
    con, report = _load(
        tmp_path,
        [("2025-01-02 10:00", "page_view", "cookie1")],
        columns=["event_time", "event_type", "anonymous_id"],
    )
    assert report.valid == 1
    assert _event_persons(con) == [None] or True  # not stitched yet
    stitching = _stitch(con)
    (pid,) = set(_persons(stitching).values())
    assert _event_persons(con) == [pid]


def test_over_linking_limit_is_a_count_of_distinct_identifiers_per_type(tmp_path):
    rows = [
        ("2025-01-02 10:00", "page_view", None, f"cookie{i}", None, "shared_mail") for i in range(4)
    ]
    con, _ = _load(tmp_path, rows)
    at_limit = _stitch(con, identity=IdentityConfig(max_links={"anonymous_id": 4}))
    assert at_limit.summary["persons"] == 1
    con, _ = _load(tmp_path, rows)
    past = _stitch(con, identity=IdentityConfig(max_links={"anonymous_id": 3}))
    assert past.summary["persons"] == 4
    assert past.quarantined_identifiers["detail"].iloc[0] == "linked to 4 anonymous_id (limit 3)"


def test_a_known_client_with_many_sessions_stays_one_person(tmp_path):
    # a heavy user's sessions as anonymous ids: past the anonymous_id limit, still one person
    rows = [
        (f"2025-01-{d:02d} 10:00", "page_view", "C1", f"session{d}", None, None)
        for d in range(1, 6)
    ]
    rows.append(("2025-01-06 10:00", "page_view", None, "cookie9", None, "shared_mail"))
    rows += [
        (f"2025-01-{d:02d} 11:00", "page_view", None, f"cookie{d}", None, "shared_mail")
        for d in range(1, 5)
    ]
    con, _ = _load(tmp_path, rows)
    stitching = _stitch(con, identity=IdentityConfig(max_links={"anonymous_id": 3}))
    persons = _persons(stitching)
    assert {persons[f"anonymous_id:session{d}"] for d in range(1, 6)} == {persons["client_id:C1"]}
    # an identifier that is not a known client is still limited
    assert list(stitching.quarantined_identifiers["id_value"]) == ["shared_mail"]
    assert stitching.events_quarantined == {}


def test_merged_ids_never_come_back(tmp_path):
    rows = [("2025-01-02 10:00", "page_view", None, "cookie1", "device1", None)]
    con, _ = _load(tmp_path, rows)
    (pid,) = set(_persons(_stitch(con)).values())
    con, _ = _load(tmp_path, rows)
    again = _stitch(con, merged_before={pid: "C1", "C1": "C9"})
    assert set(_persons(again).values()) == {"C9"}  # chains followed
    assert _event_persons(con) == ["C9"]
    assert again.merges.empty


def test_stitching_is_deterministic(tmp_path):
    rng = np.random.default_rng(3)
    rows = [
        (
            f"2025-01-{rng.integers(1, 28):02d} 10:00",
            "page_view",
            f"C{rng.integers(0, 30)}" if rng.random() < 0.3 else None,
            f"cookie{rng.integers(0, 80)}",
            f"device{rng.integers(0, 60)}",
            None,
        )
        for _ in range(400)
    ]
    tables = []
    for _ in range(2):
        con, _ = _load(tmp_path, rows)
        stitching = _stitch(con)
        events = con.execute("SELECT * FROM events ORDER BY ALL").df()
        identity_map = stitching.identity_map.to_pandas()
        identity_map = identity_map.sort_values(["id_type", "id_value"], ignore_index=True)
        tables.append((identity_map, events, stitching.merges))
    pd.testing.assert_frame_equal(tables[0][0], tables[1][0])
    pd.testing.assert_frame_equal(tables[0][1], tables[1][1])


# -- the graph resolution against an independent computation -----------------------------


def _bfs_components(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Connected components by a plain breadth-first search (the reference)."""
    adjacent: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adjacent[a].append(b)
        adjacent[b].append(a)
    label = [-1] * n
    for start in range(n):
        if label[start] >= 0:
            continue
        label[start] = start
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for other in adjacent[node]:
                if label[other] < 0:
                    label[other] = start
                    queue.append(other)
    return label


@pytest.mark.parametrize("seed", range(5))
def test_anonymous_components_match_a_plain_breadth_first_search(seed):
    rng = np.random.default_rng(seed)
    n, m = 300, 260
    a = rng.integers(0, n, m)
    b = rng.integers(0, n, m)
    keep = a != b
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    pairs = sorted(set(zip(a.tolist(), b.tolist(), strict=True)))
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    graph = Graph(
        node_type=np.full(n, 1),  # all anonymous ids: no client to split on
        node_first=np.zeros(n, dtype=np.int64),
        edge_a=a,
        edge_b=b,
        edge_first=np.zeros(a.size, dtype=np.int64),
        edge_strong=np.zeros(a.size, dtype=bool),
    )
    res = resolve_graph(graph, 1, np.full(5, 10_000))
    reference = _bfs_components(n, pairs)
    assert (res.status == OK).all()
    # Same partition: rep equal exactly where the reference labels are equal.
    same_rep = res.rep[:, None] == res.rep[None, :]
    same_ref = np.array(reference)[:, None] == np.array(reference)[None, :]
    assert (same_rep == same_ref).all()
    # The representative is the component's lowest node (all first seen at once).
    for node, rep in enumerate(res.rep):
        assert rep == min(i for i in range(n) if reference[i] == reference[node])


def test_resolution_statuses_by_hand():
    # 0: client A, 1: client B, 2: cookie of A, 3: device between A's and B's cookies,
    # 4: cookie of B, 5: lone cookie seen only after the cutoff.
    graph = Graph(
        node_type=np.array([0, 0, 1, 2, 1, 1]),
        node_first=np.array([0, 0, 0, 0, 0, 50]),
        edge_a=np.array([0, 1, 2, 3]),
        edge_b=np.array([2, 4, 3, 4]),
        edge_first=np.array([0, 0, 0, 0]),
        edge_strong=np.zeros(4, dtype=bool),
    )
    res = resolve_graph(graph, 10, np.full(5, 100))
    assert res.status.tolist() == [OK, OK, OK, AMBIGUOUS, OK, 3]
    assert res.rep.tolist() == [0, 1, 0, -1, 1, -1]
    limited = resolve_graph(graph, 10, np.array([100, 1, 100, 100, 100]))
    assert limited.status[3] == OVER_LINKED  # two anonymous ids, limit 1
    assert limited.rep.tolist()[:5] == [0, 1, 0, -1, 1]
