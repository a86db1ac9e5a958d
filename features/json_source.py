"""Reading event JSON lines files (`.jsonl`, `.ndjson`, plain or compressed), malformed lines
kept as rows.

DuckDB's `read_json` guesses one schema from a sample and, with `ignore_errors`, drops a line
that does not parse without saying which. Here each line is read as text (a CSV scan with a
control character as delimiter and no quoting: a raw control character cannot occur in valid
JSON), and the contract fields are taken out of it with `json_extract_string` (one parse for
every field of a line). A line that is not a JSON object becomes a quarantine row with reason
`malformed_line`, its line number and its raw text; blank lines hold no row and are skipped.
Every value is read as text, as for CSV, and typed by the event contract.

One scan of the files, and a look at their first lines. The look finds the keys of the
objects in the first `KEY_SAMPLE_LINES` lines of each file (to check the mapping before
reading); only when a required or mapped key is not among them are the whole files scanned for
keys before the load fails. The optional contract columns (channel, amount, ...) are read
whether or not the sample holds them: a key that is absent reads as null, as a missing column
does. The scan stores the contract fields of every object and the text of every malformed line
in a temporary table, which the typed and raw passes of the load then read. (Finding the keys
of every line cost about a quarter of a JSON load: 1.2-1.4 s of 5.6 s for 1M events.)
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from configs.base import OPTIONAL_COLUMNS

__all__ = ["JSON_SUFFIXES", "JsonSource", "Step", "json_path"]

JSON_SUFFIXES = (".jsonl", ".ndjson")
KEY_SAMPLE_LINES = 20_000  # lines per file whose keys are looked at before the full scan
# One step of a source path: a field name, a list index (0-based), or a filter `(field,
# value)` selecting the first list element whose field equals the value (as text).
Step = str | int | tuple[str, str]
# A line may hold up to 8 MiB (more fails the read, naming the file). A larger limit makes
# DuckDB read the file on one thread (128 MiB: 4x slower on 1M events).
_LINES = (
    "columns = {'line': 'VARCHAR'}, header = false, delim = chr(1), quote = '', escape = '',"
    " comment = '', auto_detect = false, strict_mode = false, null_padding = false,"
    " filename = 'source_file', max_line_size = 8388608"
)
_STARTS_OBJECT = "starts_with(ltrim(line, ' ' || chr(9) || chr(13)), '{')"
# A JSON object: valid JSON starting with `{` (json_valid never fails; json_type would on
# invalid JSON, and costs a second parse).
_OBJECT = f"({_STARTS_OBJECT} AND json_valid(line))"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class JsonSource:
    """The JSON lines files of one load and the keys of their objects (per file)."""

    files: tuple[str, ...]
    keys: dict[str, tuple[str, ...]]  # file -> top-level keys found in its objects
    complete: bool = True  # the keys of every line (False: of the first lines of each file)

    @classmethod
    def of(
        cls, con: duckdb.DuckDBPyConnection, files: list[str], sample: bool = False
    ) -> JsonSource:
        """Find the top-level keys of every file: in every line, or with `sample` in the first
        `KEY_SAMPLE_LINES` lines of each file."""
        # The distinct key lists (few: an export writes a handful of shapes), keys gathered
        # here; `try` makes an invalid line's keys NULL (cheaper than parsing it twice).
        if sample:
            source = " UNION ALL ".join(
                f"(SELECT * FROM {_lines([f])} LIMIT {KEY_SAMPLE_LINES})" for f in files
            )
            source = f"({source})"
        else:
            source = _lines(files)
        rows = con.execute(
            f"SELECT DISTINCT source_file, try(json_keys(line)) FROM {source}"
            f" WHERE {_STARTS_OBJECT}"
        ).fetchall()
        keys: dict[str, dict[str, None]] = {}
        for file, names in rows:
            keys.setdefault(str(file), {}).update(dict.fromkeys(str(k) for k in names or ()))
        found = {f: tuple(sorted(ks)) for f, ks in keys.items()}
        return cls(tuple(files), {f: found.get(f, ()) for f in files}, not sample)

    def columns(self, file: str | None = None) -> dict[str, tuple[str, str]]:
        """Contract-style columns (lower-cased key -> (key, VARCHAR)) of one file or all; from
        a sample, the optional contract columns it did not see are added under their own name
        (read as null where absent)."""
        keys = self.keys[file] if file else [k for ks in self.keys.values() for k in ks]
        out = {k.strip().lower(): (k, "VARCHAR") for k in keys if '"' not in k}
        if not self.complete:
            for name in OPTIONAL_COLUMNS:
                out.setdefault(name, (name, "VARCHAR"))
        return out

    def materialize(
        self,
        con: duckdb.DuckDBPyConnection,
        wanted: dict[str, tuple[tuple[Step, ...], ...]],
        table: str,
    ) -> tuple[str, str]:
        """Read every line once into the temporary `table` and return the SQL of its objects
        (one text column per entry of `wanted`, and `source_file`) and of its malformed lines
        (`source_file`, `line_number`, `raw_line`).

        `wanted` maps a column name to its source paths (each a tuple of steps from a
        top-level key); with several, the first non-empty value of a line wins."""
        batch: list[str] = []  # plain JSON paths, extracted with one parse per line
        alternatives: dict[str, list[str]] = {}
        for name, paths in wanted.items():
            exprs = alternatives.setdefault(name, [])
            for steps in paths:
                if any(isinstance(s, tuple) for s in steps):
                    exprs.append(f"CASE WHEN is_object THEN {_filtered_expr(steps)} END")
                else:
                    batch.append(json_path(steps))
                    exprs.append(f"v[{len(batch)}]")
        # A line is an object when it starts with `{` and parses: `try` makes the extraction
        # NULL for a line that does not (one parse for both; json_valid would be a second).
        if batch:
            listed = ", ".join(_sql_text(p) for p in batch)
            # Parse first, then test the first character (`OR` looks past leading blanks only
            # where the line does not start with `{`): 0.3 s less per 1M lines than trimming
            # every line before the parse.
            extract = f"try(json_extract_string(line, [{listed}]))"
            is_object = f"(v IS NOT NULL AND (starts_with(line, '{{') OR {_STARTS_OBJECT}))"
        else:
            extract, is_object = "NULL::VARCHAR[]", f"coalesce({_OBJECT}, false)"
        inner = [
            f"{e} AS _a{k}_{i}"
            for k, es in enumerate(alternatives.values())
            for i, e in enumerate(es)
        ]
        fields = []
        for k, (name, exprs) in enumerate(alternatives.items()):
            refs = [f"_a{k}_{i}" for i in range(len(exprs))]
            value = (
                refs[0]
                if len(refs) == 1
                else "coalesce("
                + ", ".join(f"CASE WHEN trim({r}) <> '' THEN {r} END" for r in refs)
                + ")"
            )
            fields.append(f"CASE WHEN is_object THEN {value} END AS {_quoted(name)}")
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS"
            f" SELECT source_file, is_object, {', '.join(fields) if fields else 'NULL AS _none'}"
            f" FROM ("
            f"  SELECT *, {''.join(e + ', ' for e in inner)} NULL AS _end FROM ("
            f"   SELECT *, {is_object} AS is_object FROM ("
            f"    SELECT source_file, line, {extract} AS v FROM {_lines(self.files)})))"
        )
        names = "".join(", " + _quoted(n) for n in wanted)
        objects = f"(SELECT source_file{names} FROM {table} WHERE is_object) AS src"
        return objects, self._malformed(con, table)

    def _malformed(self, con: duckdb.DuckDBPyConnection, table: str) -> str:
        """The SQL of the malformed lines (`source_file`, `line_number`, `raw_line`). Numbering
        the lines serializes a scan (a JSON load took 0.45 s more of 2 s), so the lines are
        numbered in a second scan, only when the first found a malformed one."""
        bad = f"{table}_bad"
        if not con.execute(f"SELECT count(*) FROM {table} WHERE NOT is_object").fetchone()[0]:  # type: ignore[index]
            return "SELECT NULL::VARCHAR AS source_file, NULL::BIGINT AS line_number, NULL::VARCHAR AS raw_line WHERE false"
        scans = " UNION ALL ".join(
            f"SELECT source_file, ordinality AS line_number, line"
            f" FROM {_lines([f])} WITH ORDINALITY"
            for f in self.files
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {bad} AS"
            f" SELECT source_file, line_number, replace(line, chr(0), '') AS raw_line"
            f" FROM ({scans}) WHERE trim(line) <> '' AND NOT coalesce({_OBJECT}, false)"
        )
        return f"SELECT source_file, line_number, raw_line FROM {bad}"


def json_path(steps: tuple[Step, ...]) -> str:
    """The JSON path of field and index steps (`$."items"[0]."item_category"`)."""
    parts = []
    for step in steps:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif isinstance(step, str):
            parts.append('."' + step.replace('"', '\\"') + '"')
        else:
            raise ValueError(f"a filter step {step} has no JSON path")
    return "$" + "".join(parts)


def _filtered_expr(steps: tuple[Step, ...]) -> str:
    """A path with filter steps: the list before each filter extracted as JSON, its first
    element whose field equals the value kept, and the rest of the path read from it."""
    expr, pending = "line", list[Step]()
    for step in steps:
        if isinstance(step, tuple):
            field, value = step
            listing = f"json_extract({expr}, {_sql_text(json_path(tuple(pending)) + '[*]')})"
            test = f"json_extract_string(_e, {_sql_text(json_path((field,)))}) = {_sql_text(value)}"
            expr, pending = f"list_filter({listing}, lambda _e: {test})[1]", []
        else:
            pending.append(step)
    return f"json_extract_string({expr}, {_sql_text(json_path(tuple(pending)))})"


def _lines(files: tuple[str, ...] | list[str]) -> str:
    listing = "[" + ", ".join(_sql_text(f) for f in files) + "]"
    return f"read_csv({listing}, {_LINES})"
