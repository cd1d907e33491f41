"""Hugging Face datasets as training data (`--data.dataset`), encoded into the same token cache.

Accepted sources: a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, a
folder of parquet or arrow files, an *audiofolder* folder (audio + metadata, optionally in
train/validation/test sub-folders), or a Hub id. The audio column is read with
`Audio(decode=False)` and decoded here with soundfile: the locked `datasets` decodes (and even
encodes) audio only through torchcodec, which is not a dependency.

Every example is keyed by the sha256 of its audio (file bytes, or array + rate), so unchanged
examples are never re-encoded. Each cache entry records its `origin_split`: when the dataset has
a validation (or test) split, those examples are held out instead of a random share.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile

from musicgen_lora.data.audio import AUDIO_EXTENSIONS, AudioError, condition, find_audio_files
from musicgen_lora.data.captions import read_metadata
from musicgen_lora.data.chroma import ChromaSettings, chroma_bins
from musicgen_lora.data.encoding import chunk_settings, encode_blocks
from musicgen_lora.data.tokens import (
    CacheEntry,
    Encoder,
    NoUsableAudioError,
    PrepareResult,
    cache_identity,
    check_cache_identity,
    code_frames,
    entry_key,
    write_codes,
)
from musicgen_lora.helpers import atomic_write_json
from musicgen_lora.modeling.model import AudioFormat

log = logging.getLogger(__name__)

VALIDATION_SPLITS = ("validation", "valid", "val", "test")
"""Splits used for validation (the first one present) instead of a random held-out share."""
LOCAL_FORMS = "a folder from Dataset.save_to_disk, a folder of parquet/arrow files, or an audiofolder folder"


class DatasetSourceError(ValueError):
    """--data.dataset cannot be read; the message says what was tried and what to pass instead."""


@dataclass(frozen=True)
class Example:
    source: str
    split: str
    content_sha256: str
    caption: str
    audio: dict
    """{"bytes", "path"} (an Audio column read with decode=False) or {"array", "sampling_rate"}."""


# ----------------------------------------------------------------------------- loading


def load_splits(name: str, split: str = "train") -> dict:
    """{split name: Dataset} holding `split` and, when present, one validation split."""
    dd = _load(name)
    if not isinstance(dd, dict):  # a single Dataset: it is the training split
        return {split: dd}
    if split not in dd:
        raise DatasetSourceError(f"--data.split {split!r} is not in --data.dataset {name}; splits: {', '.join(dd)}")
    chosen = {split: dd[split]}
    held_out = next((s for s in VALIDATION_SPLITS if s in dd and s != split), None)
    if held_out:
        chosen[held_out] = dd[held_out]
    return chosen


def _load(name: str):
    import datasets

    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return datasets.load_from_disk(str(path))
        if any(path.rglob("*.parquet")) or any(path.rglob("*.arrow")):
            return datasets.load_dataset(str(path))
        if any(p.suffix.lower() in AUDIO_EXTENSIONS for p in path.rglob("*")):
            return audiofolder(path)
        raise DatasetSourceError(f"--data.dataset {name}: no dataset found in this folder (expected {LOCAL_FORMS})")
    if path.exists() or name.startswith((".", "/", "~")):
        raise DatasetSourceError(f"--data.dataset {name} is not a folder (expected {LOCAL_FORMS})")
    return _load_hub(name)


def _load_hub(name: str):
    import datasets

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    hint = (f"--data.dataset {name!r} is not a local folder and the Hugging Face Hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}. Pass {LOCAL_FORMS}, or download it "
            "once where there is network (`datasets.load_dataset(...).save_to_disk(DIR)`)")
    if not offline and not _hub_reachable():
        raise DatasetSourceError(hint + ".")  # instead of retrying for half a minute
    try:
        return datasets.load_dataset(name)
    except (ConnectionError, OSError) as error:
        raise DatasetSourceError(f"{hint}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from error


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def audiofolder(root: Path) -> dict:
    """An audiofolder as {split: Dataset} of file paths and captions, built here because the
    `audiofolder` builder needs torchcodec to write its Audio column. Sub-folders named like
    splits (train, validation, test, ...) are splits; otherwise the whole folder is `train`."""
    import datasets

    named = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name in ("train", *VALIDATION_SPLITS)]
    folders = {d.name: d for d in named} or {"train": root}
    result = {}
    for split, folder in folders.items():
        captions, _ = read_metadata(folder)
        files = list(find_audio_files(folder))
        result[split] = datasets.Dataset.from_dict({
            "audio": [{"bytes": None, "path": str(path)} for path in files],
            "text": [captions.get(Path(os.path.realpath(path)), "") for path in files],
            "file_name": [path.relative_to(folder).as_posix() for path in files],
        })
    return result


# ----------------------------------------------------------------------------- examples


def examples(splits: dict, audio_column: str, text_column: str, template: str, name: str) -> Iterator[Example]:
    """Every example of every split, with its content hash and caption (template when empty)."""
    for split, ds in splits.items():
        for column, option in ((audio_column, "audio"), (text_column, "text")):
            if column not in ds.column_names:
                raise DatasetSourceError(
                    f"--data.{option}-column {column!r} is not in split {split!r}; columns: {', '.join(ds.column_names)}"
                )
        ds = _undecoded(ds, audio_column)
        for index, row in enumerate(ds):
            audio = _as_audio(row[audio_column])
            source = f"{split}/{index:06d}"
            text = str(row[text_column] or "").strip()
            caption = text or template.format(folder=Path(name).name.replace("_", " "), stem=source).strip()
            yield Example(source, split, audio_sha256(audio), caption, audio)


def _undecoded(ds, column: str):
    from datasets import Audio

    if isinstance(ds.features.get(column), Audio):
        return ds.cast_column(column, Audio(decode=False))
    return ds


def _as_audio(value) -> dict:
    if isinstance(value, str):
        return {"bytes": None, "path": value}
    if isinstance(value, dict) and ("bytes" in value or "path" in value or "array" in value):
        return value
    raise AudioError(f"unsupported audio value of type {type(value).__name__}")


def audio_sha256(audio: dict) -> str:
    """Hash of the encoded bytes (or the file), or of the float array and its rate."""
    digest = hashlib.sha256()
    if audio.get("array") is not None:
        digest.update(f"array:{audio.get('sampling_rate')}:".encode())
        digest.update(np.ascontiguousarray(audio["array"], dtype=np.float32).tobytes())
    elif audio.get("bytes"):
        digest.update(audio["bytes"])
    elif audio.get("path") and Path(audio["path"]).is_file():
        with open(audio["path"], "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(b"missing:" + str(audio.get("path")).encode())
    return digest.hexdigest()


def decode_audio(audio: dict) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 and its rate, with soundfile (no torchcodec)."""
    if audio.get("array") is not None:
        samples = np.atleast_2d(np.asarray(audio["array"], dtype=np.float32))
        return samples, int(audio["sampling_rate"])
    source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")
    if not source or (isinstance(source, str) and not Path(source).is_file()):
        raise AudioError(f"no audio bytes, and the file {audio.get('path')!r} does not exist")
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"cannot decode: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
    return np.ascontiguousarray(samples.T), int(rate)


