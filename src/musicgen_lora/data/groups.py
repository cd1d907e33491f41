"""Groups of files that come from one source, and the group-aware held-out split.

Loops cut from one track (or stems of one song) sound alike: with one on each side of the split,
validation loss and FAD measure memory, not generalisation. So the split is by group, never by file.

Rules (--data.group-by):
  auto (default): the metadata's `source` column (`musicgen-lora loops` writes it), else the loops
      tool's naming `<track>_<NNN>.wav` (NNN: three digits) within one folder, else the file itself;
  source: the metadata's `source` column (a file without one is its own group);
  folder: the file's folder (relative to the data folder);
  stem-regex:<re>: the first capture group (or the whole match) of <re> searched in the file's
      stem, within one folder (a file it does not match is its own group);
  file: the file itself.
Whatever the rule, files with identical content share a group: a copy on each side would leak.
A file that is its own group is named by its content hash (the split of earlier versions).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from musicgen_lora.data.captions import read_metadata_rows

GROUP_RULES = ("auto", "source", "folder", "file", "stem-regex:<re>")
LOOP_NAME = re.compile(r"^(?P<track>.+)_\d{3}$")
"""Names `musicgen-lora loops` gives its loops: <source stem>_<loop index, 3 digits>."""


def check_group_by(rule: str) -> re.Pattern | None:
    """The compiled regex of a stem-regex rule (None for the others); ValueError for a bad rule."""
    if rule.startswith("stem-regex:"):
        try:
            return re.compile(rule.removeprefix("stem-regex:"))
        except re.error as error:
            raise ValueError(f"--data.group-by {rule!r}: not a regular expression ({error})") from None
    if rule not in GROUP_RULES:
        raise ValueError(f"--data.group-by must be one of {', '.join(GROUP_RULES)}, not {rule!r}")
    return None


def file_groups(files: list[Path], root: Path, rule: str = "auto") -> dict[Path, str]:
    """The group of every file ("" for a file that is its own group). Metadata problems are
    reported by the captions pass, not here."""
    regex = check_group_by(rule)
    rows = read_metadata_rows(root)[0] if rule in ("auto", "source") else {}
    return {path: _group(path, root, rule, rows.get(Path(os.path.realpath(path))), regex) for path in files}


def _group(path: Path, root: Path, rule: str, row: dict | None, regex: re.Pattern | None) -> str:
    folder = path.parent.relative_to(root).as_posix()
    if rule in ("auto", "source"):
        source = (row or {}).get("source")
        if isinstance(source, str | int | float) and str(source).strip():
            return f"source:{str(source).strip()}"
    if rule == "folder":
        return f"folder:{folder}"
    if rule == "auto" and (match := LOOP_NAME.match(path.stem)):
        return f"name:{folder}/{match['track']}"
    if regex is not None and (match := regex.search(path.stem)):
        return f"regex:{folder}/{match.group(1) if regex.groups else match.group(0)}"
    return ""


def clip_group(clip) -> str:
    """The group a clip (anything with .group and .content_sha256) is split by."""
    return clip.group or clip.content_sha256


def _bucket(key: str) -> str:
    return hashlib.sha256(f"split:{key}".encode()).hexdigest()


def _merge_copies(clips) -> dict[str, str]:
    """group -> the key of its component: groups sharing a file content are one (union-find)."""
    parent: dict[str, str] = {}

    def find(group: str) -> str:
        while parent.setdefault(group, group) != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    by_content: dict[str, str] = {}
    for clip in clips:
        group = find(clip_group(clip))
        other = find(by_content.setdefault(clip.content_sha256, group))
        if other != group:
            parent[max(group, other)] = min(group, other)  # the smallest name leads: order-independent
    return {group: find(group) for group in parent}


def split_sides(clips, val_fraction: float) -> dict[str, str]:
    """group -> "train" or "val". Deterministic (a hash of the group), a `val_fraction` share of
    the groups held out, at least one when there are two or more, never all."""
    components = _merge_copies(clips)
    keys = sorted(set(components.values()), key=_bucket)
    n_val = 0
    if val_fraction > 0 and len(keys) >= 2:
        n_val = min(max(1, round(val_fraction * len(keys))), len(keys) - 1)
    held_out = set(keys[:n_val])
    return {group: "val" if key in held_out else "train" for group, key in components.items()}


def split_clips(clips: list, val_fraction: float) -> tuple[list, list]:
    """(train, val): no group on both sides; see `split_sides`."""
    sides = split_sides(clips, val_fraction)
    train = [clip for clip in clips if sides[clip_group(clip)] == "train"]
    val = [clip for clip in clips if sides[clip_group(clip)] == "val"]
    return train, val


def split_record(clips: list, val_fraction: float) -> dict:
    """What split.json holds: group counts per side, and every file with its group and side."""
    sides, components = split_sides(clips, val_fraction), _merge_copies(clips)
    counts = {side: len({components[g] for g, s in sides.items() if s == side}) for side in ("train", "val")}
    files = [{"file": clip.source, "group": clip_group(clip), "side": sides[clip_group(clip)]} for clip in clips]
    return {
        "val_fraction": val_fraction,
        "groups": counts,
        "files_per_side": {side: sum(f["side"] == side for f in files) for side in ("train", "val")},
        "files": files,
    }
