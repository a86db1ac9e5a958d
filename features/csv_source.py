"""Reading event CSV files with every option pinned, and malformed lines kept as rows.

DuckDB's CSV sniffer guesses the dialect from a sample: one line starting with `#` made it
take `#` for a comment marker (rows whose client_id starts with `#` vanished), and a malformed
line failed the whole file (or, past the sample, failed with a raw parser error). Here nothing
is guessed: the header is read by Python (first line, in the configured encoding: UTF-8 with
an optional BOM, Latin-1 or UTF-16; through a decompressing stream for `.csv.gz` and
`.csv.zst`), and DuckDB reads the rest in that encoding with a fixed dialect (`,` delimiter,
`"` quote and escape, no comment character, every column text) in strict mode. A line that
does not parse (too many or too few fields, an unterminated quote, bytes that do not decode,
a whitespace-only or NUL line) is stored in DuckDB's rejects tables and becomes a quarantine
row with reason `malformed_line` and its raw text; the rest of the file loads. Empty lines
are skipped (they hold no row).
"""

from __future__ import annotations

import csv
import re
import uuid
from dataclasses import dataclass

import duckdb

from configs import SegmentationError

__all__ = [
    "COMPRESSED_SUFFIXES",
    "CSV_DIALECT",
    "CSV_ENCODINGS",
    "MALFORMED_LINE",
    "CsvHeaderError",
    "CsvSource",
    "read_header",
]

MALFORMED_LINE = "malformed_line"
# The fixed dialect: RFC 4180 as exporters write it. `comment = ''` turns comments off.
CSV_DIALECT = (
    "delim = ',', quote = '\"', escape = '\"', header = true, comment = '',"
    " auto_detect = false, strict_mode = true, null_padding = false"
)
# The encodings DuckDB's CSV reader decodes without an extension (its name -> Python's codec
# for the header). Windows-1252 needs DuckDB's `encodings` extension, which is downloaded:
# Latin-1 reads it the same except for the 27 characters of 0x80-0x9F (the euro sign, curly
# quotes), which it keeps as control characters instead of failing the line.
CSV_ENCODINGS = {"utf-8": "utf-8-sig", "latin-1": "latin-1", "utf-16": "utf-16"}
# Compressed files DuckDB reads by their extension (`compression = 'auto'`).
COMPRESSED_SUFFIXES = (".gz", ".zst")
_HEADER_BYTES = 1 << 20  # a header line longer than 1 MiB is not a header
# A column name DuckDB is given as it is: any non-empty text without control characters
# (quoted wherever SQL names it: `revenue (USD)`, `a/b`, `ts:utc`, `#id`, `"q"`).
_PLAIN_NAME = re.compile(r"[^\x00-\x1f\x7f]+")


class CsvHeaderError(SegmentationError, ValueError):
    """A CSV file whose header line is missing or unreadable; the message names the file."""


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_header(file: str, encoding: str = "utf-8") -> tuple[str, ...]:
    """The column names of a CSV file's first line in `encoding` (a BOM is ignored)."""
    if encoding not in CSV_ENCODINGS:
        raise CsvHeaderError(f"events.encoding {encoding!r}: not one of {', '.join(CSV_ENCODINGS)}")
    try:
        first = _first_line(file, wide=encoding == "utf-16")
    except OSError as exc:
        raise CsvHeaderError(f"events file {file}: cannot be read: {exc}") from exc
    if encoding == "utf-16" and first.startswith(b"\xfe\xff"):
        # DuckDB reads UTF-16 little-endian only (what Windows writes) and would read no row.
        raise CsvHeaderError(
            f"events file {file}: UTF-16 big-endian (its byte order mark says so); only"
            " little-endian UTF-16 is read: convert the file to UTF-8"
        )
    try:
        text = first.decode(CSV_ENCODINGS[encoding]).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        hint = "; set events.encoding (latin-1, utf-16)" if encoding == "utf-8" else ""
        raise CsvHeaderError(
            f"events file {file}: the header line is not {encoding.upper()}"
            f" ({exc.reason} at byte {exc.start}){hint}"
        ) from exc
    if not text.strip():
        what = "is empty" if not first else "has an empty first line"
        raise CsvHeaderError(
            f"events file {file}: {what}; a header line naming the columns"
            " (client_id,event_time,event_type,...) must come first"
        )
    if "\x00" in text:
        raise CsvHeaderError(f"events file {file}: the header line holds a NUL byte")
    names = next(csv.reader([text], delimiter=",", quotechar='"', doublequote=True))
    seen: set[str] = set()
    for name in names:
        key = name.strip().lower()
        if key in seen:
            raise CsvHeaderError(f"events file {file}: column {name!r} appears twice in the header")
        seen.add(key)
    # An empty name, or one holding a control character, is read under a placeholder (the
    # contract and events.columns cannot name it).
    return tuple(
        name if _PLAIN_NAME.fullmatch(name) else f"_column_{k}" for k, name in enumerate(names)
    )


