"""`musicgen-lora caption`: write captions for an audio folder into its metadata.jsonl.

Each caption is the --template filled with the clip's tempo and key (librosa) and its genre,
instrument and mood tags (zero-shot CLAP; see `music_tags`). The row keeps the numbers next to the
text: `{"file_name", "text", "bpm", "key", "tags": {"genre": {"techno": 0.61}, ...}}`.

Captions a user wrote are never replaced: files captioned by any metadata.csv / metadata.jsonl
under the folder are left out, and the existing rows of `<data>/metadata.jsonl` are kept as they
are, new rows appended. `--overwrite` re-captions every file (replacing only rows of
`<data>/metadata.jsonl`; a metadata file in a sub-folder still wins for its files when training
reads captions).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tyro
from tqdm.auto import tqdm

from musicgen_lora.data.captions import read_metadata
from musicgen_lora.helpers import atomic_write_bytes

if TYPE_CHECKING:  # the tagger (torch) loads only when a folder is captioned
    from musicgen_lora.tools.music_tags import ClapTagger

log = logging.getLogger(__name__)

METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class CaptionArgs:
    """Caption every audio file under --data that has no caption yet (tempo, key, CLAP tags)."""

    data: Path
    """Folder of audio files (searched recursively); captions go to <data>/metadata.jsonl."""
    template: str = "{genre}, {mood}, {instruments}, {bpm} bpm, {key}"
    """Caption template: {genre} {instruments} {mood} {bpm} {key} {folder} {stem}; a comma-separated
    part whose values are missing (say tags below --threshold) is left out."""
    clap_model: str = "laion/larger_clap_music"
    """CLAP checkpoint (Hub id or local folder) for the genre / instrument / mood tags."""
    download: bool = False
    """Fetch the CLAP weights when they are not in the local Hugging Face cache (default: offline only)."""
    no_tags: bool = False
    """Tempo and key only: no CLAP, no tags."""
    threshold: float = 0.3
    """Tags scoring below this (0..1, a softmax over each category's candidates) are left out."""
    overwrite: bool = False
    """Re-caption files that already have a caption (rows of <data>/metadata.jsonl are replaced)."""
    device: str | None = None
    """Device for CLAP: cuda or cpu; default cuda when available."""


class ClapUnavailableError(RuntimeError):
    """The CLAP weights cannot be loaded; the message says how to get them or to pass --no-tags."""


def load_tagger(model_id: str, download: bool, device) -> ClapTagger:
    from transformers import ClapModel, ClapProcessor

    from musicgen_lora.evaluation.clap import ClapScorer
    from musicgen_lora.tools.music_tags import ClapTagger

    try:
        model = ClapModel.from_pretrained(model_id, local_files_only=not download)
        processor = ClapProcessor.from_pretrained(model_id, local_files_only=not download)
    except (OSError, ValueError) as error:
        where = "could not be downloaded" if download else "are not available offline (not in the local Hugging Face cache)"
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClapUnavailableError(
            f"CLAP weights {model_id!r} {where}: {first}\n"
            f"Download them once with `hf download {model_id}` (or pass --download), point --clap-model at a "
            "local folder, or caption with tempo and key only: --no-tags."
        ) from error
    return ClapTagger(ClapScorer(model, processor, device))


def describe(path: Path, root: Path, tagger: ClapTagger | None, template: str, threshold: float) -> dict:
    """The metadata row of one file; AudioError when it cannot be decoded."""
    from musicgen_lora.data.audio import AudioError, decode
    from musicgen_lora.tools.music_tags import (
        estimate_bpm,
        estimate_key,
        keep_tags,
        render,
    )
    samples, rate = decode(path)
    mono = samples.mean(axis=0)
    if not np.isfinite(mono).all() or float(np.abs(mono).max(initial=0.0)) <= 1e-4:
        raise AudioError("silent or not finite")
    bpm = estimate_bpm(mono, rate)
    key, _ = estimate_key(mono, rate)
    tags = keep_tags(tagger.scores(samples, rate), threshold) if tagger else {}
    values = {
        "genre": next(iter(tags.get("genre", {})), None),
        "mood": next(iter(tags.get("mood", {})), None),
        "instruments": ", ".join(tags.get("instrument", {})) or None,
        "bpm": None if bpm is None else str(round(bpm)),
        "key": key,
        "folder": (path.parent.name if path.parent != root else root.name).replace("_", " "),
        "stem": path.stem.replace("_", " "),
    }
    row = {"file_name": path.relative_to(root).as_posix(), "text": render(template, values),
           "bpm": None if bpm is None else round(bpm, 1), "key": key}
    if tagger:
        row["tags"] = tags
    return row


def read_rows(metadata: Path) -> list[dict]:
    if not metadata.exists():
        return []
    return [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()]


def merge(existing: list[dict], new: list[dict], root: Path) -> list[dict]:
    """Existing rows in their order (those for re-captioned files replaced in place), then the rest."""
    def real(row):
        return os.path.realpath(root / str(row.get("file_name", "")))

    by_file = {real(row): row for row in new}
    merged = [by_file.pop(real(row), row) for row in existing]
    return merged + list(by_file.values())


def _check(args: CaptionArgs) -> None:
    from musicgen_lora.tools.music_tags import template_fields

    if not args.data.is_dir():
        raise ValueError(f"--data {args.data} is not a folder")
    if not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be in [0, 1] (got {args.threshold})")
    template_fields(args.template)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = tyro.cli(CaptionArgs, args=argv, prog="musicgen-lora caption")
    from musicgen_lora.data.audio import (  # after parsing: `--help` stays instant
        AudioError,
        find_audio_files,
    )

    try:
        _check(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = args.data
    captioned, _ = read_metadata(root)
    files = [p for p in find_audio_files(root) if args.overwrite or Path(os.path.realpath(p)) not in captioned]
    if not files:
        print(f"every audio file under {root} has a caption; nothing to do (--overwrite re-captions)")
        return 0
    tagger = None
    if not args.no_tags:
        import torch

        try:
            tagger = load_tagger(args.clap_model, args.download, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except ClapUnavailableError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    rows, skipped = [], []
    for path in tqdm(files, desc="caption", unit="file", disable=None):  # a bar on a terminal only
        try:
            rows.append(describe(path, root, tagger, args.template, args.threshold))
        except AudioError as error:
            skipped.append(f"{path.relative_to(root).as_posix()}: {error}")
    metadata = root / METADATA
    try:
        existing = read_rows(metadata)
    except (ValueError, UnicodeDecodeError) as error:  # never rewrite (and lose) a file we cannot read
        print(f"error: {metadata} is not valid JSON lines ({error}); fix or move it first", file=sys.stderr)
        return 2
    merged = merge(existing, rows, root)
    atomic_write_bytes(metadata, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged).encode())
    print(f"captioned {len(rows)} files into {metadata} ({len(captioned)} had captions"
          f"{', replaced' if args.overwrite else ', kept'}; {len(skipped)} skipped)")
    for line in skipped:
        print(f"  skipped {line}", file=sys.stderr)
    return 0
