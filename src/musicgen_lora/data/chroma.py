"""Melody conditioning for MusicGen-Melody: the chroma of a clip, computed once at prepare time.

The chroma is transformers' `MusicgenMelodyFeatureExtractor` (STFT with n_fft 16384, hop 4096 at
32 kHz, i.e. 7.8 frames per second; 12 bins; each frame one-hot on its strongest bin), of the
training audio itself by default (audiocraft's "self_wav"), or of a paired conditioning file
(metadata column `condition_file`). It is stored with the codes as one bin index per frame (the
features are one-hot, so nothing is lost), and a training window takes the chroma frames whose
centres fall in the window's audio (`window_chroma`).

Every chroma frame depends only on the audio under its own STFT window (the max-normalisation and
the argmax are per frame), so `ChromaStream` computes it chunk by chunk with enough context on both
sides: the same bins as one-piece extraction, with memory bounded by the chunk, not the file.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ChromaSettings:
    """The feature extractor's settings (musicgen-melody's defaults); part of the cache identity."""

    sample_rate: int = 32000
    hop_length: int = 4096
    n_fft: int = 16384
    num_chroma: int = 12

    def identity(self) -> dict:
        return {"extractor": "MusicgenMelodyFeatureExtractor", "stored": "argmax bin per frame", **asdict(self)}

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


@functools.lru_cache(maxsize=4)
def _extractor(settings: ChromaSettings):
    from transformers import MusicgenMelodyFeatureExtractor

    return MusicgenMelodyFeatureExtractor(
        feature_size=settings.num_chroma, sampling_rate=settings.sample_rate, hop_length=settings.hop_length,
        n_fft=settings.n_fft, num_chroma=settings.num_chroma,
    )


def _mono(audio: np.ndarray) -> np.ndarray:
    """(channels, n) or (n,) -> (n,) float32: the extractor reads stereo as the mean of its channels."""
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def chroma_bins(audio: np.ndarray, settings: ChromaSettings) -> np.ndarray:
    """Chroma of a whole clip in one piece, (1 + n // hop,) uint8 bins; `audio` (channels, n) or
    (n,) at settings.sample_rate."""
    mono = _mono(audio)
    features = _extractor(settings)(
        mono, sampling_rate=settings.sample_rate, max_length=len(mono), truncation=True, return_tensors="pt"
    )["input_features"][0]
    return features.argmax(-1).numpy().astype(np.uint8)


class ChromaStream:
    """Chroma bins of a stream of (channels, n) blocks, in chunks of `chunk_frames` frames.

    A chunk's frames are extracted from a piece reaching one n_fft before them and n_fft / 2 after
    the last one, so no frame of the chunk sees the piece's edge padding, and every piece holds at
    least n_fft samples (no zero padding): the bins equal `chroma_bins` of the whole stream.
    """

    def __init__(self, settings: ChromaSettings, chunk_frames: int = 256):
        hop, half = settings.hop_length, settings.n_fft // 2
        if half % hop or chunk_frames < 1:
            raise ValueError("chunked chroma needs n_fft / 2 to be a multiple of the hop length")
        self.settings, self.chunk_frames = settings, chunk_frames
        self._buffer = np.zeros(0, dtype=np.float32)
        self._start = 0  # global sample index of _buffer[0]
        self._frame = 0  # next frame to emit
        self._bins: list[np.ndarray] = []

    def tap(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The blocks, unchanged, while feeding each to the chroma."""
        for block in blocks:
            self.feed(block)
            yield block

    def feed(self, block: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, _mono(block)])
        hop, half = self.settings.hop_length, self.settings.n_fft // 2
        while True:
            last = self._frame + self.chunk_frames - 1
            end = last * hop + half  # the last frame's window ends here
            if self._start + len(self._buffer) < end:
                return
            self._emit(end, last + 1)

    def finish(self) -> np.ndarray:
        """All bins, (1 + n // hop,) uint8; the stream must have ended."""
        total = self._start + len(self._buffer)
        if total == 0:
            raise ValueError("no audio for the chroma")
        self._emit(total, total // self.settings.hop_length + 1)
        return np.concatenate(self._bins)

    def _emit(self, end: int, stop_frame: int) -> None:
        """Bins of frames [self._frame, stop_frame) from the samples up to `end`."""
        hop = self.settings.hop_length
        piece_start = max(0, self._frame * hop - self.settings.n_fft)
        piece = self._buffer[piece_start - self._start : end - self._start]
        bins = chroma_bins(piece, self.settings)
        first = self._frame - piece_start // hop
        self._bins.append(bins[first : first + stop_frame - self._frame])
        self._frame = stop_frame
        keep_from = max(0, self._frame * hop - self.settings.n_fft)
        self._buffer, self._start = self._buffer[keep_from - self._start :], keep_from


def window_frames(length: int, frames: int, offset: int, pad_mode: str) -> np.ndarray:
    """Which frame of a clip of `length` frames each of a window's `frames` frames shows (-1:
    padding), as `windows.window` lays them out."""
    positions = np.arange(frames)
    if length >= frames:
        return offset + positions
    if pad_mode == "tile":
        return (offset + positions) % length
    return np.where(positions < length, positions, -1)


def window_chroma(bins: np.ndarray, source_frames: np.ndarray, hop_length: int, settings: ChromaSettings) -> np.ndarray:
    """The chroma bins of a window: one per chroma frame whose centre lies in the window's audio
    (ceil(frames * hop / chroma hop) of them), taken from the clip's chroma at the same audio
    position; padding frames get bin 0 (the chroma of silence, and the null melody)."""
    count = math.ceil(len(source_frames) * hop_length / settings.hop_length)
    sample = np.arange(count) * settings.hop_length  # chroma frame centres, window-relative
    frame, within = np.divmod(sample, hop_length)
    source = source_frames[frame]
    index = np.clip(np.rint((source * hop_length + within) / settings.hop_length).astype(np.int64), 0, len(bins) - 1)
    return np.where(source >= 0, bins[index], 0).astype(np.uint8)


@dataclass(frozen=True)
class WindowChroma:
    """Chroma features of training windows, for a codec of `hop_length` samples per code frame."""

    settings: ChromaSettings
    hop_length: int

    def __call__(self, bins: np.ndarray, length: int, frames: int, offset: int, pad_mode: str):
        """(ceil(frames * hop / chroma hop), num_chroma) one-hot float tensor of the window of
        `frames` code frames at `offset` in a clip of `length` frames whose chroma is `bins`."""
        from musicgen_lora.modeling.melody import one_hot_chroma

        source = window_frames(length, frames, offset, pad_mode)
        return one_hot_chroma(window_chroma(bins, source, self.hop_length, self.settings), self.settings.num_chroma)


def chroma_settings(model) -> ChromaSettings | None:
    """The chroma a melody model reads, at its codec's rate (None for a text-only model)."""
    from musicgen_lora.modeling.families import is_melody

    if not is_melody(model):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return ChromaSettings(sample_rate=int(base.config.audio_encoder.sampling_rate), num_chroma=int(base.config.num_chroma))


def melody_features(path, settings: ChromaSettings, seconds: float):
    """(frames, num_chroma) one-hot chroma of the first `seconds` of an audio file (any rate or
    channels): the melody `generate --melody` conditions on, as a training window's chroma covers
    that window's audio. Raises AudioError for a file that cannot be used."""
    from musicgen_lora.data.audio import load_audio
    from musicgen_lora.modeling.melody import one_hot_chroma

    audio = load_audio(Path(path), settings.sample_rate, 1, min_samples=settings.hop_length)
    bins = chroma_bins(audio, settings)
    return one_hot_chroma(bins[: max(1, math.ceil(seconds * settings.frame_rate))], settings.num_chroma)
