"""Identity mode of the synthetic journey generator: the identifiers a person leaves, known truth.

Why: identity stitching (issue 17) needs events whose true person is known, carrying the
identifiers real logs carry (cookies, devices, hashed emails and phones, a client_id only when
logged in), a CRM links file, and planted traps that a careful stitcher must quarantine rather
than merge. `add_identities` turns the generator's events (where `client_id` is the true person)
into such data; `write_dataset(..., identities=True)` applies it chunk by chunk.

Model, per person (all draws vectorized with numpy, no per-event or per-person Python loop):
- 1-3 devices (`device_id` = ``d`` + 16 hex). Web and app events carry a device and its cookie
  (`anonymous_id`, a UUID); a device's cookie rotates every 45-150 days (a device has several
  over a year). The device of a session (person, day, channel) is the primary one most of the
  time;
- a registered person first logs in on the first web/app `login` or `purchase` event, or (for a
  share of persons, and for those with neither) on a random web/app event. Web/app events
  before it are anonymous (device + cookie, no client_id); after it most sessions carry the
  client_id too, the others stay anonymous on the same device and cookie;
- one email address and one phone per person (64 hex, sha256-looking). Email (and social:
  audiences are matched on hashed emails) events carry `email_hash` only; an `email_click` also
  carries the device and cookie it opened on. Store and messenger events carry `phone_hash`
  only (the loyalty phone); call-center events carry the phone and/or the email;
- `NEVER_LOGIN_SHARE` of the persons never log in and are not in the CRM. They are drawn among
  the persons whose identifiers stay connected without a client_id (email clicks bridge their
  devices to their email, call-center events carry both email and phone);
- the links file (the CRM) maps the email and phone of every registered person to the client_id,
  `linked_at` = the first login (or the first event for a person never online);
- connectivity: a device of a person is kept only if it is bridged to the person by a logged-in
  event or an email click; an unbridged device's events move to the person's anchor device (the
  first-login device, or the first click's). So every identifier of a person is connected to
  the rest of that person by the events and the links, except through a trap.

Traps (`traps=True`): pairs of registered persons (about one pair per 2,000 persons, at least
one) share a family tablet: some of their logged-in events move to one shared device (client_id
+ device, no cookie), so the tablet is seen with two client_ids; and the call-center events of
``min(call_center_trap_size, persons // 4)`` persons (drawn among those with call-center events,
all registered) carry the agent's default email next to their own phone. The truth names these
identifiers with a null person. With the default limits of `configs` (an identifier linked to
at most one client_id and 10 phones) both are over-linked, unless the default email covers 10
persons or fewer (fewer than about 44 persons in the events).

Identifier values are a function of the person's client id and the identifier's kind and index
(device slot, cookie number) only, through a bijective 64-bit mix (for ``c`` + digits client ids;
a 64-bit hash of other ids): they never collide, also across the chunks of `write_dataset`. The
seed decides who logs in, when, on which device. Traps are planted per chunk (`write_dataset`
calls `add_identities` once per chunk with `chunk_seed(seed, k)`): one default email per chunk,
shared-device pairs within a chunk; the traps' sizes are per chunk too.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from configs import IDENTIFIER_COLUMNS
from features.generator import EVENT_SCHEMA, GeneratorError

__all__ = [
    "IDENTITY_EVENT_SCHEMA",
    "IDENTITY_TRUTH_SCHEMA",
    "LINKS_SCHEMA",
    "NEVER_LOGIN_SHARE",
    "TRAP_KINDS",
    "IdentityData",
    "add_identities",
    "chunk_seed",
    "identity_chunks",
    "planned_call_center_trap",
]

IDENTITY_EVENT_SCHEMA = pa.schema(
    [*EVENT_SCHEMA, *(pa.field(name, pa.string()) for name in IDENTIFIER_COLUMNS)]
)
"""The generator's events with the four identifier columns after `event_id`."""
LINKS_SCHEMA = pa.schema(
    [
        ("id_type", pa.string()),
        ("id_value", pa.string()),
        ("client_id", pa.string()),
        ("linked_at", pa.timestamp("us", tz="UTC")),
    ]
)
"""The identity-links file (CRM/loyalty): identifier -> known client_id, since `linked_at`."""
IDENTITY_TRUTH_SCHEMA = pa.schema(
    [
        ("id_type", pa.string()),
        ("id_value", pa.string()),
        ("person_id", pa.string()),
        ("trap", pa.bool_()),
        ("trap_kind", pa.string()),
    ]
)
"""One row per identifier seen in the events or the links: its true person (null for a trap)."""
TRAP_KINDS = ("shared_device", "call_center_default_email")

