"""Finding, decoding, channel handling and resampling of audio files. No model code here."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus", ".m4a")
"""File endings treated as audio; decoding decides whether a file really is one."""

SILENCE_PEAK = 1e-4
"""Peak amplitude at or below which a file counts as silent (about -80 dBFS)."""


class AudioError(ValueError):
    """A file that cannot be used as training audio; the message is the reason, for skip reports."""


def find_audio_files(root: Path) -> Iterator[Path]:
    """Audio files under `root`, recursively, in a stable order.

    Follows symlinked folders but visits each real folder once, so a symlink loop ends the walk
    instead of recursing forever. Hidden files and folders (`.name`) are passed over.
    """
    seen: set[str] = set()
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS):
                found.append(Path(folder) / name)
    yield from found


def decode(path: Path) -> tuple[np.ndarray, int]:
    """Decode a file to float32 samples (channels, samples) at its own sample rate.

    libsndfile (soundfile) reads WAV/FLAC/OGG/MP3/AIFF; anything else goes through librosa's
    fallback decoder (which uses the system's ffmpeg where available).
    """
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return np.ascontiguousarray(samples.T), int(rate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        first_error = error
    try:
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns that its fallback decoder is deprecated
            samples, rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    except Exception as error:
        raise AudioError(f"cannot decode: {_describe(first_error, path)}; fallback: {_describe(error, path)}") from error
    return np.atleast_2d(samples), int(rate)


def _describe(error: BaseException, path: Path) -> str:
    """First line of a decoder error, without the (long) path: skip reports name the file already."""
    lines = str(error).strip().splitlines()
    text = lines[0].replace(str(path), path.name) if lines else ""
    if type(error).__name__ == "NoBackendError":
        text = "no installed decoder reads this format (ffmpeg reads m4a, aac, opus, ...)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def to_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """Mono: average all channels. Stereo: keep the front pair (duplicate a mono file)."""
    if channels == 1:
        return samples.mean(axis=0, keepdims=True)
    if channels == 2:
        return np.repeat(samples, 2, axis=0) if samples.shape[0] == 1 else samples[:2]
    raise ValueError(f"models take 1 or 2 channels, not {channels}")


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return samples
    tensor = torch.from_numpy(np.ascontiguousarray(samples))
    return torchaudio.functional.resample(tensor, rate, target_rate).numpy()


def load_audio(path: Path, sample_rate: int, channels: int, min_samples: int = 1) -> np.ndarray:
    """Decode, check, convert channels and resample: (channels, samples) float32 at `sample_rate`.

    Raises AudioError with the reason when the file holds nothing a model can learn from.
    """
    samples, rate = decode(path)
    return condition(samples, rate, sample_rate, channels, min_samples)


def condition(samples: np.ndarray, rate: int, sample_rate: int, channels: int, min_samples: int = 1) -> np.ndarray:
    """Check decoded (channels, samples) audio, convert channels and resample (see `load_audio`)."""
    if samples.size == 0:
        raise AudioError("no samples")
    if not np.isfinite(samples).all():
        raise AudioError("contains NaN or Inf samples")
    if float(np.abs(samples).max()) <= SILENCE_PEAK:
        raise AudioError("silent (peak below -80 dBFS)")
    audio = resample(to_channels(samples, channels), rate, sample_rate).astype(np.float32)
    if audio.shape[-1] < min_samples:
        seconds = samples.shape[-1] / rate
        raise AudioError(f"too short: {seconds:.4f} s is less than one codec frame")
    return audio


# --- Streaming: decode, convert and resample block by block, so memory does not grow with length.

BLOCK_SECONDS = 10.0
"""Source audio decoded per block when streaming."""
_LOWPASS_WIDTH, _ROLLOFF = 6, 0.99  # torchaudio.functional.resample's defaults, used by `resample`


def source_duration(path: Path) -> float | None:
    """Seconds of audio from the file header (no decoding), or None when no header reader knows it."""
    try:
        info = soundfile.info(path)
        return info.frames / info.samplerate
    except Exception:
        return None


def _source_blocks(path: Path, block_seconds: float) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, iterator of (channels, n) float32 blocks at that rate). libsndfile formats are
    read block by block; the fallback decoder (m4a, opus, ...) reads the whole file at once."""
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        handle = soundfile.SoundFile(path)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        samples, rate = decode(path)  # raises AudioError with both decoders' reasons
        return rate, iter([samples])
    rate, block = int(handle.samplerate), max(1, int(block_seconds * handle.samplerate))

    def blocks() -> Iterator[np.ndarray]:
        with handle:
            while True:
                samples = handle.read(block, dtype="float32", always_2d=True)
                if samples.shape[0] == 0:
                    return
                yield np.ascontiguousarray(samples.T)

    return rate, blocks()


def _tiled(blocks: Iterator[np.ndarray], rate: int, tile_seconds: float) -> Iterator[np.ndarray]:
    """A loop repeated at its own rate until it covers `tile_seconds` plus one more loop (so a window
    may start at any point of the loop): the audio a listener hears when the loop repeats."""
    loop = np.concatenate(list(blocks), axis=-1)
    repeats = -(-int(tile_seconds * rate) // max(1, loop.shape[-1])) + 1
    yield np.tile(loop, (1, repeats))


def resample_blocks(blocks: Iterator[np.ndarray], rate: int, target_rate: int) -> Iterator[np.ndarray]:
    """Resample a stream of blocks with no seams: the concatenated output equals `resample` of the
    concatenated input up to float rounding. Each step resamples a span of whole polyphase periods
    with enough context on both sides that the sinc kernel never sees a block edge."""
    if rate == target_rate:
        yield from blocks
        return
    g = math.gcd(rate, target_rate)
    orig, new = rate // g, target_rate // g
    width = math.ceil(_LOWPASS_WIDTH * orig / (min(orig, new) * _ROLLOFF))  # the kernel's half-width
    context = orig * (math.ceil((width + orig) / orig) + 1)  # input samples, whole periods
    step = orig * max(1, int(BLOCK_SECONDS * rate) // orig)
    buffer, start, done = None, 0, 0  # buffer holds input from `start`; output emitted up to input `done`
    for block in blocks:
        buffer = block if buffer is None else np.concatenate([buffer, block], axis=-1)
        while start + buffer.shape[-1] >= done + step + context:
            out = resample(buffer[:, : done + step + context - start], rate, target_rate)
            first = (done - start) * new // orig
            yield out[:, first : first + step * new // orig]
            done += step
            keep_from = max(0, done - context)
            buffer, start = buffer[:, keep_from - start :], keep_from
    if buffer is not None and start + buffer.shape[-1] > done:
        yield resample(buffer, rate, target_rate)[:, (done - start) * new // orig :]


def stream_audio(
    path: Path,
    sample_rate: int,
    channels: int,
    *,
    min_samples: int = 1,
    tile_seconds: float | None = None,
    block_seconds: float = BLOCK_SECONDS,
) -> Iterator[np.ndarray]:
    """`load_audio` as a stream of (channels, n) float32 blocks at `sample_rate`, checked as it goes.

    Files shorter than `tile_seconds` are tiled (see `_tiled`) before resampling. A bad file raises
    AudioError while streaming (NaN samples) or at the end (silent, too short, no samples).
    """
    rate, blocks = _source_blocks(path, block_seconds)
    duration = source_duration(path)
    if tile_seconds and duration is not None and duration * sample_rate < min_samples:
        raise AudioError(f"too short: {duration:.4f} s is less than one codec frame")
    if tile_seconds and duration is not None and 0 < duration < tile_seconds:
        blocks = _tiled(blocks, rate, tile_seconds)
    stats = {"peak": 0.0, "source": 0, "out": 0}

    def checked() -> Iterator[np.ndarray]:
        for block in blocks:
            if not np.isfinite(block).all():
                raise AudioError("contains NaN or Inf samples")
            stats["peak"] = max(stats["peak"], float(np.abs(block).max(initial=0.0)))
            stats["source"] += block.shape[-1]
            yield to_channels(block, channels)

    for out in resample_blocks(checked(), rate, sample_rate):
        stats["out"] += out.shape[-1]
        yield out.astype(np.float32, copy=False)
    if stats["source"] == 0:
        raise AudioError("no samples")
    if stats["peak"] <= SILENCE_PEAK:
        raise AudioError("silent (peak below -80 dBFS)")
    if stats["out"] < min_samples:
        raise AudioError(f"too short: {stats['source'] / rate:.4f} s is less than one codec frame")
