"""Finding, decoding, channel handling and resampling of audio files. No model code here."""

from __future__ import annotations

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