NEVER_LOGIN_SHARE = 0.12  # target share of persons who never log in (taken among the eligible)
RANDOM_LOGIN_SHARE = 0.2  # share of registered persons whose first login is a random event
PERSONS_PER_SHARED_DEVICE = 2_000  # about one shared-device pair per this many persons
_DEVICE_SHARES = (0.45, 0.35, 0.20)  # persons with 1, 2, 3 devices
_PRIMARY_SHARE = 0.6  # share of sessions on the primary device (with more than one)
_COOKIE_DAYS = (45.0, 150.0)  # a cookie lives this many days (uniform per device)
_LOGGED_BETA = (4.0, 1.2)  # per person share of logged-in sessions after the first login
_TABLET_SHARE = 0.35  # share of a sharing person's logged-in sessions on the family tablet
_CALL_PHONE_ONLY, _CALL_EMAIL_ONLY = 0.5, 0.2  # call-center identifiers (else both)
_MAX_DEVICES = 3

# Channel classes: which identifiers an event of the channel carries (_OTHER: any other
# channel, or none). _CLICK marks an email click among the per-person flags.
_CHANNEL_CLASSES = ("web", "app", "social", "email", "messenger", "store", "call_center")
_WEB, _APP, _SOCIAL, _EMAIL, _MESSENGER, _STORE, _CALL, _OTHER, _CLICK = range(9)
# Event types the identities depend on: logins (0, 1), clicks (2), brand touches online (3, 4).
_EVENT_KINDS = ("login", "purchase", "email_click", "ad_impression", "push_sent")
# Identifier kinds in an identifier's value key (below the person's base).
_K_DEVICE, _K_COOKIE, _K_EMAIL, _K_PHONE, _K_TABLET, _K_DEFAULT_EMAIL = range(1, 7)
_KEY_BITS = 21  # kind (3 bits) << 18 | device slot (2 bits) << 16 | cookie number
_DAY_US = 86_400_000_000
_U64 = np.uint64
_GOLD_INT = 0x9E3779B97F4A7C15  # 2**64 / golden ratio
_M1, _M2, _GOLD = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB), _U64(_GOLD_INT)
_VALUE_SALT = _U64(0x5EED1D5EED1D5EED)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Byte -> its two hex digits, as one 2-byte cell (high digit first in memory).
_BYTES = np.arange(256)
_HEX_PAIRS = np.stack([_HEX[_BYTES >> 4], _HEX[_BYTES & 15]], axis=1).view("V2").ravel()


@dataclass(frozen=True)
class IdentityData:
    """What `add_identities` returns: events with identifiers, the links file and the truth.

    Attributes
    ----------
    events : pyarrow.Table
        The input rows in the same order (`IDENTITY_EVENT_SCHEMA`): `client_id` only where the
        person is logged in, the four identifier columns after `event_id`.
    links : pyarrow.Table
        The CRM links (`LINKS_SCHEMA`): email_hash and phone_hash -> client_id of every
        registered person, `linked_at` = the registration (first login).
    truth : pyarrow.Table
        One row per (id_type, id_value) seen in `events` or `links` (`IDENTITY_TRUTH_SCHEMA`):
        the true person, or a null person and ``trap`` true for a planted trap.
    """

    events: pa.Table
    links: pa.Table
    truth: pa.Table


def add_identities(
    events: pa.Table, seed: int, *, traps: bool = True, call_center_trap_size: int = 500
) -> IdentityData:
    """Identifiers on the generator's events, a CRM links file and the truth of who is who.

    Why: identity stitching must be tested on data whose true person is known. The input's
    `client_id` is the true person; the output carries it only on logged-in events and adds
    cookies, devices, hashed emails and phones as real logs do (see the module docstring), so
    a perfect stitcher recovers every person through the events and the links, except where a
    trap (a shared family tablet, a call-center default email) would wrongly merge persons.

    Parameters
    ----------
    events : pyarrow.Table
        `features.generator.generate(...)[0]` (schema `EVENT_SCHEMA`): grouped by client and
        sorted by time within a client.
    seed : int
        Seed (>= 0): the same events and seed give the same tables.
    traps : bool, default True
        Plant the shared-device pairs and the call-center default email.
    call_center_trap_size : int, default 500
        The call-center events of ``min(call_center_trap_size, persons // 4)`` persons (among
        those with call-center events) carry the default email.

    Returns
    -------
    IdentityData
        The events with identifiers, the links file and the identifier truth.

    Raises
    ------
    ValueError
        A bad argument, events not in the generator's schema, a null client_id, or events not
        grouped by client and sorted by time.
    """
    _check(events, seed, call_center_trap_size)
    if events.num_rows == 0:
        return IdentityData(
            IDENTITY_EVENT_SCHEMA.empty_table(),
            LINKS_SCHEMA.empty_table(),
            IDENTITY_TRUTH_SCHEMA.empty_table(),
        )
    rng = np.random.default_rng(seed)
    rows = _read(events, seed)
    people = _choose_people(rng, rows, traps, call_center_trap_size)
    online = _online(rng, rows, people, traps)
    ids = _identifier_indices(rng, rows, people, online)
    return _tables(events, rows, people, online, ids)


