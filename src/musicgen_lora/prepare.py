"""`musicgen-lora prepare`: encode an audio folder once into the token cache (training runs this
itself when the cache is missing; running it ahead lets a GPU job start training at once).

What a real folder holds, and what becomes of it:
- kept, converted: any sample rate (8 kHz, 192 kHz: resampled), any number of channels (mixed to
  mono, or the front pair for stereo models), any file name (spaces, non-ASCII); identical files
  are kept as separate entries (each with its own caption) that share one encoding;
- skipped, each listed with its reason in the cache's skipped.json and counted in the one-line
  summary: empty files, files no decoder reads (truncated header, text with an audio extension,
  unknown codec), silence, audio shorter than one codec frame, NaN/Inf samples, broken or looping
  symlinks, non-regular files (a FIFO would block a read forever);
- warned about: metadata rows naming missing files, and files without a caption (they get the
  fallback caption template).
Each file is decoded, resampled and encoded in chunks (memory does not grow with its length), alone
(its codes never depend on other files); one that fails, out of memory included, is skipped and
reported. Only a folder with nothing usable is an error (exit code 1). A symlinked folder loop is walked once.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from musicgen_lora.builders import default_cache_dir, percussive_encoder
from musicgen_lora.config import DataConfig
from musicgen_lora.model import ModelLoadError, audio_format, codec_identity, load_musicgen
from musicgen_lora.outputs import require_folder
from musicgen_lora.tokens import (
    CacheMismatchError,
    NoUsableAudioError,
    codec_encoder,
    prepare_cache,
)


@dataclass(frozen=True)
class PrepareArgs:
    """Encode every audio file under --data with the model's frozen EnCodec into a token cache."""

    data: Path
    """Folder of audio files (searched recursively), with optional metadata.csv / metadata.jsonl captions."""
    model: str = "facebook/musicgen-small"
    """Hub id or local folder of the MusicGen checkpoint whose codec encodes the audio (`tiny` offline)."""
    cache: Path | None = None
    """Cache folder; default: the one training uses for this data folder and codec."""
    caption_template: str = "{folder} loop"
    """Caption for files the metadata does not caption ({folder}, {stem})."""
    use_metadata: bool = True
    """Read captions from metadata.csv / metadata.jsonl."""
    batch_size: int = 8
    """Kept for old command lines; no effect: each file is encoded alone, in chunks, so its codes
    never depend on the other files."""
    tile_seconds: float = DataConfig.window_seconds
    """Files shorter than this are tiled as audio before encoding (seam-exact loops); set it to
    training's --data.window-seconds (0: no tiling, for --data.pad-mode pad)."""
    device: str | None = None
    """cuda or cpu; default: cuda when available."""
    percussive: bool = False
    """Encode percussive-emphasised audio (as --data.percussive in training: a separate cache)."""


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = tyro.cli(PrepareArgs, args=argv, prog="musicgen-lora prepare")
    try:  # before the model loads: a wrong path costs nothing
        if args.cache is not None:
            require_folder("--cache", args.cache)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1 (got {args.batch_size})")
    except ValueError as error:  # OutputPathError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model, _ = load_musicgen(args.model)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model.audio_encoder.to(device)
    fmt = audio_format(model)
    codec_id = codec_identity(model, args.model)
    encoder, preprocessing = codec_encoder(model.audio_encoder, fmt, device), None
    if args.percussive:
        encoder, preprocessing = percussive_encoder(encoder)
    cache = args.cache or default_cache_dir(args.data, codec_id + ("-percussive" if preprocessing else ""))
    try:
        result = prepare_cache(
            args.data, cache, encoder=encoder, fmt=fmt,
            codec_id=codec_id, caption_template=args.caption_template, use_metadata=args.use_metadata,
            batch_size=args.batch_size, preprocessing=preprocessing, tile_seconds=args.tile_seconds or None,
        )
    except (NoUsableAudioError, CacheMismatchError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"cache: {cache}")
    return 0
