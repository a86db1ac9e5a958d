"""Which identifier values identify a person: empty, placeholder and overlong values never do.

Why: real event logs carry `unknown`, `null`, `0`, an all-zero advertising id
(`00000000-0000-0000-0000-000000000000`, sent when tracking is limited) or a pasted blob where
an identifier should be. Taken at face value, each becomes one giant "person" that swallows
everyone who ever sent it. Such a value is ignored (the row keeps its other identifiers) and
counted by reason; an event left with no identifier at all is quarantined as `no_identifier`.

The rules are SQL expressions that the identity graph (`features.identity`) runs inside DuckDB
once per distinct value, and on each row of a links file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from configs import IDENTIFIER_COLUMNS, IdentityConfig

__all__ = [
    "IGNORED_REASONS",
    "IdentifierRules",
    "identifier_columns",
    "ignored_reason_sql",
    "normalized_sql",
]

IGNORED_REASONS = ("empty", "placeholder", "repeated_character", "too_long")
"""Why an identifier value was ignored, in the order they are tested."""

# Characters that separate the parts of an id (UUIDs, MACs, dotted GA client ids): a value
# made of one repeated character once these are ignored is a placeholder.
_SEPARATORS = "-_.:/ "
# Identifier types compared lower-cased: hex digests and UUIDs, which exporters write in
# either case. Client and anonymous ids keep their case (a cookie id may be case-sensitive).
LOWERED = ("device_id", "email_hash", "phone_hash")


@dataclass(frozen=True)
class IdentifierRules:
    """The placeholders (lower-cased) and the longest identifier value accepted."""

    placeholders: tuple[str, ...]
    max_length: int

    @classmethod
    def from_config(cls, identity: IdentityConfig) -> IdentifierRules:
        return cls(
            tuple(sorted({p.strip().lower() for p in identity.placeholders})),
            identity.max_identifier_length,
        )


def normalized_sql(value: str, id_type: str) -> str:
    """An identifier value as the graph compares it (lower-cased for hex digests and UUIDs)."""
    return f"lower({value})" if id_type in LOWERED else value


def ignored_reason_sql(value: str, id_type: str, rules: IdentifierRules) -> str:
    """SQL giving why a present value of `id_type` is ignored (`IGNORED_REASONS`), NULL when
    it is usable or absent. `value` is an SQL expression of trimmed text (NULL when empty).

    A client_id is not tested for a repeated character: `7` or `1111` are real CRM ids."""
    words = ", ".join("'" + p.replace("'", "''") + "'" for p in rules.placeholders) or "''"
    repeated = ""
    if id_type != "client_id":
        seps = _SEPARATORS
        bare = f"trim({value}, '{seps}')"
        repeated = (
            f" WHEN ltrim({bare}, left({bare}, 1) || '{seps}') = '' THEN 'repeated_character'"
        )
    return (
        f"CASE WHEN {value} IS NULL THEN NULL"
        f" WHEN {value} = '' THEN 'empty'"
        f" WHEN lower({value}) IN ({words}) THEN 'placeholder'"
        f"{repeated}"
        f" WHEN length({value}) > {int(rules.max_length)} THEN 'too_long'"
        " ELSE NULL END"
    )


def identifier_columns(found: Sequence[str]) -> tuple[str, ...]:
    """The identifier columns (`IDENTIFIER_COLUMNS`) among `found`, in contract order."""
    return tuple(c for c in IDENTIFIER_COLUMNS if c in found)
