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
from pathlib import Path

import numpy as np
import torch

from musicgen_lora.data.audio import stream_audio
from musicgen_lora.data.chroma import ChromaSettings, ChromaStream
from musicgen_lora.modeling.model import AudioFormat

CHUNK_SECONDS = 10.0
"""Audio per encoder call (plus context): bounds peak memory (musicgen-small's codec: ~40 MB/s)."""
CONTEXT_SECONDS = 1.0
"""Real audio encoded on each side of a chunk and then dropped, so chunk edges do not show."""

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""(batch, channels, samples) float audio -> (batch, K, frames) integer codes."""
FileEncoder = Callable[[Path, "float | None", "Path | None"], "tuple[np.ndarray, np.ndarray | None]"]
"""(path, tile_seconds, condition file) -> (int16 codes (K, T), uint8 chroma bins or None)."""


class CacheMismatchError(RuntimeError):
    """The cache was encoded for another codec or audio format than the model's."""


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


def file_encoder(encoder: Encoder, fmt: AudioFormat, chroma: ChromaSettings | None = None) -> FileEncoder:
    """(path, tile_seconds, condition) -> (int16 codes (K, T), chroma bins): streamed decode, chunked
    encode, bounded memory. With `chroma` (melody models) the chroma is computed in the same pass,
    of the file itself, or of `condition` (a paired conditioning file, tiled alike) when given."""
    chunking = chunk_settings(fmt.sample_rate, fmt.hop_length)

    def stream(path: Path, tile_seconds: float | None):
        return stream_audio(path, fmt.sample_rate, fmt.channels, min_samples=fmt.hop_length, tile_seconds=tile_seconds)

    def encode_file(path: Path, tile_seconds: float | None, condition: Path | None = None):
        if chroma is None:
            return encode_blocks(stream(path, tile_seconds), encoder, fmt.hop_length, **chunking), None
        bins = ChromaStream(chroma)
        blocks = stream(path, tile_seconds) if condition is not None else bins.tap(stream(path, tile_seconds))
        codes = encode_blocks(blocks, encoder, fmt.hop_length, **chunking)
        if condition is not None:
            for block in stream(condition, tile_seconds):
                bins.feed(block)
        return codes, bins.finish()

    return encode_file


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
