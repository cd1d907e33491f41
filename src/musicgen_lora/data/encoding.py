"""Memory-bounded encoding: a stream of audio blocks -> codes, one overlapping chunk at a time.

EnCodec's convolutions see a few hundred ms; its LSTM sees further but forgets fast. Each chunk is
encoded with CONTEXT_SECONDS of real audio on both sides and only its own frames are kept, so the
codes of a long file match one-piece encoding almost everywhere (see tests/test_encode_chunks.py
for the measured agreement) while peak memory depends on the chunk size, not on the file length.

Every chunk is encoded alone (batch of one), and chunk boundaries depend only on the file's
length: the codes are a pure function of the file and the settings, never of what else is encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

CHUNK_SECONDS = 10.0
"""Audio per encoder call (plus context): bounds peak memory (musicgen-small's codec: ~40 MB/s)."""
CONTEXT_SECONDS = 1.0
"""Real audio encoded on each side of a chunk and then dropped, so chunk edges do not show."""

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""(batch, channels, samples) float audio -> (batch, K, frames) integer codes."""


def chunk_settings(sample_rate: int, hop_length: int) -> dict:
    """The chunking, in frames: part of the cache identity (other chunking, other codes)."""
    frame_rate = sample_rate / hop_length
    return {"chunk_frames": round(CHUNK_SECONDS * frame_rate), "context_frames": round(CONTEXT_SECONDS * frame_rate)}


def encode_blocks(
    blocks: Iterable[np.ndarray], encoder: Encoder, hop_length: int, chunk_frames: int, context_frames: int
) -> np.ndarray:
    """Codes (K, ceil(samples / hop)) of the concatenated (channels, n) blocks, as int16.

    Chunks start on frame boundaries, so frame t of a chunk is frame t of the file; the last
    chunk ends where the file ends, so the codec's end padding is the one of one-piece encoding.
    """
    chunk, context = chunk_frames * hop_length, context_frames * hop_length
    pieces: list[np.ndarray] = []
    buffer, start, done = None, 0, 0  # buffer holds samples from `start`; codes emitted up to `done`
    for block in blocks:
        buffer = block if buffer is None else np.concatenate([buffer, block], axis=-1)
        while start + buffer.shape[-1] >= done + chunk + context:
            codes = _encode(encoder, buffer[:, : done + chunk + context - start])
            first = (done - start) // hop_length
            pieces.append(codes[:, first : first + chunk_frames])
            done += chunk
            keep_from = max(0, done - context)
            buffer, start = buffer[:, keep_from - start :], keep_from
    if buffer is not None and start + buffer.shape[-1] > done:
        pieces.append(_encode(encoder, buffer)[:, (done - start) // hop_length :])
    if not pieces:
        raise ValueError("no audio to encode")
    return np.concatenate(pieces, axis=-1)


def _encode(encoder: Encoder, audio: np.ndarray) -> np.ndarray:
    codes = encoder(torch.from_numpy(np.ascontiguousarray(audio))[None])[0]
    return codes.cpu().numpy().astype(np.int16)