def planned_call_center_trap(persons: int, with_call_center: int, size: int = 500) -> int:
    """How many persons the call-center default email covers (what `add_identities` plants).

    Parameters
    ----------
    persons : int
        Persons in the events (clients with at least one event).
    with_call_center : int
        Persons among them with a call-center event.
    size : int, default 500
        `call_center_trap_size`.

    Returns
    -------
    int
        ``min(size, persons // 4, with_call_center)``.
    """
    return min(size, persons // 4, with_call_center)


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed `write_dataset` gives `add_identities` for chunk `chunk` of a data set.

    Derived from (seed, chunk) by `numpy.random.SeedSequence`, in a stream of its own (the
    generator's chunk k draws from ``spawn_key=(k,)``), so identities never disturb the events.
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(chunk, 1))
    return int(sequence.generate_state(1, np.uint64)[0])


def identity_chunks(
    chunks: Iterable[tuple[pa.Table, pa.Table]], seed: int, links: Path, truth: Path
) -> Generator[tuple[pa.Table, pa.Table], None, None]:
    """The generator's (events, truth) chunks with identities; links and truth go to files.

    Why: `write_dataset` stays memory-bounded: chunk k gets `add_identities(events,
    chunk_seed(seed, k))`, its links and identifier truth are appended to the Parquet files
    `links` and `truth` (one row group per chunk), and its events are passed on.

    Parameters
    ----------
    chunks : iterable of (pyarrow.Table, pyarrow.Table)
        The generator's chunks: events and the per-client truth.
    seed : int
        The data set's seed.
    links, truth : pathlib.Path
        Where to write the links file and the identifier truth.

    Yields
    ------
    (pyarrow.Table, pyarrow.Table)
        The chunk's events with identifiers, and its per-client truth unchanged.
    """
    with (
        pq.ParquetWriter(links, LINKS_SCHEMA, compression="zstd") as links_out,
        pq.ParquetWriter(truth, IDENTITY_TRUTH_SCHEMA, compression="zstd") as truth_out,
    ):
        for k, (events, client_truth) in enumerate(chunks):
            data = add_identities(events, chunk_seed(seed, k))
            links_out.write_table(data.links)
            truth_out.write_table(data.truth)
            yield data.events, client_truth


# --------------------------------------------------------------------------- input


def _check(events: object, seed: object, size: object) -> None:
    if not isinstance(events, pa.Table):
        raise GeneratorError(f"events must be a pyarrow.Table, got {type(events).__name__}")
    if not events.schema.equals(EVENT_SCHEMA):
        raise GeneratorError(
            "events must be the generator's events (features.generator.EVENT_SCHEMA), got"
            f" columns {events.column_names}"
        )
    for name, value in (("seed", seed), ("call_center_trap_size", size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise GeneratorError(f"{name} must be an integer >= 0, got {value!r}")
    if events["client_id"].null_count:
        raise GeneratorError("events must have a client_id (the true person) on every row")


@dataclass(frozen=True)
class _Rows:
    """The input, as numbers: per row and per person (persons numbered in order of rows)."""

    person: np.ndarray  # int64 per row
    persons: int
    client_ids: pa.Array  # the person's client id, by person number
    base: np.ndarray  # uint64 per person: the key identifier values derive from
    first_row: np.ndarray  # int64 per person
    time_us: np.ndarray  # int64 per row
    cls: np.ndarray  # int8 per row: channel class
    online: np.ndarray  # bool per row: web or app
    login_like: np.ndarray  # bool per row: a web/app login or purchase
    brand: np.ndarray  # bool per row: a brand-initiated web/app event (an ad, a push)
    click: np.ndarray  # bool per row: an email click
    session: np.ndarray  # uint64 per web/app row and click: hash of (seed, person, day)
    seen: np.ndarray  # bool (persons, _CLICK + 1): has a row of channel class c (or a click)

    def any_of(self, *classes: int) -> np.ndarray:
        """Per person: whether it has a row of one of the channel classes (or _CLICK)."""
        return np.asarray(self.seen[:, list(classes)].any(axis=1))


def _read(events: pa.Table, seed: int) -> _Rows:
    encoded = pc.dictionary_encode(events["client_id"]).combine_chunks()
    person = encoded.indices.to_numpy().astype(np.int64)
    time_us = events["event_time"].combine_chunks().cast(pa.int64()).to_numpy()
    same = person[1:] == person[:-1]
    if np.any(person[1:] < person[:-1]) or np.any(same & (time_us[1:] < time_us[:-1])):
        raise GeneratorError("events must be grouped by client_id and sorted by event_time")
    persons = len(encoded.dictionary)
    cls = _codes(events["channel"], _CHANNEL_CLASSES, _OTHER)
    etype = _codes(events["event_type"], _EVENT_KINDS, len(_EVENT_KINDS))
    online = cls <= _APP
    login_like = online & (etype <= 1)
    click = (cls == _EMAIL) & (etype == 2)
    brand = etype >= 3
    counts = np.bincount(person, minlength=persons)
    seen = np.bincount(
        person * (_CLICK + 1) + np.where(click, _CLICK, cls), minlength=persons * (_CLICK + 1)
    )
    own = np.flatnonzero(online | click)
    key = _fmix(np.array([seed % 2**64], dtype=_U64) ^ _GOLD)
    day = (time_us[own] * (1.0 / _DAY_US)).astype(np.int64).astype(_U64)  # session key
    session = np.zeros(person.size, dtype=_U64)
    session[own] = _fmix(key + person[own].astype(_U64) * _GOLD + day)  # bijective mix
    return _Rows(
        person=person,
        persons=persons,
        client_ids=encoded.dictionary,
        base=_person_base(encoded.dictionary),
        first_row=np.cumsum(counts) - counts,
        time_us=time_us,
        cls=cls,
        online=online,
        login_like=login_like,
        brand=brand,
        click=click,
        session=session,
        seen=seen.reshape(persons, _CLICK + 1) > 0,
    )


def _codes(column: pa.ChunkedArray, names: tuple[str, ...], other: int) -> np.ndarray:
    """Per row: the position of the value in `names`, `other` when absent or null."""
    index = pc.index_in(column, value_set=pa.array(names)).fill_null(other)
    return index.combine_chunks().to_numpy().astype(np.int8)


def _person_base(client_ids: pa.Array) -> np.ndarray:
    """Per person, the key its identifier values derive from: the client number shifted left
    (``c`` + digits ids: distinct persons never share a value), else a 64-bit hash of the id."""
    numbered = pc.match_substring_regex(client_ids, r"^c[0-9]{1,12}$")
    if pc.all(numbered).as_py():
        number = pc.cast(pc.utf8_slice_codeunits(client_ids, 1), pa.int64()).to_numpy()
        return number.astype(_U64) << _U64(_KEY_BITS)
    values = client_ids.to_numpy(zero_copy_only=False)
    return np.asarray(pd.util.hash_array(values), dtype=_U64)


# --------------------------------------------------------------------------- who is who


@dataclass(frozen=True)
class _People:
    """Per person: registered (in the CRM, may log in) and the call-center trap."""

    registered: np.ndarray  # bool
    call_trap: np.ndarray  # bool


def _choose_people(rng: np.random.Generator, rows: _Rows, traps: bool, trap_size: int) -> _People:
    """The call-center trap persons, then the persons who never log in.

    A never-logged-in person must stay one connected person without a client_id: web/app
    events (devices) bridge to the email only through an email click, and the phone to the
    email only through a call-center event (which carries both for them). So they are drawn
    among the persons with web/app events whose channels allow that, and outside the trap.
    """
    P = rows.persons
    has_call = rows.any_of(_CALL)
    call_trap = np.zeros(P, dtype=bool)
    if traps:
        eligible = np.flatnonzero(has_call)
        size = planned_call_center_trap(P, eligible.size, trap_size)
        call_trap[rng.choice(eligible, size=size, replace=False)] = True
    has_web = rows.any_of(_WEB, _APP)
    has_email = rows.any_of(_SOCIAL, _EMAIL, _OTHER, _CLICK, _CALL)
    has_phone = rows.any_of(_MESSENGER, _STORE, _CALL)
    has_click = rows.any_of(_CLICK)
    pool = np.flatnonzero(has_web & (~has_email | has_click) & (~has_phone | has_call) & ~call_trap)
    never = rng.choice(pool, size=min(round(NEVER_LOGIN_SHARE * P), pool.size), replace=False)
    registered = np.ones(P, dtype=bool)
    registered[never] = False
    return _People(registered, call_trap)


# --------------------------------------------------------------------------- web and app


@dataclass(frozen=True)
class _Online:
    """Logins, devices and cookies of the web/app events and email clicks."""

    login_row: np.ndarray  # int64 per person: the first logged-in row, -1 if none
    logged: np.ndarray  # bool per row: carries the client_id
    device: np.ndarray  # int64 per row: own device slot 0..2, -1 without a device
    tablet: np.ndarray  # int64 per row: the shared-device pair, -1 if not on one
    tablet_person: np.ndarray  # int64 per pair: its first person (the tablet's value key)
    cookie: np.ndarray  # int64 per row: cookie number of the device, -1 without


def _online(rng: np.random.Generator, rows: _Rows, people: _People, traps: bool) -> _Online:
    """First logins, logged-in sessions, devices, the shared tablets, bridging and cookies."""
    login_row = _first_logins(rng, rows, people)
    logged = _logged_in(rng, rows, people, login_row)
    own = rows.online | rows.click
    device = _session_devices(rng, rows, own)
    tablet, tablet_person = _shared_tablets(rng, rows, people, login_row, logged, traps)
    own &= tablet < 0
    device = np.where(own, _bridged(rows, own, device, logged, login_row), -1)
    cookie = _cookies(rng, rows, device)
    return _Online(login_row, logged, device, tablet, tablet_person, cookie)


def _first_logins(rng: np.random.Generator, rows: _Rows, people: _People) -> np.ndarray:
    """Per registered person with web/app events: the row of the first login (-1 if none).

    The first web/app login or purchase; for RANDOM_LOGIN_SHARE of the persons (and those
    with neither) a random web/app event of their own (an account made while browsing; an ad
    or a push only when there is nothing else).
    """
    P, person = rows.persons, rows.person
    first_candidate = np.full(P, -1, dtype=np.int64)
    idx = np.flatnonzero(rows.login_like)
    group, first = _first_of_groups(person[idx], idx)
    first_candidate[group] = first
    use_random = (first_candidate < 0) | (rng.random(P) < RANDOM_LOGIN_SHARE)
    u = rng.random(P)
    self_started = np.flatnonzero(rows.online & ~rows.brand)
    any_online = np.flatnonzero(rows.online)
    random_row = _random_of_groups(u, person[self_started], self_started, P)
    random_row = np.where(
        random_row >= 0, random_row, _random_of_groups(u, person[any_online], any_online, P)
    )
    login_row = np.where(use_random, random_row, first_candidate)
    return np.where(people.registered, login_row, -1)


def _logged_in(
    rng: np.random.Generator, rows: _Rows, people: _People, login_row: np.ndarray
) -> np.ndarray:
    """Per row: a web/app event from the first login on, in a logged-in session (a person's
    own share of sessions); the first login itself always."""
    share = rng.beta(*_LOGGED_BETA, rows.persons)
    idx = np.flatnonzero(rows.online)
    person = rows.person[idx]
    after = login_row[person]
    u = _uniform(rows.session[idx], 1)
    logged = np.zeros(rows.person.size, dtype=bool)
    logged[idx] = (after >= 0) & (idx >= after) & (u < share[person])
    logged[login_row[login_row >= 0]] = True
    return logged


def _session_devices(rng: np.random.Generator, rows: _Rows, own: np.ndarray) -> np.ndarray:
    """Per row: the device slot of its session (person, day, web or app): the primary device
    with _PRIMARY_SHARE, else another of the person's 1-3 devices. A click opens in a browser."""
    u = rng.random(rows.persons)
    others = (u > _DEVICE_SHARES[0]).astype(np.int64) + (u > 1.0 - _DEVICE_SHARES[2])
    idx = np.flatnonzero(own)
    app = rows.cls[idx] == _APP  # a click opens in a browser: its session is the web one
    v = _uniform(rows.session[idx], 2 + app.astype(np.int64))
    n_other = others[rows.person[idx]]
    slot = 1 + ((v - _PRIMARY_SHARE) / (1.0 - _PRIMARY_SHARE) * n_other).astype(np.int64)
    device = np.full(rows.person.size, -1, dtype=np.int64)
    device[idx] = np.where(v < _PRIMARY_SHARE, 0, np.minimum(slot, n_other))
    return device


def _shared_tablets(
    rng: np.random.Generator,
    rows: _Rows,
    people: _People,
    login_row: np.ndarray,
    logged: np.ndarray,
    traps: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the shared-tablet pair it moved to (-1: none); per pair: its first person.

    About one pair per PERSONS_PER_SHARED_DEVICE persons (at least one when two persons log in
    on two events or more), drawn among those; a share of their logged-in sessions after the
    first login, and their last logged-in event, happen on the pair's tablet.
    """
    tablet = np.full(rows.person.size, -1, dtype=np.int64)
    logged_count = np.bincount(rows.person[logged], minlength=rows.persons)
    eligible = np.flatnonzero(people.registered & (logged_count >= 2))
    if not traps or eligible.size < 2:
        return tablet, np.zeros(0, dtype=np.int64)
    pairs = min(max(1, round(rows.persons / PERSONS_PER_SHARED_DEVICE)), eligible.size // 2)
    chosen = rng.choice(eligible, size=2 * pairs, replace=False)
    pair = np.full(rows.persons, -1, dtype=np.int64)
    pair[chosen] = np.arange(2 * pairs) // 2
    idx = np.flatnonzero(logged & (pair[rows.person] >= 0))
    after = idx != login_row[rows.person[idx]]
    moved = idx[after & (_uniform(rows.session[idx], 4) < _TABLET_SHARE)]
    _, last = _last_of_groups(rows.person[idx], idx)
    moved = np.union1d(moved, last)
    tablet[moved] = pair[rows.person[moved]]
    return tablet, chosen[0::2].astype(np.int64)


def _bridged(
    rows: _Rows, own: np.ndarray, device: np.ndarray, logged: np.ndarray, login_row: np.ndarray
) -> np.ndarray:
    """Per row: the device slot, moved to the person's anchor device when its device carries
    no logged-in event and no email click (nothing would tie it to the person)."""
    person = rows.person
    slot_key = person * _MAX_DEVICES + np.maximum(device, 0)
    bridge = own & (logged | rows.click)
    bridged = np.bincount(slot_key[bridge], minlength=rows.persons * _MAX_DEVICES) > 0
    anchor = np.zeros(rows.persons, dtype=np.int64)
    for mask in (own, own & rows.click):  # later ones win: the first click, the first login
        idx = np.flatnonzero(mask)
        group, first = _first_of_groups(person[idx], idx)
        anchor[group] = device[first]
    has_login = np.flatnonzero(login_row >= 0)
    anchor[has_login] = device[login_row[has_login]]
    return np.where(own & ~bridged[slot_key], anchor[person], device)


def _cookies(rng: np.random.Generator, rows: _Rows, device: np.ndarray) -> np.ndarray:
    """Per row: the cookie number of its device at its time (-1 without a device): a device's
    cookie rotates every 45-150 days, with a random phase."""
    shape = (rows.persons, _MAX_DEVICES)
    period = rng.uniform(*_COOKIE_DAYS, shape)
    phase = rng.random(shape) * period
    idx = np.flatnonzero(device >= 0)
    flat = rows.person[idx] * _MAX_DEVICES + device[idx]
    days = (rows.time_us[idx] - rows.time_us.min()) / _DAY_US  # from the first event
    number = ((days + phase.ravel()[flat]) / period.ravel()[flat]).astype(np.int64)  # >= 0
    cookie = np.full(device.size, -1, dtype=np.int64)
    cookie[idx] = number
    return cookie


# --------------------------------------------------------------------------- identifier columns


@dataclass(frozen=True)
class _Ids:
    """Per row, the index of each identifier in its values (-1: null)."""

    anonymous: np.ndarray  # into the distinct cookies (`cookie_slot`, `cookie_number`)
    device: np.ndarray  # person * 3 + slot, then persons * 3 + tablet pair
    device_used: np.ndarray  # bool per device value: on some row
    email: np.ndarray  # person, or `persons` for the call-center default email
    phone: np.ndarray  # person
    cookie_slot: np.ndarray  # int64 per distinct cookie: its device slot, person * 3 + slot
    cookie_number: np.ndarray  # int64 per distinct cookie: its number on the device


def _identifier_indices(
    rng: np.random.Generator, rows: _Rows, people: _People, online: _Online
) -> _Ids:
    """Which identifiers each row carries, as indices (each value is formatted once, later).

    Web/app rows and email clicks: their device and its cookie (a tablet row: the tablet
    only). Email, social and unknown channels: the email; store and messenger: the phone;
    call center: the phone and/or the email (both for a person outside the CRM; for the trap
    persons the default email with their own phone).
    """
    P, person, cls = rows.persons, rows.person, rows.cls
    on_device = np.flatnonzero(online.device >= 0)
    slot = person[on_device] * _MAX_DEVICES + online.device[on_device]
    cookie_slot, cookie_number, inverse = _distinct_cookies(slot, online.cookie[on_device], P)
    anonymous = np.full(person.size, -1, dtype=np.int64)
    anonymous[on_device] = inverse
    device = np.full(person.size, -1, dtype=np.int64)
    device[on_device] = slot
    on_tablet = online.tablet >= 0
    device[on_tablet] = P * _MAX_DEVICES + online.tablet[on_tablet]
    device_used = np.ones(P * _MAX_DEVICES + online.tablet_person.size, dtype=bool)
    device_used[: P * _MAX_DEVICES] = np.bincount(slot, minlength=P * _MAX_DEVICES) > 0

    email_rows = rows.click | (cls == _EMAIL) | (cls == _SOCIAL) | (cls == _OTHER)
    email = np.where(email_rows, person, -1)
    phone = np.where((cls == _MESSENGER) | (cls == _STORE), person, -1)
    call = np.flatnonzero(cls == _CALL)
    caller = person[call]
    u = rng.random(call.size)
    trapped = people.call_trap[caller]
    both = ~people.registered[caller] | trapped | (u >= _CALL_PHONE_ONLY + _CALL_EMAIL_ONLY)
    with_phone = both | (u < _CALL_PHONE_ONLY)
    with_email = both | (u >= _CALL_PHONE_ONLY)
    email[call[with_email]] = np.where(trapped, P, caller)[with_email]
    phone[call[with_phone]] = caller[with_phone]
    return _Ids(anonymous, device, device_used, email, phone, cookie_slot, cookie_number)


def _distinct_cookies(
    slot: np.ndarray, number: np.ndarray, persons: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (device slot, cookie number) pairs, sorted, and each row's index in them.

    A device's cookie numbers span a few values (the window over the rotation period), so the
    pairs are ranked by counting over the dense grid of slots x numbers, without a sort.
    """
    if slot.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    low = int(number.min())
    span = int(number.max()) - low + 1
    size = persons * _MAX_DEVICES * span
    if size > 8 * slot.size + 1_000_000:  # a very long window: sort instead
        key, inverse = np.unique(slot * span + (number - low), return_inverse=True)
        return key // span, key % span + low, inverse.astype(np.int64)
    dense = slot * span + (number - low)
    present = np.bincount(dense, minlength=size) > 0
    rank = np.cumsum(present) - 1
    distinct = np.flatnonzero(present)
    return distinct // span, distinct % span + low, rank[dense]


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Values:
    """The formatted identifier values (rows of ASCII codes, one value per row), indexed as in
    `_Ids`."""

    device: np.ndarray  # person * 3 + slot, then the tablets
    cookie: np.ndarray  # by distinct cookie
    email: np.ndarray  # by person, then the default email
    phone: np.ndarray  # by person


def _values(rows: _Rows, online: _Online, ids: _Ids) -> _Values:
    """Each identifier's value from its key: the person's base XOR (kind, slot, number).

    The first 64-bit word of a value is a bijective mix of its key, so distinct keys never give
    equal values; the other words (for the longer hashes) are mixed from it.
    """
    base, slots = rows.base, np.arange(_MAX_DEVICES, dtype=_U64)
    device = (base[:, None] ^ _kind(_K_DEVICE) ^ (slots << _U64(16))[None, :]).ravel()
    tablet = base[online.tablet_person] ^ _kind(_K_TABLET)
    owner, cookie_slot = np.divmod(ids.cookie_slot, _MAX_DEVICES)
    number = (ids.cookie_number & 0xFFFF).astype(_U64)
    cookie = base[owner] ^ _kind(_K_COOKIE) ^ (cookie_slot.astype(_U64) << _U64(16)) ^ number
    email = np.concatenate([base ^ _kind(_K_EMAIL), base[:1] ^ _kind(_K_DEFAULT_EMAIL)])
    return _Values(
        device=_hex_chars(_words(np.concatenate([device, tablet]), 1), "d"),
        cookie=_uuid_chars(_words(cookie, 2)),
        email=_hex_chars(_words(email, 4)),
        phone=_hex_chars(_words(base ^ _kind(_K_PHONE), 4)),
    )


def _tables(
    events: pa.Table, rows: _Rows, people: _People, online: _Online, ids: _Ids
) -> IdentityData:
    """Format the identifier values once and build the three tables."""
    values = _values(rows, online, ids)
    client = _masked(events["client_id"].combine_chunks(), online.logged)
    identifiers = {
        "anonymous_id": _strings(values.cookie, ids.anonymous),
        "device_id": _strings(values.device, ids.device),
        "email_hash": _strings(values.email, ids.email),
        "phone_hash": _strings(values.phone, ids.phone),
    }
    columns = [client, *events.columns[1:], *(identifiers[c] for c in IDENTIFIER_COLUMNS)]
    table = pa.Table.from_arrays(columns, schema=IDENTITY_EVENT_SCHEMA)
    registered = np.flatnonzero(people.registered)
    since = np.where(online.login_row >= 0, online.login_row, rows.first_row)[registered]
    links = _links(rows, values, registered, rows.time_us[since])
    return IdentityData(table, links, _truth(rows, people, values, ids))


def _links(rows: _Rows, values: _Values, registered: np.ndarray, linked_us: np.ndarray) -> pa.Table:
    """The CRM: each registered person's email and phone -> client_id, since registration."""
    m = registered.size
    both = np.stack([values.email[registered], values.phone[registered]], axis=1)
    return pa.Table.from_arrays(
        [
            pa.array(["email_hash", "phone_hash"]).take(np.tile([0, 1], m)),
            _strings(both.reshape(2 * m, -1)),
            rows.client_ids.take(np.repeat(registered, 2)),
            pa.array(np.repeat(linked_us, 2), pa.timestamp("us", tz="UTC")),
        ],
        schema=LINKS_SCHEMA,
    )


def _truth(rows: _Rows, people: _People, values: _Values, ids: _Ids) -> pa.Table:
    """One row per identifier in the events or the links, by type (as `ID_TYPES`), then person."""
    P = rows.persons
    registered = np.flatnonzero(people.registered)
    devices = np.flatnonzero(ids.device_used)
    # Seen in the links (registered) or on a row: outside the CRM, a call carries both.
    email_seen = rows.any_of(_SOCIAL, _EMAIL, _OTHER, _CLICK, _CALL)
    emails = np.flatnonzero(np.append(people.registered | email_seen, people.call_trap.any()))
    phones = np.flatnonzero(people.registered | rows.any_of(_MESSENGER, _STORE, _CALL))
    parts = [
        ("client_id", rows.client_ids.take(registered), registered, None),
        ("anonymous_id", _strings(values.cookie), ids.cookie_slot // _MAX_DEVICES, None),
        (
            "device_id",
            _strings(values.device[devices]),
            np.where(devices < P * _MAX_DEVICES, devices // _MAX_DEVICES, -1),
            "shared_device",
        ),
        (
            "email_hash",
            _strings(values.email[emails]),
            np.where(emails < P, emails, -1),
            "call_center_default_email",
        ),
        ("phone_hash", _strings(values.phone[phones]), phones, None),
    ]
    return pa.concat_tables(
        _truth_part(rows, id_type, value, person, kind) for id_type, value, person, kind in parts
    )


def _truth_part(
    rows: _Rows, id_type: str, value: pa.Array, person: np.ndarray, trap_kind: str | None
) -> pa.Table:
    """Truth rows of one identifier type; a person -1 marks a trap of kind `trap_kind`."""
    trap = pa.array(person < 0)
    kind = pa.scalar(trap_kind, pa.string())
    return pa.Table.from_arrays(
        [
            pa.repeat(pa.scalar(id_type), person.size),
            value,
            rows.client_ids.take(pa.array(np.maximum(person, 0), mask=person < 0)),
            trap,
            pc.if_else(trap, kind, pa.scalar(None, pa.string())),
        ],
        schema=IDENTITY_TRUTH_SCHEMA,
    )


# --------------------------------------------------------------------------- helpers


def _masked(strings: pa.Array, keep: np.ndarray) -> pa.Array:
    """`strings` with nulls where not `keep`: the same offsets and characters, a new validity
    bitmap (no copy; `strings` has no nulls)."""
    bits = np.concatenate([np.zeros(strings.offset, dtype=bool), keep])
    bitmap = pa.py_buffer(np.packbits(bits, bitorder="little"))
    _, offsets, data = strings.buffers()
    null_count = int(keep.size - np.count_nonzero(keep))
    return pa.Array.from_buffers(
        pa.string(), keep.size, [bitmap, offsets, data], null_count, strings.offset
    )


def _random_of_groups(u: np.ndarray, group: np.ndarray, idx: np.ndarray, groups: int) -> np.ndarray:
    """Per group: one of its `idx` (ascending, `group` non-decreasing) drawn with the group's
    uniform `u`; -1 for a group without any."""
    count = np.bincount(group, minlength=groups)
    start = np.cumsum(count) - count
    pick = start + np.minimum((u * count).astype(np.int64), np.maximum(count - 1, 0))
    out = np.full(groups, -1, dtype=np.int64)
    out[count > 0] = idx[pick[count > 0]]
    return out


def _first_of_groups(group: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For `idx` ascending with its `group` non-decreasing: each group and its first idx."""
    start = np.ones(group.size, dtype=bool)
    start[1:] = group[1:] != group[:-1]
    return group[start], idx[start]


def _last_of_groups(group: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For `idx` ascending with its `group` non-decreasing: each group and its last idx."""
    end = np.ones(group.size, dtype=bool)
    end[:-1] = group[1:] != group[:-1]
    return group[end], idx[end]


def _kind(kind: int) -> np.uint64:
    return _U64(kind << 18)


def _fmix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijection of uint64 that mixes every bit (wraps silently)."""
    x = x ^ (x >> _U64(30))
    x = x * _M1
    x = x ^ (x >> _U64(27))
    x = x * _M2
    return x ^ (x >> _U64(31))


def _uniform(hashes: np.ndarray, stream: int | np.ndarray) -> np.ndarray:
    """Floats in [0, 1) from uint64 hashes: draw `stream` (independent of the other streams)
    of each hashed key."""
    salt = np.atleast_1d(np.asarray(stream).astype(_U64)) * _GOLD  # wraps, as intended
    mixed = _fmix(hashes ^ salt)
    return (mixed >> _U64(11)).astype(np.float64) * 2.0**-53


def _words(key: np.ndarray, count: int) -> np.ndarray:
    """`count` uint64 words per key: the first a bijective mix of the key, the rest from it."""
    first = _fmix(np.asarray(key, dtype=_U64) ^ _VALUE_SALT)
    words = [first, *(_fmix(first ^ _U64(_GOLD_INT * i % 2**64)) for i in range(1, count))]
    return np.stack(words, axis=1)


def _hex_chars(words: np.ndarray, prefix: str = "") -> np.ndarray:
    """(n, len(prefix) + 16 * words) ASCII codes: the prefix, then the words in hex."""
    raw = words.astype(">u8").view(np.uint8).reshape(words.shape[0], -1)
    chars = _HEX_PAIRS[raw].view(np.uint8).reshape(raw.shape[0], -1)
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    return np.concatenate([np.tile(head, (chars.shape[0], 1)), chars], axis=1)


def _uuid_chars(words: np.ndarray) -> np.ndarray:
    """(n, 36) ASCII codes: two words as 8-4-4-4-12 hex digits, as cookie ids usually are."""
    chars = _hex_chars(words)
    dash = np.full((chars.shape[0], 1), ord("-"), dtype=np.uint8)
    pieces = [chars[:, :8], chars[:, 8:12], chars[:, 12:16], chars[:, 16:20], chars[:, 20:]]
    joined = [pieces[0]]
    for piece in pieces[1:]:
        joined += [dash, piece]
    return np.concatenate(joined, axis=1)


def _strings(chars: np.ndarray, index: np.ndarray | None = None) -> pa.Array:
    """A string array of the rows of `chars` (ASCII codes, one value per row), or of the rows
    `index` picks (-1: null), built from buffers without a Python loop."""
    width = chars.shape[1]
    if index is None:
        valid, data = None, chars
        n, present = chars.shape[0], chars.shape[0]
    else:
        valid = index >= 0
        data = np.take(chars, index[valid], axis=0)
        n, present = index.size, data.shape[0]
    if present * width >= 2**31:
        raise GeneratorError(f"{present} identifiers of {width} characters: too many at once")
    if valid is None:
        offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
        bitmap = None
    else:
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(valid * np.int32(width), out=offsets[1:])
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    buffers = [bitmap, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    return pa.Array.from_buffers(pa.string(), n, buffers, null_count=n - present)
