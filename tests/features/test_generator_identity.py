"""Tests of the generator's identity mode: identifiers per channel, links, truth, traps, and
that a perfect stitcher could recover every person (checked independently with scipy)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from configs import ID_TYPES, IDENTIFIER_COLUMNS
from features import generator
from features.generator import EVENT_SCHEMA, generate, write_dataset
from features.generator_identity import (
    IDENTITY_EVENT_SCHEMA,
    IDENTITY_TRUTH_SCHEMA,
    LINKS_SCHEMA,
    IdentityData,
    add_identities,
    chunk_seed,
    planned_call_center_trap,
)

END = date(2025, 6, 30)
CLIENTS, DAYS, SEED = 600, 200, 5
ONLINE = ("web", "app")


@pytest.fixture(scope="module")
def source() -> pa.Table:
    return generate(clients=CLIENTS, days=DAYS, end=END, seed=SEED)[0]


@pytest.fixture(scope="module")
def data(source: pa.Table) -> IdentityData:
    return add_identities(source, seed=3)


@pytest.fixture(scope="module")
def frame(source: pa.Table, data: IdentityData) -> pd.DataFrame:
    """The events with identifiers, and `person`: the true client of each row."""
    events = data.events.to_pandas()
    events["person"] = source["client_id"].to_pandas()
    return events


def _id_count(frame: pd.DataFrame) -> pd.Series:
    return frame[list(ID_TYPES)].notna().sum(axis=1)


def _truth_person(truth: pa.Table) -> dict[tuple[str, str], str | None]:
    t = truth.to_pandas()
    return dict(zip(zip(t["id_type"], t["id_value"], strict=True), t["person_id"], strict=True))


def _long(frame: pd.DataFrame) -> pd.DataFrame:
    """(row, id_type, id_value, person) for every identifier on every row."""
    long = frame.reset_index(names="row").melt(
        id_vars=["row", "person"], value_vars=list(ID_TYPES), var_name="id_type"
    )
    return long.dropna(subset=["value"]).rename(columns={"value": "id_value"})


def _trap_values(truth: pa.Table, kind: str) -> list[str]:
    t = truth.to_pandas()
    return t.loc[t["trap_kind"] == kind, "id_value"].tolist()


# --------------------------------------------------------------------------- events


def test_same_rows_and_the_identifier_columns_after_event_id(source, data, frame) -> None:
    assert data.events.schema.equals(IDENTITY_EVENT_SCHEMA)
    assert data.events.column_names[-4:] == list(IDENTIFIER_COLUMNS)
    assert data.events.column_names[:8] == EVENT_SCHEMA.names
    assert data.events.select(EVENT_SCHEMA.names[1:]).equals(source.select(EVENT_SCHEMA.names[1:]))
    known = frame["client_id"].notna()
    assert (frame.loc[known, "client_id"] == frame.loc[known, "person"]).all()
    assert data.links.schema.equals(LINKS_SCHEMA)
    assert data.truth.schema.equals(IDENTITY_TRUTH_SCHEMA)


def test_every_row_has_an_identifier_and_most_two_or_three(frame) -> None:
    count = _id_count(frame)
    assert count.min() >= 1
    assert count.between(2, 3).mean() > 0.6
    assert 1.8 < count.mean() < 3.0


def test_anonymous_sessions_before_the_first_login(frame) -> None:
    assert frame.loc[frame["client_id"].notna(), "channel"].isin(ONLINE).all()
    logged = frame[frame["client_id"].notna()]
    first_login = logged.groupby("person")["event_time"].min()
    online = frame[frame["channel"].isin(ONLINE)].copy()
    online["first_login"] = online["person"].map(first_login)
    before = online[online["event_time"] < online["first_login"]]
    assert before["client_id"].isna().all()
    assert before[["device_id", "anonymous_id"]].notna().all().all()
    # Anonymous browsing before the first login is common, and after it some sessions too.
    assert before["person"].nunique() > 0.3 * first_login.size
    after = online[online["event_time"] > online["first_login"]]
    assert 0.05 < after["client_id"].isna().mean() < 0.5


def test_some_persons_never_log_in_and_are_not_in_the_crm(data, frame) -> None:
    persons = frame["person"].nunique()
    logged = set(frame.loc[frame["client_id"].notna(), "person"])
    linked = set(data.links["client_id"].to_pylist())
    assert logged <= linked
    never_online = set(frame["person"]) - linked
    assert 0.08 * persons <= len(never_online) <= 0.15 * persons
    assert frame.loc[frame["person"].isin(never_online), "device_id"].notna().any()


def test_devices_and_rotating_cookies(data, frame) -> None:
    traps = set(_trap_values(data.truth, "shared_device"))
    own = frame[frame["device_id"].notna() & ~frame["device_id"].isin(traps)]
    devices = own.groupby("person")["device_id"].nunique()
    assert devices.max() == 3 and (devices >= 2).mean() > 0.2
    assert own["device_id"].str.fullmatch(r"d[0-9a-f]{16}").all()
    assert own["anonymous_id"].notna().all()
    assert own["anonymous_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}").all()
    # A cookie lives on one device; a device used for months has several cookies.
    assert (own.groupby("anonymous_id")["device_id"].nunique() == 1).all()
    span = own.groupby("device_id")["event_time"].agg(lambda t: (t.max() - t.min()).days)
    cookies = own.groupby("device_id")["anonymous_id"].nunique()
    assert cookies[span > 150].min() >= 2
    assert frame.loc[frame["channel"].isin(ONLINE), "device_id"].notna().all()


def test_each_channel_carries_its_identifiers(data, frame) -> None:
    store = frame[frame["channel"] == "store"]
    assert store["phone_hash"].notna().all()
    assert store[["client_id", "anonymous_id", "device_id", "email_hash"]].isna().all().all()
    email = frame[frame["channel"] == "email"]
    assert email["email_hash"].notna().all() and email["client_id"].isna().all()
    assert email["email_hash"].str.fullmatch(r"[0-9a-f]{64}").all()
    clicks = email[email["event_type"] == "email_click"]
    assert clicks[["device_id", "anonymous_id"]].notna().all().all()
    others = email[email["event_type"] != "email_click"]
    assert others[["device_id", "anonymous_id", "phone_hash"]].isna().all().all()
    call = frame[frame["channel"] == "call_center"]
    assert not call.empty and (call["phone_hash"].notna() | call["email_hash"].notna()).all()
    assert call[["client_id", "anonymous_id", "device_id"]].isna().all().all()
    assert call["phone_hash"].dropna().str.fullmatch(r"[0-9a-f]{64}").all()
    messenger = frame[frame["channel"] == "messenger"]
    assert messenger["phone_hash"].notna().all() and messenger["client_id"].isna().all()
    social = frame[frame["channel"] == "social"]
    assert social["email_hash"].notna().all() and social["client_id"].isna().all()


def test_identifiers_belong_to_the_row_person(data, frame) -> None:
    owner = _truth_person(data.truth)
    long = _long(frame)
    long["owner"] = [owner[key] for key in zip(long["id_type"], long["id_value"], strict=True)]
    trap = long["owner"].isna()
    assert (long.loc[~trap, "owner"] == long.loc[~trap, "person"]).all()
    assert trap.any()


# --------------------------------------------------------------------------- links and truth


def test_links_reference_only_identifiers_of_the_right_person(data, frame) -> None:
    links = data.links.to_pandas()
    assert set(links["id_type"]) <= set(ID_TYPES)
    owner = _truth_person(data.truth)
    persons = [owner[key] for key in zip(links["id_type"], links["id_value"], strict=True)]
    assert persons == links["client_id"].tolist()
    assert not links.duplicated(["id_type", "id_value"]).any()
    assert str(data.links.schema.field("linked_at").type) == "timestamp[us, tz=UTC]"
    # Linked at the first login, when the person logs in.
    first_login = frame[frame["client_id"].notna()].groupby("client_id")["event_time"].min()
    online_links = links[links["client_id"].isin(first_login.index)]
    assert (online_links["linked_at"] == online_links["client_id"].map(first_login)).all()


def test_truth_covers_every_identifier_once(data, frame) -> None:
    truth = data.truth.to_pandas()
    assert not truth.duplicated(["id_type", "id_value"]).any()
    seen = set(zip(_long(frame)["id_type"], _long(frame)["id_value"], strict=True))
    links = data.links.to_pandas()
    seen |= set(zip(links["id_type"], links["id_value"], strict=True))
    seen |= {("client_id", c) for c in links["client_id"]}
    assert set(zip(truth["id_type"], truth["id_value"], strict=True)) == seen
    assert (truth["trap"] == truth["person_id"].isna()).all()
    assert (truth["trap"] == truth["trap_kind"].notna()).all()


def test_traps_are_planted_as_specified(source, data, frame) -> None:
    persons = frame["person"].nunique()
    tablets = _trap_values(data.truth, "shared_device")
    assert len(tablets) == max(1, round(persons / 2000))
    for tablet in tablets:
        on_it = frame[frame["device_id"] == tablet]
        assert on_it["client_id"].notna().all() and on_it["anonymous_id"].isna().all()
        assert on_it["client_id"].nunique() == 2
    (default,) = _trap_values(data.truth, "call_center_default_email")
    with_call = frame.loc[frame["channel"] == "call_center", "person"].nunique()
    trapped = frame[frame["email_hash"] == default]
    assert trapped["channel"].eq("call_center").all()
    assert trapped["person"].nunique() == planned_call_center_trap(persons, with_call)
    assert trapped["person"].nunique() == min(500, persons // 4, with_call) > 10
    owner = _truth_person(data.truth)
    own_phones = zip(trapped["phone_hash"], trapped["person"], strict=True)
    assert all(owner["phone_hash", phone] == person for phone, person in own_phones)
    # Every call-center event of a trapped person carries the default email.
    calls = frame[(frame["channel"] == "call_center") & frame["person"].isin(trapped["person"])]
    assert (calls["email_hash"] == default).all()
    small = add_identities(source, seed=3, call_center_trap_size=7)
    assert small.events.to_pandas()["email_hash"].value_counts().max() >= 7
    assert _trap_values(add_identities(source, seed=3, traps=False).truth, "shared_device") == []


def test_same_seed_same_tables_and_another_seed_differs(source, data) -> None:
    again = add_identities(source, seed=3)
    for a, b in ((again.events, data.events), (again.links, data.links), (again.truth, data.truth)):
        assert a.equals(b)
    other = add_identities(source, seed=4)
    assert not other.events.equals(data.events)
    assert not other.links.equals(data.links)


def test_bad_input_fails_clearly(source) -> None:
    with pytest.raises(ValueError, match="seed"):
        add_identities(source, seed=-1)
    with pytest.raises(ValueError, match="EVENT_SCHEMA"):
        add_identities(source.drop_columns(["channel"]), seed=1)
    with pytest.raises(ValueError, match="sorted"):
        add_identities(source.sort_by([("event_time", "ascending")]), seed=1)
    empty = add_identities(EVENT_SCHEMA.empty_table(), seed=1)
    assert empty.events.num_rows == empty.links.num_rows == empty.truth.num_rows == 0


# --------------------------------------------------------------------------- recoverability


def _components_per_person(events: pd.DataFrame, links: pa.Table, truth: pa.Table) -> None:
    """Independent check: the graph of the truth's non-trap identifiers, an edge for every two
    identifiers on one event row or one links row; each true person is exactly one component."""
    t = truth.to_pandas()
    t = t[~t["trap"]].reset_index(drop=True)
    node = pd.Series(t.index, index=pd.MultiIndex.from_frame(t[["id_type", "id_value"]]))
    long = _long(events)
    long["node"] = node.reindex(pd.MultiIndex.from_frame(long[["id_type", "id_value"]])).values
    long = long.dropna(subset=["node"])
    first = long.groupby("row")["node"].transform("first")
    crm = links.to_pandas()
    a = node.reindex(pd.MultiIndex.from_frame(crm[["id_type", "id_value"]])).to_numpy()
    b = node.reindex(pd.MultiIndex.from_arrays([["client_id"] * len(crm), crm["client_id"]]))
    assert not (np.isnan(a).any() or np.isnan(b.to_numpy()).any())  # links are in the truth
    src = np.concatenate([first.to_numpy(), a]).astype(np.int64)
    dst = np.concatenate([long["node"].to_numpy(), b.to_numpy()]).astype(np.int64)
    graph = coo_matrix((np.ones(src.size), (src, dst)), shape=(len(t), len(t)))
    _, label = connected_components(graph, directed=False)
    t["component"] = label
    assert (t.groupby("person_id")["component"].nunique() == 1).all()
    assert (t.groupby("component")["person_id"].nunique() == 1).all()
    assert t["person_id"].nunique() == events["person"].nunique()


def test_a_perfect_stitcher_recovers_every_person(data, frame) -> None:
    _components_per_person(frame, data.links, data.truth)


def test_recoverable_without_traps_other_seeds_and_other_inputs(source) -> None:
    renamed = source.set_column(
        0, "client_id", pc.replace_substring_regex(source["client_id"], "^c", "user-")
    )
    sliced = pa.concat_tables([source.slice(1000, 4000), source.slice(9000, 3000)])
    for table, seed, traps in (
        (source, 11, False),
        (source, 12, True),
        (renamed, 12, True),  # other client ids: identifier values from a hash of the id
        (sliced, 13, True),  # several chunks, starting at an offset
    ):
        data = add_identities(table, seed=seed, traps=traps)
        events = data.events.to_pandas()
        events["person"] = table["client_id"].to_pandas()
        known = events["client_id"].notna()
        assert (events.loc[known, "client_id"] == events.loc[known, "person"]).all()
        assert data.events.select(EVENT_SCHEMA.names[1:]).equals(
            table.select(EVENT_SCHEMA.names[1:])
        )
        _components_per_person(events, data.links, data.truth)


# --------------------------------------------------------------------------- write_dataset


def _read(out) -> tuple[pa.Table, pa.Table, pa.Table]:
    return (
        pq.read_table(out / "events"),
        pq.read_table(out / "identity_links.parquet"),
        pq.read_table(out / "identity_truth.parquet"),
    )


def test_write_dataset_with_identities(tmp_path, source) -> None:
    summary = write_dataset(
        tmp_path / "a", CLIENTS, DAYS, END, SEED, rows_per_file=5_000, identities=True
    )
    write_dataset(tmp_path / "b", CLIENTS, DAYS, END, SEED, identities=True)
    a, b = _read(tmp_path / "a"), _read(tmp_path / "b")
    assert summary["files"] > 1
    assert summary["identity_links"] == str(tmp_path / "a" / "identity_links.parquet")
    assert summary["identity_truth"] == str(tmp_path / "a" / "identity_truth.parquet")
    for x, y in zip(a, b, strict=True):
        assert x.equals(y)
    events, links, truth = a
    assert events.schema.equals(IDENTITY_EVENT_SCHEMA)
    # One chunk: what add_identities gives on generate's events with the chunk's seed.
    expected = add_identities(source, chunk_seed(SEED, 0))
    assert events.equals(expected.events)
    assert links.equals(expected.links) and truth.equals(expected.truth)
    plain = write_dataset(tmp_path / "c", 50, 30, END, 1)
    assert (
        "identity_links" not in plain and not (tmp_path / "c" / "identity_links.parquet").exists()
    )


def test_chunks_keep_identifiers_unique_and_persons_recoverable(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(generator, "CHUNK_CLIENTS", 200)
    write_dataset(tmp_path, CLIENTS, DAYS, END, SEED, identities=True)
    events, links, truth = _read(tmp_path)
    frame = events.to_pandas()
    frame["person"] = frame["event_id"].str.rsplit("-", n=1).str[0]
    t = truth.to_pandas()
    assert not t.duplicated(["id_type", "id_value"]).any()
    assert len(_trap_values(truth, "call_center_default_email")) == 3  # one per chunk
    _components_per_person(frame, links, truth)
    # overwrite without identities removes the identity files of the earlier data set
    write_dataset(tmp_path, CLIENTS, DAYS, END, SEED, overwrite=True)
    assert not (tmp_path / "identity_truth.parquet").exists()
