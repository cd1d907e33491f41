"""Configuration -> training data: the token cache for the folder, dataset or demo loops, the
held-out split, and the windows and collator the loop draws batches from."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicgen_lora.data.chroma import ChromaSettings, WindowChroma, chroma_settings
from musicgen_lora.data.demo import write_demo_loops
from musicgen_lora.data.groups import split_record
from musicgen_lora.data.tokens import (
    codec_encoder,
    load_chroma,
    load_codes,
    load_manifest,
    prepare_cache,
)
from musicgen_lora.data.windows import (
    Clip,
    DataConfigError,
    EvalWindows,
    TrainWindows,
    check_batch,
    check_windows,
    split_clips,
)
from musicgen_lora.modeling import model as model_lib
from musicgen_lora.modeling.collate import MusicgenCollator, codebook_delays
from musicgen_lora.modeling.model import AudioFormat
from musicgen_lora.training.config import RunConfig

log = logging.getLogger(__name__)

CACHE_ROOT = Path(".cache") / "musicgen-lora"


def default_cache_dir(data_path: Path | None, codec_id: str) -> Path:
    if data_path is None:
        return CACHE_ROOT / "tokens" / f"demo-{codec_id}"
    resolved = str(Path(data_path).expanduser().resolve())
    folder_hash = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    return CACHE_ROOT / "tokens" / f"{Path(resolved).name}-{folder_hash}-{codec_id}"


def dataset_cache_dir(name: str, codec_id: str, split: str) -> Path:
    """Per dataset (a local folder by its resolved path, a Hub id by name), split and codec."""
    local = Path(name).expanduser()
    ident = str(local.resolve()) if local.exists() else name
    tag = hashlib.sha256(f"{ident}|{split}".encode()).hexdigest()[:8]
    return CACHE_ROOT / "tokens" / f"hf-{Path(ident).name}-{tag}-{codec_id}"


def token_cache(cfg: RunConfig, model, fmt: AudioFormat, device: torch.device, log_summary: bool = True) -> Path:
    """Encode the data folder, the --data.dataset, or the demo loops into the token cache;
    unchanged files are reused."""
    codec_id = model_lib.codec_identity(model, cfg.model.name)
    if cfg.data.dataset is not None:
        return _dataset_token_cache(cfg, model, fmt, device, codec_id, log_summary)
    data_path = cfg.data.path
    if data_path is None:
        data_path = CACHE_ROOT / "demo_audio" / f"loops{cfg.data.demo_loops_per_style}-{fmt.sample_rate}"
        if not (data_path / "metadata.csv").exists():
            write_demo_loops(data_path, cfg.data.demo_loops_per_style, fmt.sample_rate)
    encoder, preprocessing = codec_encoder(model.audio_encoder, fmt, device), None
    if cfg.data.percussive:
        encoder, preprocessing = percussive_encoder(encoder)
    cache_tag = codec_id + ("-percussive" if preprocessing else "")
    cache_dir = cfg.data.cache_dir or default_cache_dir(cfg.data.path, cache_tag)
    result = prepare_cache(
        Path(data_path).expanduser(),
        cache_dir,
        encoder=encoder,
        fmt=fmt,
        codec_id=codec_id,
        caption_template=cfg.data.caption_template,
        use_metadata=cfg.data.use_metadata,
        batch_size=cfg.data.encode_batch_size,
        preprocessing=preprocessing,
        group_by=cfg.data.group_by,
        # Loops shorter than the window are tiled as audio before encoding: seam-exact codes.
        tile_seconds=cfg.data.window_seconds if cfg.data.pad_mode == "tile" else None,
        chroma=chroma_settings(model),  # melody models: the chroma is computed once, with the codes
    )
    if log_summary:
        print(result.summary())
    return cache_dir


def _dataset_token_cache(cfg: RunConfig, model, fmt: AudioFormat, device, codec_id: str, log_summary: bool) -> Path:
    from musicgen_lora.data.hf_datasets import prepare_dataset_cache

    encoder, preprocessing = codec_encoder(model.audio_encoder, fmt, device), None
    if cfg.data.percussive:
        encoder, preprocessing = percussive_encoder(encoder)
    cache_tag = codec_id + ("-percussive" if preprocessing else "")
    cache_dir = cfg.data.cache_dir or dataset_cache_dir(cfg.data.dataset, cache_tag, cfg.data.split)
    result = prepare_dataset_cache(
        cfg.data.dataset, cache_dir, encoder=encoder, fmt=fmt, codec_id=codec_id,
        audio_column=cfg.data.audio_column, text_column=cfg.data.text_column, split=cfg.data.split,
        caption_template=cfg.data.caption_template, batch_size=cfg.data.encode_batch_size, preprocessing=preprocessing,
        chroma=chroma_settings(model),
    )
    if log_summary:
        print(result.summary())
    return cache_dir


def split_cached(cache_dir: Path, val_fraction: float, train_split: str = "train", clips: list[Clip] | None = None):
    """(train clips, validation clips, the split.json record): a dataset's own validation split
    when the cache records one, else a deterministic share of the groups (see `groups`)."""
    from musicgen_lora.data.hf_datasets import held_out_sources

    clips = load_clips(cache_dir) if clips is None else clips
    held = held_out_sources(cache_dir, train_split)
    if held is None:
        train, val = split_clips(clips, val_fraction)
        return train, val, split_record(clips, val_fraction)
    val = [c for c in clips if c.source in held]
    copies = {c.content_sha256 for c in val}  # audio in both splits is held out: no leak into training
    train = [c for c in clips if c.source not in held and c.content_sha256 not in copies]
    return train, val, dataset_split_record(clips, train, val)


def dataset_split_record(clips: list[Clip], train: list[Clip], val: list[Clip]) -> dict:
    """split.json for a dataset's own splits (same fields as `groups.split_record`)."""
    side = {id(c): "train" for c in train} | {id(c): "val" for c in val}
    files = [{"file": c.source, "group": c.group or c.source, "side": side.get(id(c), "excluded")} for c in clips]
    return {
        "val_fraction": None,
        "groups": {s: len({f["group"] for f in files if f["side"] == s}) for s in ("train", "val")},
        "files_per_side": {s: sum(f["side"] == s for f in files) for s in ("train", "val")},
        "files": files,
    }


