"""Captions for audio files: metadata.csv / metadata.jsonl (the audiofolder convention) + a fallback.

A metadata file may sit in any folder; its `file_name` column is relative to that folder, its
`text` column is the caption. Files without a caption get a caption from a template, and every
such case is reported: nothing falls back silently to a dummy prompt.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

METADATA_FILES = ("metadata.csv", "metadata.jsonl")
MAX_LISTED = 10
"""Files named in one fallback-caption warning before it says "and N more"."""


def read_metadata(root: Path) -> tuple[dict[Path, str], list[str]]:
    """Captions by resolved file path from every metadata file under `root`, plus warnings."""
    captions: dict[Path, str] = {}
    warnings: list[str] = []
    for name in METADATA_FILES:
        for metadata in sorted(root.rglob(name)):
            try:
                rows = _read_rows(metadata)
            except (OSError, ValueError, csv.Error) as error:
                warnings.append(f"{metadata}: unreadable metadata ({error}); its captions are ignored")
                continue
            for line, row in enumerate(rows, start=2 if name.endswith(".csv") else 1):
                file_name, text = row.get("file_name"), row.get("text")
                if not file_name or text is None or not str(text).strip():
                    warnings.append(f"{metadata}:{line}: needs non-empty 'file_name' and 'text'")
                    continue
                path = Path(os.path.realpath(metadata.parent / file_name))  # never raises on a symlink loop
                if not path.is_file():
                    warnings.append(f"{metadata}:{line}: names missing file {file_name!r}")
                    continue
                captions[path] = str(text).strip()
    return captions, warnings


def _read_rows(metadata: Path) -> list[dict]:
    if metadata.suffix == ".csv":
        with open(metadata, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    with open(metadata, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def fallback_caption(path: Path, root: Path, template: str) -> str:
    """Caption from `template`: {folder} is the parent folder's name (the data folder's own name
    for top-level files), {stem} the file name without extension; underscores read as spaces."""
    folder = path.parent.name if path.parent != root else root.name
    return template.format(folder=folder.replace("_", " "), stem=path.stem.replace("_", " ")).strip()


def caption_files(
    files: list[Path], root: Path, template: str, use_metadata: bool = True
) -> tuple[dict[Path, str], list[str], list[Path]]:
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
    return result, warnings, fallback


def fallback_warning(sources: list[str], template: str) -> str:
    """One line, however many files: a folder without any metadata is common."""
    shown = ", ".join(sources[:MAX_LISTED])
    if len(sources) > MAX_LISTED:
        shown += f" and {len(sources) - MAX_LISTED} more"
    return f"{len(sources)} files have no caption in metadata; using the fallback caption {template!r}: {shown}"