# ----------------------------------------------------------------------------- the cache


def prepare_dataset_cache(
    name: str,
    cache_dir: Path,
    *,
    encoder: Encoder,
    fmt: AudioFormat,
    codec_id: str,
    audio_column: str = "audio",
    text_column: str = "text",
    split: str = "train",
    caption_template: str = "{folder} loop",
    batch_size: int = 8,
    preprocessing: dict | None = None,
    chroma: ChromaSettings | None = None,
) -> PrepareResult:
    """Encode every example the cache lacks (same layout and keys as a folder cache) and write the
    manifest, each entry with its origin_split. `chroma` (melody models): each example's own chroma
    is stored with its codes. Raises DatasetSourceError or NoUsableAudioError."""
    from filelock import FileLock

    del batch_size  # kept for callers: each example is encoded alone, in chunks (see encoding.py)
    splits = load_splits(name, split)
    cache_dir.mkdir(parents=True, exist_ok=True)
    identity = cache_identity(codec_id, fmt, preprocessing, chroma)
    check_cache_identity(cache_dir, identity)
    with FileLock(str(cache_dir / ".lock")):
        atomic_write_json(cache_dir / "cache.json", identity)
        entries, skipped, encoded = [], [], 0
        encode = _example_encoder(encoder, fmt)
        for example in examples(splits, audio_column, text_column, caption_template, name):
            key = entry_key(example.content_sha256, identity)
            code_file = cache_dir / "codes" / f"{key}.npz"
            if not code_file.exists():
                try:
                    samples, rate = decode_audio(example.audio)
                    audio = condition(samples, rate, fmt.sample_rate, fmt.channels, min_samples=fmt.hop_length)
                except AudioError as error:
                    skipped.append({"source": example.source, "reason": str(error)})
                    continue
                # Alone and in chunks, as folder files are: codes never depend on other examples.
                bins = None if chroma is None else chroma_bins(audio, chroma)
                write_codes(code_file, encode(audio), example.content_sha256, example.caption, bins)
                encoded += 1
            entries.append(CacheEntry(example.source, example.content_sha256, key, example.caption,
                                      code_frames(code_file), example.split))
        entries.sort(key=lambda entry: entry.source)
        atomic_write_json(cache_dir / "manifest.json", {"identity": identity, "entries": [asdict(e) for e in entries]})
        atomic_write_json(cache_dir / "skipped.json", skipped)
    if not entries:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:5]) or "the splits are empty"
        raise NoUsableAudioError(f"No usable audio in --data.dataset {name} ({reasons}); see {cache_dir / 'skipped.json'}.")
    return PrepareResult(entries, skipped, encoded, [])


def _example_encoder(encoder: Encoder, fmt: AudioFormat):
    chunking = chunk_settings(fmt.sample_rate, fmt.hop_length)
    return lambda audio: encode_blocks([audio], encoder, fmt.hop_length, **chunking)


def held_out_sources(cache_dir: Path, train_split: str) -> set[str] | None:
    """Sources of the examples from another split than `train_split` (the validation split), or
    None when the cache records no such split (folder caches, old caches): split at random then."""
    entries = json.loads((cache_dir / "manifest.json").read_text())["entries"]
    held = {e["source"] for e in entries if e.get("origin_split") not in (None, train_split)}
    return held or None
