"""The token cache: every audio file encoded ONCE with the model's frozen EnCodec, kept on disk.

Layout of a cache folder (one codec per folder):
    cache.json     codec identity and audio format the codes were made with
    codes/KEY.npz  int16 codes (K, T) + caption + source content hash, one per file
    manifest.json  the files of the last prepare: source, content hash, key, caption, frames, group
    skipped.json   files that were not usable, each with its reason; metadata rows that were
                   skipped, each with its metadata file, line and reason
KEY = sha256(content hash + codec identity + preprocessing settings), so a re-run skips unchanged
files, re-encodes changed ones, and a codec or setting change can never reuse stale codes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from musicgen_lora.audio import AudioError, find_audio_files, load_audio
from musicgen_lora.captions import MetadataProblem, caption_files, fallback_warning
from musicgen_lora.groups import file_groups
from musicgen_lora.model import AudioFormat
from musicgen_lora.outputs import current_umask

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class CacheMismatchError(RuntimeError):
    """The cache was encoded for another codec or audio format than the model's."""


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see a half-written file.

    mkstemp creates the file 0600; it gets the mode a plain open() would give (0666 & ~umask), so
    run files and the token cache stay readable to a shared group.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())


def cache_identity(codec_id: str, fmt: AudioFormat, preprocessing: dict | None = None) -> dict:
    identity = {"version": CACHE_VERSION, "codec_id": codec_id, **asdict(fmt)}
    if preprocessing:  # only when set: caches made without preprocessing keep their keys
        identity["preprocessing"] = preprocessing
    return identity


def check_cache_identity(cache_dir: Path, identity: dict) -> None:
    """Refuse a cache made for another codec or format before any heavy work."""
    path = cache_dir / "cache.json"
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    differences = [
        f"{key}: cache has {stored.get(key)!r}, model needs {value!r}"
        for key, value in identity.items()
        if stored.get(key) != value
    ]
    if differences:
        raise CacheMismatchError(
            f"The token cache {cache_dir} was encoded for another codec or audio format:\n  "
            + "\n  ".join(differences)
            + "\nUse a separate cache folder for this model (--data.cache-dir) or delete that one."
        )


