"""Captions for audio files: metadata.csv / metadata.jsonl (the audiofolder convention) + a fallback.

A metadata file may sit in any folder; its `file_name` column is relative to that folder, its
`text` column is the caption; an optional `condition_file` column pairs a clip with the audio whose
melody conditions it (melody models only). Files without a caption get a caption from a template, and every
such case is reported: nothing falls back silently to a dummy prompt.

Metadata is written by people and spreadsheets, so reading it never crashes on one bad row: a
byte-order mark (Excel's "CSV UTF-8") is ignored; an unclosed quote, a wrong column count, a row
that is not an object, a non-string name or caption, a NUL byte, an over-long name, a file named
twice: each is a `MetadataProblem` (file, line, reason), logged and listed in the cache's
skipped.json by prepare, and the row is skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

METADATA_FILES = ("metadata.csv", "metadata.jsonl")
MAX_LISTED = 10
"""Files named in one fallback-caption warning before it says "and N more"."""
MAX_NAME_BYTES = 255
"""Longest file name component most file systems accept; a longer one cannot name a real file."""
MAX_PATH_BYTES = 4096
CONDITION_COLUMN = "condition_file"
"""Metadata column naming a clip's paired conditioning audio for melody models (relative to the
metadata file, as `file_name`), e.g. the accompaniment for a vocals clip."""


@dataclass(frozen=True)
class MetadataProblem:
    """A metadata row (or a whole metadata file when `line` is None) that was skipped, and why."""

    metadata: Path
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.metadata}{'' if self.line is None else f':{self.line}'}: {self.reason}"

    def record(self, root: Path) -> dict:
        """The skipped.json entry: the metadata file relative to the data folder, the line, the reason."""
        return {"source": self.metadata.relative_to(root).as_posix(), "line": self.line, "reason": self.reason}


Row = tuple[int, object]
"""(first line of the row in its file, the parsed row: a dict when well formed)."""


def read_metadata_rows(root: Path) -> tuple[dict[Path, dict], list[MetadataProblem]]:
    """Valid metadata rows by resolved file path from every metadata file under `root`, plus the
    problems of the rows that were skipped. The first row naming a file wins."""
    rows: dict[Path, dict] = {}
    first_line: dict[Path, str] = {}
    problems: list[MetadataProblem] = []
    for name in METADATA_FILES:
        for metadata in sorted(root.rglob(name)):
            try:
                parsed = _read_csv(metadata, problems) if name.endswith(".csv") else _read_jsonl(metadata, problems)
            except (OSError, ValueError) as error:  # UnicodeDecodeError included
                problems.append(MetadataProblem(metadata, None, f"unreadable metadata ({error}); its captions are ignored"))
                continue
            for line, row in parsed:
                reason, path = _row_problem(metadata, row)
                if reason is None and path in first_line:
                    reason = f"names {row['file_name']!r} again (first at {first_line[path]}); this row is ignored"
                if reason is not None:
                    problems.append(MetadataProblem(metadata, line, reason))
                    continue
                first_line[path] = f"{metadata.name}:{line}"
                rows[path] = _resolve_condition(metadata, row)
    problems.sort(key=lambda problem: (str(problem.metadata), problem.line or 0))
    return rows, problems


def read_metadata(root: Path) -> tuple[dict[Path, str], list[MetadataProblem]]:
    """Captions by resolved file path from every metadata file under `root`, plus the problems."""
    rows, problems = read_metadata_rows(root)
    return {path: row["text"].strip() for path, row in rows.items()}, problems


def _resolve_condition(metadata: Path, row: dict) -> dict:
    """The row with its `condition_file` (when a non-empty string) resolved like `file_name`."""
    name = row.get(CONDITION_COLUMN)
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        return row
    return {**row, CONDITION_COLUMN: os.path.realpath(metadata.parent / name.strip())}


def _read_csv(metadata: Path, problems: list[MetadataProblem]) -> list[Row]:
    """Rows of a CSV file as dicts; malformed rows are reported with their line and left out.
    strict: a quote left open is an error at the end of the file, not a caption swallowing it."""
    rows: list[Row] = []
    with open(metadata, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's byte-order mark
        reader = csv.reader(handle, strict=True)
        header, end = None, 0
        while True:
            start = end + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                problems.append(MetadataProblem(metadata, start, _csv_error(error, start, reader.line_num)))
                if reader.line_num <= end or "end of data" in str(error):
                    break  # nothing left to read
                end = reader.line_num
                continue
            end = reader.line_num
            if header is None:
                header = [name.strip() for name in fields]
                if not {"file_name", "text"} <= set(header):
                    problems.append(MetadataProblem(metadata, start, f"the header {fields} lacks 'file_name' and 'text'; "
                                                    "this file is ignored"))
                    return []
                continue
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                problems.append(MetadataProblem(
                    metadata, start, f"{len(fields)} columns, the header has {len(header)} ({', '.join(header)}): "
                    "an unquoted comma in a caption? Quote it; this row is ignored"))
                continue
            if end > start:
                problems.append(MetadataProblem(
                    metadata, start, f"the row spans lines {start}-{end} (a quote left open?); this row is ignored"))
                continue
            rows.append((start, dict(zip(header, fields, strict=True))))
    return rows


def _csv_error(error: csv.Error, start: int, end: int) -> str:
    if "end of data" in str(error):
        return f"a quote opened on line {start} is never closed: lines {start}-{end} (the rest of the file) are ignored"
    return f"malformed CSV ({error}); this row is ignored"


def _read_jsonl(metadata: Path, problems: list[MetadataProblem]) -> list[Row]:
    rows: list[Row] = []
    with open(metadata, encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                rows.append((line, json.loads(text)))
            except ValueError as error:
                problems.append(MetadataProblem(metadata, line, f"not valid JSON ({error}); this row is ignored"))
    return rows


def _row_problem(metadata: Path, row: object) -> tuple[str | None, Path | None]:
    """(why the row is unusable or None, the resolved path of the file it names)."""
    if not isinstance(row, dict):
        return f"a row must be an object with 'file_name' and 'text', got {json.dumps(row)[:40]}", None
    file_name, text = row.get("file_name"), row.get("text")
    if not isinstance(file_name, str) or not file_name.strip():
        if file_name is None or file_name == "" or isinstance(file_name, str):
            return "'file_name' is missing or empty", None
        return f"'file_name' must be a string, got {type(file_name).__name__} {json.dumps(file_name)[:40]}", None
    if not isinstance(text, str):
        if text is None:
            return "caption 'text' is missing", None
        return f"caption 'text' must be a string, got {type(text).__name__} {json.dumps(text)[:40]}", None
    if not text.strip():
        return "caption 'text' is empty", None
    if "\0" in file_name or "\0" in text:
        return "contains a NUL byte", None
    encoded = file_name.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        return f"file name too long ({len(encoded)} bytes): {file_name[:40]!r}...", None
    path = Path(os.path.realpath(metadata.parent / file_name))  # never raises on a symlink loop
    try:
        exists = path.is_file()
    except OSError as error:  # a name the file system refuses
        return f"unusable file name {file_name[:60]!r} ({error.strerror or error})", None
    if not exists:
        return f"names missing file {file_name!r}", None
    return None, path


def condition_files(root: Path) -> dict[Path, Path | str]:
    """By resolved audio path: its `condition_file`, resolved, or why that file cannot be used.
    Rows without the column (or with it empty) are absent: their clips condition on themselves."""
    rows, _ = read_metadata_rows(root)  # the rows' own problems are reported with the captions
    conditions: dict[Path, Path | str] = {}
    for path, row in rows.items():
        name = row.get(CONDITION_COLUMN)
        if name is None or (isinstance(name, str) and not name.strip()):
            continue
        if not isinstance(name, str) or "\0" in name:
            conditions[path] = f"{CONDITION_COLUMN} must be a file name, got {json.dumps(name)[:40]}"
            continue
        condition = Path(name)  # read_metadata_rows resolved it against its metadata file's folder
        conditions[path] = condition if condition.is_file() else f"{CONDITION_COLUMN} names missing file {name!r}"
    return conditions


def fallback_caption(path: Path, root: Path, template: str) -> str:
    """Caption from `template`: {folder} is the parent folder's name (the data folder's own name
    for top-level files), {stem} the file name without extension; underscores read as spaces."""
    folder = path.parent.name if path.parent != root else root.name
    return template.format(folder=folder.replace("_", " "), stem=path.stem.replace("_", " ")).strip()


def caption_files(
    files: list[Path], root: Path, template: str, use_metadata: bool = True
) -> tuple[dict[Path, str], list[MetadataProblem | str], list[Path]]:
    """A caption for every file, the metadata's problems as warnings, and the files that got the
    fallback caption (the caller warns about those it keeps: see `fallback_warning`)."""
    captions, warnings = read_metadata(root) if use_metadata else ({}, [])
    result: dict[Path, str] = {}
    fallback: list[Path] = []
    for path in files:
        caption = captions.get(Path(os.path.realpath(path)))
        if caption is None:
            caption = fallback_caption(path, root, template)
            fallback.append(path)
        result[path] = caption
    if fallback and not use_metadata:
        log.info("captions from template %r for %d files", template, len(fallback))
    return result, list(warnings), fallback


def fallback_warning(sources: list[str], template: str) -> str:
    """One line, however many files: a folder without any metadata is common."""
    shown = ", ".join(sources[:MAX_LISTED])
    if len(sources) > MAX_LISTED:
        shown += f" and {len(sources) - MAX_LISTED} more"
    return f"{len(sources)} files have no caption in metadata; using the fallback caption {template!r}: {shown}"
