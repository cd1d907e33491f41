"""The token cache: every audio file encoded ONCE with the model's frozen EnCodec, kept on disk.

Layout of a cache folder (one codec per folder):
    cache.json     codec identity and audio format the codes were made with
    codes/KEY.npz  int16 codes (K, T) + caption + source content hash, one per file
    manifest.json  the files of the last prepare: source, content hash, key, caption, frames, group
    skipped.json   files that were not usable, each with its reason; metadata rows that were
                   skipped, each with its metadata file, line and reason
KEY = sha256(content hash + codec identity + preprocessing settings [+ tile length for a loop
shorter than it]), so a re-run skips unchanged files, re-encodes changed ones, and a codec or
setting change can never reuse stale codes. Codes are a pure function of a file and these settings
(each file is encoded alone, see encoding.py); a complete cache is only read, never locked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from musicgen_lora.data.audio import AudioError, find_audio_files, source_duration
from musicgen_lora.data.captions import (
    MetadataProblem,
    caption_files,
    condition_files,
    fallback_warning,
)
from musicgen_lora.data.chroma import ChromaSettings
from musicgen_lora.data.encoding import CacheMismatchError as CacheMismatchError
from musicgen_lora.data.encoding import Encoder, chunk_settings, file_encoder
from musicgen_lora.data.encoding import codec_encoder as codec_encoder
from musicgen_lora.data.groups import file_groups
from musicgen_lora.helpers import atomic_write_bytes, atomic_write_json, file_sha256
from musicgen_lora.modeling.model import AudioFormat

log = logging.getLogger(__name__)

CACHE_VERSION = 2
"""2: files encoded alone in overlapping chunks; loops tiled in audio before encoding."""


class NoUsableAudioError(RuntimeError):
    """Nothing in the data folder could be encoded."""


@dataclass(frozen=True)
class CacheEntry:
    source: str  # path relative to the data folder
    content_sha256: str
    key: str
    caption: str
    frames: int
    origin_split: str | None = None
    """The dataset split an example came from (Hugging Face datasets only; None in folder caches,
    and in caches written before the field existed)."""
    group: str = ""  # files of one source share it ("": the file alone); absent from older manifests
    condition: str | None = None  # melody models: the paired conditioning file (None: the clip itself)


@dataclass(frozen=True)
class PrepareResult:
    entries: list[CacheEntry]
    skipped: list[dict]  # {"source", "reason"}
    encoded: int  # files encoded by this run (the rest came from the cache)
    warnings: list[str]
    metadata_skipped: list[dict] = ()  # {"source": metadata file, "line", "reason"}

    def summary(self) -> str:
        distinct = len({entry.key for entry in self.entries})  # identical files share one encoding
        return (
            f"token cache: {len(self.entries)} usable files ({distinct} distinct: {self.encoded} encoded, "
            f"{distinct - self.encoded} reused), "
            f"{len(self.skipped)} skipped" + (" (see skipped.json)" if self.skipped else "")
            + (f"; {len(self.metadata_skipped)} metadata rows skipped" if self.metadata_skipped else "")
        )


def cache_identity(codec_id: str, fmt: AudioFormat, preprocessing: dict | None = None, chroma: ChromaSettings | None = None) -> dict:
    identity = {"version": CACHE_VERSION, "codec_id": codec_id, **asdict(fmt)}
    identity["encoding"] = chunk_settings(fmt.sample_rate, fmt.hop_length)
    if preprocessing:  # only when set: caches made without preprocessing keep their keys
        identity["preprocessing"] = preprocessing
    if chroma is not None:  # melody models: codes + chroma; never mixed with a codes-only cache
        identity["chroma"] = chroma.identity()
    return identity


RE_ENCODABLE = {"version", "encoding"}
"""Identity fields whose change only means "encode again": every key includes them, so an older
cache's codes are never reused, and its folder can take the new ones."""


def check_cache_identity(cache_dir: Path, identity: dict) -> None:
    """Refuse a cache made for another codec or format before any heavy work."""
    path = cache_dir / "cache.json"
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    differences = [  # both ways: a key only one side has (chroma, preprocessing) differs too
        f"{key}: cache has {stored.get(key)!r}, model needs {identity.get(key)!r}"
        for key in dict.fromkeys([*identity, *stored])
        if stored.get(key) != identity.get(key) and key not in RE_ENCODABLE
    ]
    if differences:
        raise CacheMismatchError(
            f"The token cache {cache_dir} was encoded for another codec or audio format:\n  "
            + "\n  ".join(differences)
            + "\nUse a separate cache folder for this model (--data.cache-dir) or delete that one."
        )