def _first_line(file: str, wide: bool = False) -> bytes:
    """The first line of a file (its end of line kept), decompressed for `.gz` and `.zst`;
    `wide`: UTF-16 little-endian, whose lines end in the two bytes 0A 00."""
    if not wide and not file.lower().endswith(COMPRESSED_SUFFIXES):
        with open(file, "rb") as handle:
            return handle.readline(_HEADER_BYTES)
    import pyarrow as pa  # only for compressed files: a cheap start for the rest

    try:
        with pa.input_stream(file, compression="detect") as stream:
            head = stream.read(_HEADER_BYTES)
    except pa.ArrowException as exc:  # a corrupt stream
        raise OSError(str(exc)) from exc
    if not wide:
        end = head.find(b"\n")
        return head if end < 0 else head[: end + 1]
    for k in range(0, len(head) - 1, 2):
        if head[k : k + 2] == b"\n\x00":
            return head[: k + 2]
    return head[: len(head) // 2 * 2]


@dataclass(frozen=True)
class CsvSource:
    """The CSV files of one load, grouped by header, and the SQL that reads them.

    `reader(scan)` stores malformed lines in rejects tables named after this source and the
    scan (one pair per header group), so that two scans of one load do not mix theirs.
    """

    groups: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (header, files)
    tag: str
    encoding: str = "utf-8"  # a key of CSV_ENCODINGS

    @classmethod
    def of(cls, files: list[str], encoding: str = "utf-8") -> CsvSource:
        by_header: dict[tuple[str, ...], list[str]] = {}
        for file in files:
            by_header.setdefault(read_header(file, encoding), []).append(file)
        groups = tuple((header, tuple(fs)) for header, fs in by_header.items())
        return cls(groups, uuid.uuid4().hex[:8], encoding)

    def header_of(self, file: str) -> tuple[str, ...]:
        return next(header for header, fs in self.groups if file in fs)

    def _rejects(self, k: int, scan: str = "a") -> tuple[str, str]:
        return f"_csv_rejects_{self.tag}_{scan}{k}", f"_csv_scans_{self.tag}_{scan}{k}"

    def reader(self, scan: str = "a") -> str:
        """The SQL reading every file; malformed lines go to rejects tables named by `scan`.

        Each scan stores its rejects (`ignore_errors` alone is not used: after an unquoted
        value DuckDB 2.0 then drops the rest of the file); `malformed_sql` reads scan `a`'s.
        """
        selects = []
        for k, (header, files) in enumerate(self.groups):
            listing = "[" + ", ".join(_sql_text(f) for f in files) + "]"
            columns = "{" + ", ".join(f"{_sql_text(c)}: 'VARCHAR'" for c in header) + "}"
            table, rejected = self._rejects(k, scan)
            selects.append(
                f"SELECT * FROM read_csv({listing}, {CSV_DIALECT}, columns = {columns},"
                f" encoding = '{self.encoding}',"
                f" store_rejects = true, rejects_table = '{table}', rejects_scan = '{rejected}',"
                " filename = 'source_file')"
            )
        return "(" + " UNION ALL BY NAME ".join(selects) + ") AS src"

    def malformed_sql(self) -> str:
        """One row per rejected line: file, line number and raw text (NUL bytes removed)."""
        parts = []
        for k in range(len(self.groups)):
            table, scan = self._rejects(k)
            parts.append(
                f"SELECT s.file_path AS source_file, e.line AS line_number,"
                f" replace(first(e.csv_line), chr(0), '') AS raw_line"
                f" FROM {table} e JOIN {scan} s USING (scan_id, file_id)"
                f" GROUP BY s.file_path, e.line"
            )
        return " UNION ALL ".join(parts)

    def drop_rejects(self, con: duckdb.DuckDBPyConnection) -> None:
        for k in range(len(self.groups)):
            for scan in "ab":
                for name in self._rejects(k, scan):
                    con.execute(f"DROP TABLE IF EXISTS {name}")