def entry_key(content_sha256: str, identity: dict) -> str:
    blob = json.dumps({"content": content_sha256, **identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


Encoder = Callable[[torch.Tensor], torch.Tensor]
"""(batch, channels, samples) float audio -> (batch, K, frames) integer codes."""


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
    group_by: str = "auto",
) -> PrepareResult:
    """Encode every usable audio file under `data_dir` that the cache lacks; write the manifest.

    `preprocessing`: settings of any offline transform the `encoder` applies before encoding (e.g.
    percussive emphasis); part of the cache identity and of every key, so codes never mix.
    `group_by`: how files are grouped by source for the held-out split (see groups.py); the group is
    in the manifest, not the key, so changing the rule re-encodes nothing.

    Bad files never stop the run: each is listed with its reason in skipped.json. Identical files
    are encoded once. Raises NoUsableAudioError when nothing usable remains. Safe to run from two
    processes at once: a file lock serialises them, and the second finds the work done.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist")
    cache_dir.mkdir(parents=True, exist_ok=True)
    identity = cache_identity(codec_id, fmt, preprocessing)
    check_cache_identity(cache_dir, identity)
    with FileLock(str(cache_dir / ".lock")):
        atomic_write_json(cache_dir / "cache.json", identity)
        return _prepare_locked(
            data_dir, cache_dir, encoder, fmt, identity, caption_template, use_metadata, batch_size, group_by
        )


def _prepare_locked(data_dir, cache_dir, encoder, fmt, identity, caption_template, use_metadata, batch_size, group_by):
    for stale in [*cache_dir.glob(".*.tmp"), *cache_dir.glob("codes/.*.tmp")]:
        stale.unlink(missing_ok=True)  # left by a killed prepare; we hold the lock, nobody else writes
    files, skipped = [], []
    for path in find_audio_files(data_dir):
        problem = _not_a_file(path)
        if problem:
            skipped.append({"source": path.relative_to(data_dir).as_posix(), "reason": problem})
        else:
            files.append(path)
    captions, warnings, fallback = caption_files(files, data_dir, caption_template, use_metadata)
    entries: list[CacheEntry] = []
    pending: dict[str, list[tuple[Path, str, str]]] = defaultdict(list)  # key -> [(path, sha, caption)]
    for path in files:
        source = path.relative_to(data_dir).as_posix()
        try:
            sha = file_sha256(path)
        except OSError as error:
            skipped.append({"source": source, "reason": f"unreadable: {error.strerror or error}"})
            continue
        key = entry_key(sha, identity)
        code_file = cache_dir / "codes" / f"{key}.npz"
        if code_file.exists():
            entries.append(CacheEntry(source, sha, key, captions[path], _frames(code_file)))
        else:
            pending[key].append((path, sha, captions[path]))
    encoded = _encode_pending(pending, cache_dir, encoder, fmt, batch_size, data_dir, entries, skipped)
    groups = {path.relative_to(data_dir).as_posix(): group for path, group in file_groups(files, data_dir, group_by).items()}
    entries = sorted((replace(entry, group=groups[entry.source]) for entry in entries), key=lambda entry: entry.source)
    uncaptioned = {path.relative_to(data_dir).as_posix() for path in fallback}
    if use_metadata and (kept := [entry.source for entry in entries if entry.source in uncaptioned]):
        warnings.append(fallback_warning(kept, caption_template))
    atomic_write_json(cache_dir / "manifest.json", {"identity": identity, "entries": [asdict(e) for e in entries]})
    metadata_skipped = [w.record(data_dir) for w in warnings if isinstance(w, MetadataProblem)]
    atomic_write_json(cache_dir / "skipped.json", skipped + metadata_skipped)
    for warning in warnings:
        log.warning("%s", warning)
    result = PrepareResult(entries, skipped, encoded, [str(w) for w in warnings], metadata_skipped)
    if not entries:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:5]) or "no audio files found"
        raise NoUsableAudioError(
            f"No usable audio in {data_dir} ({len(files)} audio files found, {len(skipped)} skipped: {reasons}). "
            f"Supported: wav, flac, ogg, mp3, aiff; see {cache_dir / 'skipped.json'}."
        )
    return result


def _not_a_file(path: Path) -> str | None:
    """Why `path` cannot even be read as a file (a symlink loop, a dangling link, a FIFO), or None."""
    if not path.exists():  # exists() is False for a dangling or looping link, never raises
        return "unreadable: broken or looping symlink"
    if not path.is_file():
        return "unreadable: not a regular file"
    return None


def _frames(code_file: Path) -> int:
    with np.load(code_file) as stored:
        return int(stored["codes"].shape[-1])


def _encode_pending(pending, cache_dir, encoder, fmt, batch_size, data_dir, entries, skipped) -> int:
    """Decode and encode the files the cache lacks; files of equal length share a batch."""
    by_length: dict[int, list] = defaultdict(list)
    for key, copies in tqdm(pending.items(), desc="prepare: decode", unit="file", disable=None):
        path, sha, caption = copies[0]  # identical content is encoded once for all its copies
        try:
            audio = load_audio(path, fmt.sample_rate, fmt.channels, min_samples=fmt.hop_length)
        except AudioError as error:
            skipped.extend({"source": p.relative_to(data_dir).as_posix(), "reason": str(error)} for p, _, _ in copies)
            continue
        by_length[audio.shape[-1]].append((key, audio, copies))
    encoded = 0
    bar = tqdm(total=sum(len(group) for group in by_length.values()), desc="prepare: encode", unit="file", disable=None)
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            codes = encoder(torch.from_numpy(np.stack([audio for _, audio, _ in batch])))
            for (key, _, copies), file_codes in zip(batch, codes, strict=True):
                _write_codes(cache_dir / "codes" / f"{key}.npz", file_codes, copies[0][1], copies[0][2])
                encoded += 1
                bar.update(1)
                for path, sha, caption in copies:
                    source = path.relative_to(data_dir).as_posix()
                    entries.append(CacheEntry(source, sha, key, caption, int(file_codes.shape[-1])))
    bar.close()
    return encoded


def _write_codes(path: Path, codes: torch.Tensor, sha: str, caption: str) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, codes=codes.cpu().numpy().astype(np.int16), content_sha256=sha, caption=caption)
    atomic_write_bytes(path, buffer.getvalue())


def load_manifest(cache_dir: Path) -> list[CacheEntry]:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    known = {field.name for field in fields(CacheEntry)}  # fields added later stay optional both ways
    return [CacheEntry(**{k: v for k, v in entry.items() if k in known}) for entry in manifest["entries"]]


def load_codes(cache_dir: Path, entry: CacheEntry) -> np.ndarray:
    with np.load(cache_dir / "codes" / f"{entry.key}.npz") as stored:
        return stored["codes"]


def codec_encoder(audio_encoder, fmt: AudioFormat, device: torch.device) -> Encoder:
    """Batched, gradient-free EnCodec encoding on `device`; stereo channels are encoded separately
    and interleaved (L0, R0, L1, R1, ...), as MusicGen's stereo checkpoints expect."""

    @torch.no_grad()
    def encode(audio: torch.Tensor) -> torch.Tensor:
        batch, channels, samples = audio.shape
        flat = audio.reshape(batch * channels, 1, samples).to(device)
        codes = audio_encoder.encode(flat, bandwidth=fmt.bandwidth).audio_codes[0]  # (B*C, q, T)
        codes = codes.reshape(batch, channels, codes.shape[-2], codes.shape[-1])
        # (B, C, q, T) -> (B, q, C, T) -> (B, q*C, T): codebook-major, channel-minor interleave
        codes = codes.transpose(1, 2).reshape(batch, -1, codes.shape[-1])
        if codes.shape[1] != fmt.num_codebooks:
            raise CacheMismatchError(f"codec made {codes.shape[1]} codebooks; the decoder reads {fmt.num_codebooks}")
        return codes.cpu()

    return encode
