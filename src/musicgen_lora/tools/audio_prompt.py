"""The audio prompt of `generate --continue FILE`: read the file before any model loads (a missing
or unreadable file fails at once), then cut its last --prompt-seconds to a whole number of codec
frames at the model's sample rate and channels, and check that prompt + continuation fit the model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgen_lora.training.validation import ConfigValueError


@dataclass(frozen=True)
class SourceAudio:
    path: Path
    samples: np.ndarray
    """(channels, samples) float32 at the file's own rate."""
    rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.rate


def read_source(path: Path) -> SourceAudio:
    """Decode the file to continue; ConfigValueError naming --continue when it cannot be used."""
    from musicgen_lora.data.audio import AudioError, decode

    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigValueError(f"--continue {path}: no such file")
    if not path.is_file():
        raise ConfigValueError(f"--continue {path}: not a file (give an audio file: wav, flac, ogg, mp3, ...)")
    try:
        samples, rate = decode(path)
    except (AudioError, OSError) as error:
        raise ConfigValueError(f"--continue {path}: cannot read it as audio ({error})") from None
    if samples.size == 0:
        raise ConfigValueError(f"--continue {path}: the file holds no samples")
    if not np.isfinite(samples).all():
        raise ConfigValueError(f"--continue {path}: the file holds NaN or Inf samples")
    return SourceAudio(path, samples, rate)


def prompt_seconds(source: SourceAudio, requested: float | None, frame_rate: int) -> float:
    """Seconds of `source` that prompt the model: its last `requested` seconds (all of it when
    None or longer), rounded down to whole codec frames."""
    seconds = source.seconds if requested is None else min(requested, source.seconds)
    frames = math.floor(seconds * frame_rate + 1e-9)
    if frames < 1:
        raise ConfigValueError(f"--continue {source.path}: {seconds:.4f} s is shorter than one codec frame "
                               f"(1/{frame_rate} s)")
    return frames / frame_rate


def check_fits(source: SourceAudio, prompt: float, seconds: float, *, maximum: float, frame_rate: int, model: str,
               requested: float | None) -> None:
    """The decoder holds prompt + continuation (at least one new frame) in one window of `maximum` seconds."""
    if prompt > maximum - 1.0 / frame_rate:
        which = f"--prompt-seconds {requested:g}" if requested is not None and requested < source.seconds else \
            f"the whole file ({source.seconds:.2f} s)"
        raise ConfigValueError(
            f"--continue {source.path}: the prompt, {which}, is longer than {model} can continue: it generates at "
            f"most {maximum:g} s in one go, prompt included. Pass a shorter --prompt-seconds (the file's last "
            "seconds are used)")
    if seconds > maximum - prompt + 1e-9:
        raise ConfigValueError(
            f"--seconds {seconds:g} with a {prompt:g} s prompt needs {prompt + seconds:g} s, more than {model} "
            f"generates in one go ({maximum:g} s, prompt included): at most --seconds {maximum - prompt:.2f}, "
            "or a shorter --prompt-seconds")


def prompt_audio(source: SourceAudio, prompt: float, sample_rate: int, channels: int, hop: int) -> np.ndarray:
    """The last `prompt` seconds of `source` as (channels, samples) float32 at `sample_rate`, cut to
    exactly round(prompt * sample_rate) samples (a whole number of `hop`-sample frames)."""
    from musicgen_lora.data.audio import resample, to_channels

    samples = round(prompt * sample_rate)
    assert samples % hop == 0, (samples, hop)
    # Resample a little more than needed (the filter's edge), then keep exactly the tail.
    margin = math.ceil((prompt + 0.05) * source.rate)
    tail = to_channels(source.samples[:, -margin:], channels)
    audio = resample(tail, source.rate, sample_rate).astype(np.float32)
    return np.ascontiguousarray(audio[:, -samples:])