def entry_key(content_sha256: str, identity: dict, tile_seconds: float | None = None, condition_sha256: str | None = None) -> str:
    extra = {"tile_seconds": tile_seconds} if tile_seconds else {}  # only tiled loops depend on it
    if condition_sha256:  # a clip whose chroma comes from a paired conditioning file
        extra["condition"] = condition_sha256
    blob = json.dumps({"content": content_sha256, **identity, **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def prepare_cache(
    data_dir: Path,
    cache_dir: Path,
    *,
    encoder: Encoder,
    fmt: AudioFormat,
    codec_id: str,
    caption_template: str = "{folder} loop",
    use_metadata: bool = True,
    batch_size: int = 8,
    preprocessing: dict | None = None,
    tile_seconds: float | None = None,
    group_by: str = "auto",
    chroma: ChromaSettings | None = None,
) -> PrepareResult:
    """Encode every usable audio file under `data_dir` that the cache lacks; write the manifest.

    `preprocessing`: settings of any offline transform the `encoder` applies before encoding (e.g.
    percussive emphasis); part of the cache identity and of every key, so codes never mix.
    `tile_seconds`: files shorter than this are tiled in the audio domain before encoding (loops for
    windows of that length: seam-exact codes); their keys include it. None: no tiling.
    `group_by`: how files are grouped by source for the held-out split (see groups.py); the group is
    in the manifest, not the key, so changing the rule re-encodes nothing.
    `chroma`: melody models: the chroma of each file (or of its metadata `condition_file`, whose
    hash is then in the key; files named as conditions are not training clips) is stored with its
    codes (see chroma.py); part of the identity, so a codes-only cache is never reused.
    `batch_size` is kept for callers but changes nothing: each file is encoded alone, in chunks
    (musicgen_lora.data.encoding), so its codes never depend on other files or on batching.

    Bad files never stop the run: each is listed with its reason in skipped.json, and so is a file
    whose encoding fails (out of memory included; it is retried by the next run). Identical files
    are encoded once. Raises NoUsableAudioError when nothing usable remains. Safe to run from two
    processes at once: a file lock serialises them, and the second finds the work done. A complete
    cache is only read (no lock, no write), so it may live on a read-only location.
    """
    del batch_size
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist")
    identity = cache_identity(codec_id, fmt, preprocessing, chroma)
    check_cache_identity(cache_dir, identity)
    plan = plan_files(data_dir, identity, caption_template, use_metadata, tile_seconds, group_by, chroma is not None)
    done = complete_result(cache_dir, identity, plan)
    if done is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache_dir / ".lock")):
            atomic_write_json(cache_dir / "cache.json", identity)
            done = _prepare_locked(cache_dir, identity, plan, file_encoder(encoder, fmt, chroma))
    entries, skipped, encoded = done
    return _finish(data_dir, cache_dir, plan, entries, skipped, encoded, caption_template, use_metadata)


def _finish(data_dir, cache_dir, plan, entries, skipped, encoded, caption_template, use_metadata) -> PrepareResult:
    warnings = list(plan.warnings)
    if use_metadata and (kept := [entry.source for entry in entries if entry.source in plan.uncaptioned]):
        warnings.append(fallback_warning(kept, caption_template))
    for warning in warnings:
        log.warning("%s", warning)
    skipped = [s for s in skipped if "line" not in s]  # metadata rows are reported apart
    if not entries:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:5]) or "no audio files found"
        raise NoUsableAudioError(
            f"No usable audio in {data_dir} ({plan.found} audio files found, {len(skipped)} skipped: {reasons}). "
            f"Supported: wav, flac, ogg, mp3, aiff; see {cache_dir / 'skipped.json'}."
        )
    return PrepareResult(entries, skipped, encoded, [str(w) for w in warnings], plan.metadata_skipped)


@dataclass(frozen=True)
class Planned:
    """One readable audio file: what its cache entry will be."""

    path: Path
    source: str
    sha: str
    caption: str
    key: str
    tile_seconds: float | None
    condition: Path | None = None  # melody: the paired conditioning file
    condition_source: str | None = None  # ... as the manifest names it


