"""Reading event JSON lines files (`.jsonl`, `.ndjson`, plain or compressed), malformed lines
kept as rows.

DuckDB's `read_json` guesses one schema from a sample and, with `ignore_errors`, drops a line
that does not parse without saying which. Here each line is read as text (a CSV scan with a
control character as delimiter and no quoting: a raw control character cannot occur in valid
JSON), and the contract fields are taken out of it with `json_extract_string` (one parse for
every field of a line). A line that is not a JSON object becomes a quarantine row with reason
`malformed_line` and its raw text; blank lines hold no row and are skipped. Every value is read
as text, as for CSV, and typed by the event contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

__all__ = ["JSON_SUFFIXES", "JsonSource"]

JSON_SUFFIXES = (".jsonl", ".ndjson")
# A line may hold up to 8 MiB (more fails the read, naming the file). A larger limit makes
# DuckDB read the file on one thread (128 MiB: 4x slower on 1M events).
_LINES = (
    "columns = {'line': 'VARCHAR'}, header = false, delim = chr(1), quote = '', escape = '',"
    " comment = '', auto_detect = false, strict_mode = false, null_padding = false,"
    " filename = 'source_file', max_line_size = 8388608"
)
# A JSON object: valid JSON starting with `{` (json_valid never fails; json_type would on
# invalid JSON, and costs a second parse).
_OBJECT = "(starts_with(ltrim(line, ' ' || chr(9) || chr(13)), '{') AND json_valid(line))"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class JsonSource:
    """The JSON lines files of one load and the keys of their objects (per file)."""

    files: tuple[str, ...]
    keys: dict[str, tuple[str, ...]]  # file -> top-level keys found in its objects

    @classmethod
    def of(cls, con: duckdb.DuckDBPyConnection, files: list[str]) -> JsonSource:
        """Find the top-level keys of every file (one scan; keys in any line count)."""
        # The distinct key lists (few: an export writes a handful of shapes), keys gathered
        # here; `try` makes an invalid line's keys NULL (cheaper than parsing it twice).
        rows = con.execute(
            f"SELECT DISTINCT source_file, try(json_keys(line)) FROM {_lines(files)}"
            " WHERE starts_with(ltrim(line, ' ' || chr(9) || chr(13)), '{')"
        ).fetchall()
        keys: dict[str, dict[str, None]] = {}
        for file, names in rows:
            keys.setdefault(str(file), {}).update(dict.fromkeys(str(k) for k in names or ()))
        found = {f: tuple(sorted(ks)) for f, ks in keys.items()}
        return cls(tuple(files), {f: found.get(f, ()) for f in files})

    def columns(self, file: str | None = None) -> dict[str, tuple[str, str]]:
        """Contract-style columns (lower-cased key -> (key, VARCHAR)) of one file or all."""
        keys = self.keys[file] if file else [k for ks in self.keys.values() for k in ks]
        return {k.strip().lower(): (k, "VARCHAR") for k in keys if '"' not in k}

    def reader(self, wanted: dict[str, tuple[str, ...]]) -> str:
        """The SQL reading the JSON objects: one text column per entry of `wanted` (column
        name -> path of keys into the object), and `source_file`. Lines that are not JSON
        objects are left out."""
        paths = "[" + ", ".join(_sql_text(_json_path(p)) for p in wanted.values()) + "]"
        fields = "".join(
            f", v[{i + 1}] AS " + '"' + k.replace('"', '""') + '"' for i, k in enumerate(wanted)
        )
        extract = (
            f"CASE WHEN {_OBJECT} THEN json_extract_string(line, {paths}) END"
            if wanted
            else "NULL::VARCHAR[]"
        )
        return (
            f"(SELECT source_file{fields} FROM (SELECT source_file, {extract} AS v"
            f" FROM {_lines(self.files)} WHERE {_OBJECT})) AS src"
        )

    def malformed_sql(self) -> str:
        """One row per line that is not a JSON object: file, raw text (NUL bytes removed)."""
        return (
            f"SELECT source_file, NULL::BIGINT AS line_number,"
            f" replace(line, chr(0), '') AS raw_line FROM {_lines(self.files)}"
            f" WHERE trim(line) <> '' AND NOT coalesce({_OBJECT}, false)"
        )


def _json_path(keys: tuple[str, ...]) -> str:
    return "$" + "".join('."' + k.replace('"', '\\"') + '"' for k in keys)


def _lines(files: tuple[str, ...] | list[str]) -> str:
    listing = "[" + ", ".join(_sql_text(f) for f in files) + "]"
    return f"read_csv({listing}, {_LINES})"
