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
- warned about: files without a caption (they get the fallback caption template); metadata rows
  that cannot be used (naming missing files, malformed CSV, not an object, a non-string name or
  caption, a NUL byte, a name named twice), each also in skipped.json with its line.
Each file is decoded, resampled and encoded in chunks (memory does not grow with its length), alone
(its codes never depend on other files); one that fails, out of memory included, is skipped and
reported. Only a folder with nothing usable is an error (exit code 1). A symlinked folder loop is walked once.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from musicgen_lora.data.groups import check_group_by
from musicgen_lora.helpers import require_folder
from musicgen_lora.training.config import DataConfig


@dataclass(frozen=True)
class PrepareArgs:
    """Encode every audio file under --data with the model's frozen EnCodec into a token cache."""

    data: Path | None = None
    """Folder of audio files (searched recursively), with optional metadata.csv / metadata.jsonl captions."""
    dataset: str | None = None
    """Instead of --data: a Hugging Face dataset (Hub id, save_to_disk folder, parquet/arrow folder,
    audiofolder folder), as --data.dataset in training."""
    audio_column: str = "audio"
    """--dataset: the audio column."""
    text_column: str = "text"
    """--dataset: the caption column."""
    split: str = "train"
    """--dataset: the training split (a validation/test split is encoded too and held out)."""
    model: str = "facebook/musicgen-small"
    """Hub id or local folder of the MusicGen checkpoint whose codec encodes the audio (`tiny` offline);
    for a MusicGen-Melody model the chroma of each file (or of its `condition_file`) is stored too."""
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
    group_by: str = "auto"
    """Groups for the held-out split, recorded in the manifest (as --data.group-by in training)."""


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = tyro.cli(PrepareArgs, args=argv, prog="musicgen-lora prepare")
    try:  # before the model loads: a wrong path costs nothing
        if args.cache is not None:
            require_folder("--cache", args.cache)
        if (args.data is None) == (args.dataset is None):
            raise ValueError("pass either --data (an audio folder) or --dataset (a Hugging Face dataset)")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1 (got {args.batch_size})")
        check_group_by(args.group_by)
    except ValueError as error:  # OutputPathError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    return _prepare(args)


def _prepare(args: PrepareArgs) -> int:
    # the model stack loads only once the arguments are checked (`--help` stays instant)
    import torch

    from musicgen_lora.data.chroma import chroma_settings
    from musicgen_lora.data.hf_datasets import DatasetSourceError, prepare_dataset_cache
    from musicgen_lora.data.tokens import (
        CacheMismatchError,
        NoUsableAudioError,
        codec_encoder,
        prepare_cache,
    )
    from musicgen_lora.modeling.model import (
        ModelLoadError,
        audio_format,
        codec_identity,
        load_musicgen,
    )
    from musicgen_lora.training.data_setup import (
        dataset_cache_dir,
        default_cache_dir,
        percussive_encoder,
    )

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
    tag = codec_id + ("-percussive" if preprocessing else "")
    try:
        if args.dataset is not None:
            cache = args.cache or dataset_cache_dir(args.dataset, tag, args.split)
            result = prepare_dataset_cache(
                args.dataset, cache, encoder=encoder, fmt=fmt, codec_id=codec_id, audio_column=args.audio_column,
                text_column=args.text_column, split=args.split, caption_template=args.caption_template,
                batch_size=args.batch_size, preprocessing=preprocessing, chroma=chroma_settings(model),
            )
        else:
            cache = args.cache or default_cache_dir(args.data, tag)
            result = prepare_cache(
                args.data, cache, encoder=encoder, fmt=fmt,
                codec_id=codec_id, caption_template=args.caption_template, use_metadata=args.use_metadata,
                batch_size=args.batch_size, preprocessing=preprocessing, group_by=args.group_by,
                tile_seconds=args.tile_seconds or None, chroma=chroma_settings(model),
            )
    except DatasetSourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (NoUsableAudioError, CacheMismatchError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"cache: {cache}")
    return 0