@dataclass(frozen=True)
class Plan:
    files: list[Planned]
    skipped: list[dict]  # files that cannot even be read
    warnings: list[str]
    uncaptioned: set[str]
    found: int
    groups: dict[str, str]  # source -> group (see groups.py)
    metadata_skipped: list[dict]  # unusable metadata rows, with their file and line


def _with_groups(entries: list, plan: Plan) -> list:
    return sorted((replace(e, group=plan.groups.get(e.source, "")) for e in entries), key=lambda e: e.source)


def plan_files(data_dir: Path, identity: dict, caption_template: str, use_metadata: bool, tile_seconds,
               group_by: str = "auto", melody: bool = False) -> Plan:
    """Hash and caption every audio file (reads the data folder only; writes nothing). `melody`:
    pair files with their metadata `condition_file`s, which are conditions only, not clips."""
    conditions = condition_files(data_dir) if melody and use_metadata else {}
    condition_only = {value for value in conditions.values() if isinstance(value, Path)}
    files, skipped = [], []
    for path in find_audio_files(data_dir):
        if Path(os.path.realpath(path)) in condition_only:
            continue
        problem = _not_a_file(path)
        if problem:
            skipped.append({"source": path.relative_to(data_dir).as_posix(), "reason": problem})
        else:
            files.append(path)
    captions, warnings, fallback = caption_files(files, data_dir, caption_template, use_metadata)
    planned = []
    for path in files:
        source = path.relative_to(data_dir).as_posix()
        try:
            sha = file_sha256(path)
        except OSError as error:
            skipped.append({"source": source, "reason": f"unreadable: {error.strerror or error}"})
            continue
        duration = source_duration(path) if tile_seconds else None
        tile = tile_seconds if duration is not None and duration < tile_seconds else None
        condition = conditions.get(Path(os.path.realpath(path)))
        try:
            condition_sha = file_sha256(condition) if isinstance(condition, Path) else None
        except OSError as error:
            condition = f"condition_file unreadable: {error.strerror or error}"
        if isinstance(condition, str):  # a clip without its melody cannot train a melody model
            skipped.append({"source": source, "reason": condition})
            continue
        named = _relative(condition, data_dir) if condition else None
        planned.append(Planned(path, source, sha, captions[path], entry_key(sha, identity, tile, condition_sha), tile,
                               condition, named))
    uncaptioned = {path.relative_to(data_dir).as_posix() for path in fallback}
    groups = {path.relative_to(data_dir).as_posix(): group for path, group in file_groups(files, data_dir, group_by).items()}
    metadata_skipped = [w.record(data_dir) for w in warnings if isinstance(w, MetadataProblem)]
    return Plan(planned, skipped, warnings, uncaptioned, len(files), groups, metadata_skipped)


def _relative(path: Path, root: Path) -> str:
    resolved = Path(os.path.realpath(root))
    return path.relative_to(resolved).as_posix() if path.is_relative_to(resolved) else str(path)


def complete_result(cache_dir: Path, identity: dict, plan: Plan):
    """(entries, skipped, 0) when the cache already holds exactly what `plan` asks for, else None.

    Only reads: every file is in the manifest with its content, key and caption (and its codes
    exist), or was skipped for a reason its content determines (same content hash).
    """
    try:
        if json.loads((cache_dir / "cache.json").read_text()) != identity:
            return None
        stored = {e.source: e for e in load_manifest(cache_dir)}
        stored_skipped = [s for s in json.loads((cache_dir / "skipped.json").read_text()) if "line" not in s]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    decided = {(s["source"], s.get("content_sha256")) for s in stored_skipped}
    entries = []
    for item in plan.files:
        entry = stored.get(item.source)
        if entry and (entry.content_sha256, entry.key, entry.caption) == (item.sha, item.key, item.caption):
            if not (cache_dir / "codes" / f"{item.key}.npz").exists():
                return None
            entries.append(entry)
        elif (item.source, item.sha) not in decided:
            return None
    expected_skipped = len(plan.files) - len(entries) + len(plan.skipped)
    if len(entries) != len(stored) or len(stored_skipped) != expected_skipped:
        return None
    if any(problem not in stored_skipped for problem in plan.skipped):
        return None
    if [s for s in json.loads((cache_dir / "skipped.json").read_text()) if "line" in s] != plan.metadata_skipped:
        return None
    return _with_groups(entries, plan), stored_skipped, 0


