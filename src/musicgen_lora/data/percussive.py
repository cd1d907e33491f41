"""Percussive emphasis by harmonic-percussive source separation (librosa HPSS), offline only.

Applied once to audio files before they are cut or encoded, and its output is stored (loops on
disk, or codes in a token cache whose key includes these settings); never per training step.
"""

from __future__ import annotations

import numpy as np

DEFAULT_HARMONIC_GAIN = 0.0
"""Share of the harmonic part kept (0: drums only; 1: the original balance back, roughly)."""
DEFAULT_MARGIN = 1.0
"""HPSS margin: above 1 leaves more in neither part (a stricter separation)."""


def percussive_emphasis(
    audio: np.ndarray, harmonic_gain: float = DEFAULT_HARMONIC_GAIN, margin: float = DEFAULT_MARGIN
) -> np.ndarray:
    """(channels, samples) float audio -> percussive part + harmonic_gain * harmonic part.

    Channels are separated independently; the output has the input's shape and dtype. Deterministic.
    """
    import librosa

    audio = np.asarray(audio)
    out = np.empty_like(audio)
    for channel, samples in enumerate(audio):
        stft = librosa.stft(samples.astype(np.float32))
        harmonic, percussive = librosa.decompose.hpss(stft, margin=margin)
        mixed = percussive + harmonic_gain * harmonic if harmonic_gain else percussive
        out[channel] = librosa.istft(mixed, length=samples.shape[-1])
    return out


def settings(harmonic_gain: float = DEFAULT_HARMONIC_GAIN, margin: float = DEFAULT_MARGIN) -> dict:
    """The settings that change the output: part of any cache key or manifest that stores it."""
    return {"method": "hpss", "harmonic_gain": float(harmonic_gain), "margin": float(margin)}