def percussive_encoder(encoder):
    """(encoder that applies percussive emphasis to each clip before encoding, its settings):
    run once per file by prepare, and the settings go into the token cache's identity and keys."""
    from musicgen_lora.data.percussive import percussive_emphasis, settings

    def encode(audio: torch.Tensor) -> torch.Tensor:
        emphasised = np.stack([percussive_emphasis(clip) for clip in audio.numpy()])
        return encoder(torch.from_numpy(emphasised))

    return encode, settings()


def silence_codes(model, fmt: AudioFormat, device: torch.device) -> np.ndarray:
    """Codes of one second of digital silence (for the zero-padding ablation only): the middle
    second of three, so no frame carries the codec's edge padding and the codes tile seamlessly."""
    encode = codec_encoder(model.audio_encoder, fmt, device)
    codes = encode(torch.zeros(1, fmt.channels, 3 * fmt.sample_rate))[0].numpy()
    return codes[:, fmt.frame_rate : 2 * fmt.frame_rate]


@dataclass
class TrainingData:
    train: TrainWindows
    val: EvalWindows
    collator: MusicgenCollator
    frames: int
    frame_rate: int
    num_codebooks: int
    sample_prompts: tuple[str, ...]
    split: dict  # split.json: group counts per side, every file with its group and side
    sample_melodies: torch.Tensor | None = None  # melody models: (prompts, frames, 12) chroma per sample prompt


def load_clips(cache_dir: Path) -> list[Clip]:
    return [
        Clip(load_codes(cache_dir, entry), entry.caption, entry.source, entry.content_sha256, entry.group,
             load_chroma(cache_dir, entry))
        for entry in load_manifest(cache_dir)
    ]


def training_data(cfg: RunConfig, cache_dir: Path, fmt: AudioFormat, world_size: int = 1, silence=None, tokenizer=None,
                  chroma: ChromaSettings | None = None) -> TrainingData:
    """Windows, collator and sample prompts; `chroma` (melody models) adds each window's melody."""
    clips = load_clips(cache_dir)
    train_clips, val_clips, split = split_cached(cache_dir, cfg.data.val_fraction, cfg.data.split, clips)
    if cfg.data.val_fraction > 0 and len(clips) > 1 and not val_clips:
        log.warning("all %d files form one group (--data.group-by %s): nothing is held out for validation",
                    len(clips), cfg.data.group_by)
    frames = max(1, round(cfg.data.window_seconds * fmt.frame_rate))
    check_windows(train_clips, frames, cfg.data.pad_mode, fmt.frame_rate)
    if cfg.train.batch_size != "auto":  # auto is resolved later, within these limits (auto_batch)
        check_batch(train_clips, frames, cfg.train.batch_size)
        if cfg.train.batch_size % world_size:
            raise DataConfigError(f"--train.batch-size {cfg.train.batch_size} must be divisible by the {world_size} processes")
    common = {
        "frames": frames,
        "pad_mode": cfg.data.pad_mode,
        "special_token_id": fmt.pad_token_id,
        "caption_override": cfg.data.caption_override,
        "silence_codes": silence,
        "chroma": None if chroma is None else WindowChroma(chroma, fmt.hop_length),
    }
    if chroma is not None and any(clip.chroma is None for clip in clips):
        raise DataConfigError(f"the token cache {cache_dir} holds no chroma for a melody model: prepare it again")
    train = TrainWindows(train_clips, seed=cfg.seed, condition_dropout=cfg.data.condition_dropout,
                         chroma_dropout=cfg.data.chroma_dropout, **common)
    val = EvalWindows(val_clips, max_windows=cfg.train.eval_max_windows, **common)
    prompts = cfg.sample.prompts or tuple(dict.fromkeys(c.caption for c in (val_clips or train_clips)))[:3]
    if cfg.data.caption_override:
        prompts = cfg.sample.prompts or (cfg.data.caption_override,)
    collator = MusicgenCollator(
        tokenizer if tokenizer is not None else _tokenizer_for(cfg),
        delays=codebook_delays(fmt.num_codebooks, fmt.channels),
        special_token_id=fmt.pad_token_id,
    )
    melodies = None
    if common["chroma"] is not None:
        melodies = sample_melodies(prompts, val_clips or train_clips, common["chroma"], round(cfg.sample.seconds * fmt.frame_rate),
                                   cfg.data.pad_mode)
    return TrainingData(train, val, collator, frames, fmt.frame_rate, fmt.num_codebooks, tuple(prompts), split, melodies)


def sample_melodies(prompts, clips: list[Clip], chroma: WindowChroma, frames: int, pad_mode) -> torch.Tensor:
    """(prompts, F, num_chroma): each sample prompt's melody is the chroma of the first `frames`
    frames of the clip it captions (held-out clips first), or of clip i for a prompt given by hand."""
    chosen = [next((c for c in clips if c.caption == prompt), clips[i % len(clips)]) for i, prompt in enumerate(prompts)]
    return torch.stack([chroma(c.chroma, c.codes.shape[-1], max(1, frames), 0, pad_mode) for c in chosen])


def _tokenizer_for(cfg: RunConfig):
    if model_lib.is_tiny(cfg.model.name):
        return model_lib.tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.model.name, revision=cfg.model.revision)