def _prepare_locked(cache_dir: Path, identity: dict, plan: Plan, encode_file):
    for stale in [*cache_dir.glob(".*.tmp"), *cache_dir.glob("codes/.*.tmp")]:
        stale.unlink(missing_ok=True)  # left by a killed prepare; we hold the lock, nobody else writes
    entries: list[CacheEntry] = []
    skipped = list(plan.skipped)
    pending: dict[str, list[Planned]] = defaultdict(list)
    for item in plan.files:
        code_file = cache_dir / "codes" / f"{item.key}.npz"
        if code_file.exists():
            entries.append(CacheEntry(item.source, item.sha, item.key, item.caption, code_frames(code_file),
                                      condition=item.condition_source))
        else:
            pending[item.key].append(item)
    encoded = _encode_pending(pending, cache_dir, encode_file, entries, skipped)
    entries = _with_groups(entries, plan)
    atomic_write_json(cache_dir / "manifest.json", {"identity": identity, "entries": [asdict(e) for e in entries]})
    atomic_write_json(cache_dir / "skipped.json", skipped + plan.metadata_skipped)
    return entries, skipped, encoded


def _not_a_file(path: Path) -> str | None:
    """Why `path` cannot even be read as a file (a symlink loop, a dangling link, a FIFO), or None."""
    if not path.exists():  # exists() is False for a dangling or looping link, never raises
        return "unreadable: broken or looping symlink"
    if not path.is_file():
        return "unreadable: not a regular file"
    return None


def code_frames(code_file: Path) -> int:
    with np.load(code_file) as stored:
        return int(stored["codes"].shape[-1])


def _encode_pending(pending, cache_dir, encode_file, entries, skipped) -> int:
    """Encode the files the cache lacks, one at a time; a failing file is skipped, never fatal."""
    encoded = 0
    for key, copies in tqdm(pending.items(), desc="prepare: encode", unit="file", disable=None):
        first = copies[0]  # identical content is encoded once for all its copies
        try:
            codes, chroma = encode_file(first.path, first.tile_seconds, first.condition)
        except CacheMismatchError:
            raise  # the codec does not fit the decoder: no file can succeed
        except AudioError as error:  # decided by the content: the hash lets a read-only re-run trust it
            skipped.extend({"source": c.source, "reason": str(error), "content_sha256": c.sha} for c in copies)
            continue
        except Exception as error:  # out of memory, a codec crash: reported, and retried next run
            _release_memory()
            reason = f"encoding failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
            skipped.extend({"source": c.source, "reason": reason} for c in copies)
            log.warning("%s: %s", first.source, reason)
            continue
        write_codes(cache_dir / "codes" / f"{key}.npz", codes, first.sha, first.caption, chroma)
        encoded += 1
        entries.extend(CacheEntry(c.source, c.sha, key, c.caption, int(codes.shape[-1]), condition=c.condition_source)
                       for c in copies)
    return encoded


def _release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_codes(path: Path, codes: np.ndarray, sha: str, caption: str, chroma: np.ndarray | None = None) -> None:
    import io

    buffer = io.BytesIO()
    extra = {} if chroma is None else {"chroma": chroma.astype(np.uint8)}  # melody: one bin per chroma frame
    np.savez(buffer, codes=codes.astype(np.int16), content_sha256=sha, caption=caption, **extra)
    atomic_write_bytes(path, buffer.getvalue())


def load_manifest(cache_dir: Path) -> list[CacheEntry]:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    known = {field.name for field in fields(CacheEntry)}  # fields added later stay optional both ways
    return [CacheEntry(**{k: v for k, v in entry.items() if k in known}) for entry in manifest["entries"]]


def load_codes(cache_dir: Path, entry: CacheEntry) -> np.ndarray:
    with np.load(cache_dir / "codes" / f"{entry.key}.npz") as stored:
        return stored["codes"]


def load_chroma(cache_dir: Path, entry: CacheEntry) -> np.ndarray | None:
    """The entry's chroma bins (melody caches), or None."""
    with np.load(cache_dir / "codes" / f"{entry.key}.npz") as stored:
        return stored["chroma"] if "chroma" in stored.files else None
