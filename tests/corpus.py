"""A folder of real-world audio trouble for `prepare`: every bad file of issue 6 plus good ones.

`build_corpus(root)` writes the files and returns what `prepare` must make of them: the sources it
keeps and, for each skipped source, a fragment of its reason. "Bad but usable" files are GOOD:
8 kHz and 192 kHz audio is resampled, 6 channels are down-mixed, paths with spaces and non-ASCII
characters are ordinary paths, and identical files are kept as entries that share one encoding.
"""

from __future__ import annotations

import csv
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

RATE = 32000


@dataclass
class Corpus:
    root: Path
    good: set[str] = field(default_factory=set)
    """Sources (relative posix paths) that must be kept."""
    bad: dict[str, str] = field(default_factory=dict)
    """Skipped source -> a fragment its skip reason must contain."""
    captioned: dict[str, str] = field(default_factory=dict)
    """Sources that metadata.csv captions, with their caption (the others get the fallback)."""
    missing_in_metadata: str = "gone/never_there.wav"
    """A metadata row naming a file that does not exist."""


def noise(seconds: float, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Decaying noise bursts (samples, channels): audible, different for every seed."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    envelope = np.exp(-np.arange(n) % (rate // 4) / (rate / 40))
    return (0.5 * rng.standard_normal((n, channels)) * envelope[:, None]).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def unknown_codec_wav(seconds: float = 0.5) -> bytes:
    """A well-formed RIFF/WAVE whose format tag (0x1234) no decoder knows."""
    data = noise(seconds).tobytes()
    fmt = struct.pack("<HHIIHH", 0x1234, 1, RATE, RATE * 4, 4, 32)
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(chunks)) + chunks


def build_corpus(root: Path) -> Corpus:
    corpus = Corpus(root)

    def good(source: str, data: bytes, caption: str | None = None) -> None:
        _write(root / source, data)
        corpus.good.add(source)
        if caption:
            corpus.captioned[source] = caption

    def bad(source: str, data: bytes, reason: str) -> None:
        _write(root / source, data)
        corpus.bad[source] = reason

    good("good/kick loop 01.wav", wav_bytes(noise(1.0, seed=1)), "a kick loop with spaces")
    good("good/ドラム ünïcødé.wav", wav_bytes(noise(1.0, seed=2)), "non-ascii drums")
    good("good/low_8k.wav", wav_bytes(noise(1.0, 8000, seed=3), 8000))
    good("good/high_192k.wav", wav_bytes(noise(0.5, 192000, seed=4), 192000, "PCM_24"))
    good("good/surround_6ch.wav", wav_bytes(noise(1.0, channels=6, seed=5)))
    good("good/float.wav", wav_bytes(noise(1.0, seed=6), subtype="FLOAT"))
    good("good/stereo.flac", _flac(noise(1.0, channels=2, seed=7)))
    copy = wav_bytes(noise(1.0, seed=8))
    good("dups/copy_a.wav", copy, "the same loop")
    good("dups/copy_b.wav", copy)

    bad("bad/empty.wav", b"", "empty file")
    bad("bad/truncated_header.wav", wav_bytes(noise(1.0, seed=9))[:30], "cannot decode")
    bad("bad/notes.wav", b"these are my notes, not audio\n" * 20, "cannot decode")
    bad("bad/unknown_codec.wav", unknown_codec_wav(), "cannot decode")
    random_bytes = np.random.default_rng(10).bytes(4096)
    bad("bad/random.m4a", random_bytes, "cannot decode")
    bad("bad/random.opus", random_bytes[::-1], "cannot decode")
    bad("bad/silent.wav", wav_bytes(np.zeros((RATE, 1), np.float32)), "silent")
    bad("bad/too_short.wav", wav_bytes(noise(300 / RATE, seed=11)), "too short")
    with_nan = noise(1.0, seed=12)
    with_nan[100] = np.nan
    bad("bad/nan.wav", wav_bytes(with_nan, subtype="FLOAT"), "NaN or Inf")
    with_inf = noise(1.0, seed=13)
    with_inf[200] = np.inf
    bad("bad/inf.wav", wav_bytes(with_inf, subtype="DOUBLE"), "NaN or Inf")

    # A folder symlink to its own parent (the walk must end), a file symlink to itself, a FIFO.
    (root / "loop").mkdir()
    os.symlink("..", root / "loop" / "up")
    os.symlink("self_loop.wav", root / "bad" / "self_loop.wav")
    corpus.bad["bad/self_loop.wav"] = "looping symlink"
    os.mkfifo(root / "bad" / "pipe.wav")  # opening it to read would wait forever for a writer
    corpus.bad["bad/pipe.wav"] = "not a regular file"

    _write(root / "notes.txt", b"not audio, not an audio extension: ignored\n")
    rows = [{"file_name": source, "text": text} for source, text in sorted(corpus.captioned.items())]
    rows.append({"file_name": corpus.missing_in_metadata, "text": "a file that is not there"})
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return corpus


def build_bad_only(root: Path) -> Corpus:
    """A folder holding nothing usable."""
    corpus = Corpus(root)
    for source, data, reason in (
        ("empty.wav", b"", "empty file"),
        ("silent.wav", wav_bytes(np.zeros((RATE, 1), np.float32)), "silent"),
        ("notes.wav", b"not audio\n", "cannot decode"),
    ):
        _write(root / source, data)
        corpus.bad[source] = reason
    return corpus


def _flac(samples: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, RATE, format="FLAC")
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
