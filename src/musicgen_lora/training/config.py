"""Run configuration: frozen dataclasses, one section per concern; each field's docstring is its
`--help` text. Experiments override fields with `apply_overrides`, never by mutation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from musicgen_lora.data import PadMode


@dataclass(frozen=True)
class DataConfig:
    path: Path | None = None
    """Folder of audio files (wav/flac/ogg/mp3/aiff, searched recursively), with optional
    metadata.csv / metadata.jsonl captions (columns file_name, text). None: the built-in demo loops."""
    dataset: str | None = None
    """A Hugging Face dataset instead of a folder: a Hub id, a folder written by save_to_disk, a
    folder of parquet/arrow files, or an audiofolder folder (with train/validation/test splits).
    Not together with --data.path; with --smoke it replaces the demo loops."""
    audio_column: str = "audio"
    """--data.dataset: the column holding the audio (an Audio feature, file paths, or arrays)."""
    text_column: str = "text"
    """--data.dataset: the column holding the captions (empty ones get --data.caption-template)."""
    split: str = "train"
    """--data.dataset: the split to train on. A validation/valid/val/test split, when present, is
    held out for evaluation instead of a random --data.val-fraction share."""
    cache_dir: Path | None = None
    """Token cache folder. None: .cache/musicgen-lora/tokens/<data folder>-<codec id>."""
    caption_template: str = "{folder} loop"
    """Caption for files the metadata does not caption. {folder}: parent folder name, {stem}: file name."""
    use_metadata: bool = True
    """Read captions from metadata.csv / metadata.jsonl (off: every file gets the template caption)."""
    caption_override: str | None = None
    """One fixed caption for every clip (the old dummy-prompt behaviour, for ablations only)."""
    window_seconds: float = 10.0
    """Length of a training window in seconds."""
    pad_mode: PadMode = "tile"
    """Clips shorter than the window: tile (repeat the loop), pad (masked, never a target), or
    zero_pad_legacy (train on encoded silence, the old behaviour; for ablations only)."""
    val_fraction: float = 0.1
    """Share of groups (see group_by) held out for evaluation, chosen by a hash of the group: at
    least one group when there are two or more. The run's split.json lists every file's side."""
    group_by: str = "auto"
    """What makes files one group, never split across train and validation: auto (the metadata's
    `source` column, else `musicgen-lora loops` names <track>_NNN, else the file), source, folder,
    file, or stem-regex:<re> (first capture group of <re> in the file stem, per folder)."""
    condition_dropout: float = 0.1
    """Probability of replacing the caption by the null condition, which classifier-free guidance needs."""
    chroma_dropout: float = 0.2
    """Melody models only: probability of replacing a window's melody (chroma) by the null chroma,
    drawn independently of condition_dropout (audiocraft's chroma2music uses 0.2). The melody is the
    chroma of the training audio itself, or of the file the metadata's `condition_file` column names."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process; windows come from memory)."""
    encode_batch_size: int = 8
    """Files of equal length encoded together when building the token cache."""
    percussive: bool = False
    """Encode percussive-emphasised audio (harmonic-percussive separation, drums only), applied once
    before encoding, never per step; a separate token cache (its settings are in the cache key)."""
    demo_loops_per_style: int = 2
    """Variations per style of the built-in demo loops (6 styles), used when path is None."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "facebook/musicgen-small"
    """Hub id or local folder of a MusicGen or MusicGen-Melody checkpoint, mono or stereo (the class
    comes from its config.json). Random toy models built offline: tiny, tiny-stereo, tiny-melody,
    tiny-stereo-melody."""
    revision: str | None = None
    """Hub revision (commit hash) to pin the weights."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Base weights' dtype. auto: bfloat16 when training runs in bf16 autocast (see --train.mixed-precision),
    else float32. LoRA weights are always float32."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel of the decoder (sdpa picks flash / memory-efficient kernels on GPU)."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in backward: less memory, about a third more compute."""
    compile: bool = False
    """torch.compile the decoder (GPU; pays a one-off compile time)."""


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    """Decoder module names to adapt (matched as suffixes; e.g. fc1 fc2 embed_tokens lm_heads).
    Default: the self- and cross-attention projections (melody models have no cross-attention)."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 50
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """Cosine decays to lr * min_lr_ratio at the last step."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    fused: bool = True
    """Fused AdamW kernel on GPU (ignored on CPU)."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 2000
    """Optimizer steps to train."""
    batch_size: int | Literal["auto"] = 8
    """Global batch: windows per optimizer micro-step over all processes. auto: the largest batch
    that fits this device's memory (the memory estimate against free GPU memory, then one trial
    step, halved on out-of-memory; on CPU against MemAvailable), at most the data's distinct
    windows; the number chosen is logged and written to config.json and manifest.json."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs that support it and on CPUs with native bf16 (AMX or AVX512-BF16), fp16 + grad
    scaler on older GPUs, none (fp32) on other CPUs. The choice is in manifest.json under `precision`."""
    eval_every: int = 200
    """Evaluate (validation loss + samples) every N steps and at the end (0: only at the end)."""
    checkpoint_every: int = 200
    """Write a resumable checkpoint every N steps (0: never)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; older ones are deleted only after a new one is complete."""
    resume: bool = True
    """Resume from the newest checkpoint in the run directory when there is one."""
    log_every: int = 10
    """Log training metrics every N steps."""
    max_bad_steps: int = 20
    """Consecutive steps with a non-finite loss or gradient after which the run stops."""
    cache_text_states: bool = True
    """Compute the frozen T5 states once per distinct caption instead of every step."""
    eval_max_windows: int = 64
    """Held-out windows per evaluation."""
    allow_cpu: bool = False
    """Train on the CPU even when an NVIDIA GPU is present that torch cannot use (say, a driver
    older than the CUDA wheels need). Off: such a run stops at once and says why."""


@dataclass(frozen=True)
class SampleConfig:
    prompts: tuple[str, ...] = ()
    """Prompts for audio samples at each evaluation; empty: the held-out captions (up to 3)."""
    seconds: float = 8.0
    """Length of each sample."""
    guidance: float = 3.0
    """Classifier-free guidance scale (1: none)."""
    extra_guidance: tuple[float, ...] = ()
    """More guidance scales to sample at each evaluation, e.g. 1.0 for unguided samples to compare
    (written as <tag>_g<scale>_<i>.wav, logged as samples/<base|adapter>_g<scale>)."""
    top_k: int = 250
    """Top-k sampling."""
    temperature: float = 1.0
    """Sampling temperature."""
    seed: int = 0
    """Seed of the samples, fixed so samples compare across steps and runs."""
    base_model: bool = True
    """Also sample the base model before training, as the reference."""


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    """Generation metrics at each evaluation and at the end: generate every prompt x seed and log
    gen/fad (vs held-out clips) and gen/clap; the base model once as gen/fad_base, gen/clap_base."""
    prompts: tuple[str, ...] = ()
    """Fixed prompt set; empty: the sample prompts (sample.prompts, else up to 3 held-out captions)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    """One clip per prompt and seed (fixed, so values compare across steps and runs)."""
    seconds: float | None = None
    """Length of each generated clip; None: sample.seconds. Guidance, top-k, temperature: sample.*."""
    fad_embedding: Literal["encodec", "clap"] = "encodec"
    """FAD embedding: the model's own EnCodec encoder latents (no download), or CLAP audio embeddings
    (needs the CLAP weights; FAD is skipped with a notice without them)."""
    fad_pooling: Literal["frames", "clip"] = "frames"
    """encodec only. frames: every latent frame is a sample (as the original FAD; works with few
    clips). clip: one mean+std vector per clip (needs many more clips than 2 x latent dims)."""
    reference_clips: int = 32
    """Held-out clips (the training clips when nothing is held out) forming the FAD reference."""
    reference_seconds: float = 30.0
    """Seconds taken from the start of each reference clip (decoded from its cached codes)."""
    clap: Literal["auto", "download", "off"] = "auto"
    """CLAP text-audio similarity. auto: only when the weights are in the local Hugging Face cache
    (never waits on the network); download: fetch them if missing; off: skip."""
    clap_model: str = "laion/clap-htsat-unfused"
    """CLAP checkpoint (transformers ClapModel + ClapProcessor); audio is resampled to 48 kHz."""
    base_model: bool = True
    """Also score the base model (adapter disabled) once, logged as gen/*_base."""


@dataclass(frozen=True)
class TrackingConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    """Weights & Biases: auto is online when a key or login is present, offline otherwise."""
    project: str = "musicgen-lora"
    """W&B project (env WANDB_PROJECT overrides)."""
    entity: str | None = None
    """W&B entity (team or user); None: your default."""
    tags: tuple[str, ...] = ()
    """Extra W&B tags."""


@dataclass(frozen=True)
class RunConfig:
    experiment: str = "01_baseline"
    """Experiment name (the script's file stem); the W&B group."""
    variant: str = "default"
    """Named variant of the experiment."""
    seed: int = 0
    """Seed of everything random: init, data order, windows, dropout."""
    output_dir: Path | None = None
    """The run directory. None: runs/<experiment>-<variant>-s<seed>-<time>."""
    smoke: bool = False
    """Offline CPU demo: tiny random model, demo loops, a few steps."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SMOKE_OVERRIDES: dict[str, Any] = {
    "smoke": True,
    "model.name": "tiny",
    "data.path": None,
    "data.window_seconds": 2.0,
    "train.max_steps": 30,
    "train.batch_size": 4,
    "train.eval_every": 15,
    "train.checkpoint_every": 15,
    "train.log_every": 5,
    "optim.lr": 2e-3,  # the tiny random model learns visibly in a few steps only at a high rate
    "optim.warmup_steps": 5,
    "sample.seconds": 1.0,
    "metrics.seeds": (0,),  # one clip per prompt keeps generation metrics cheap on CPU
    # The demo shows the tracking path too: offline W&B needs no account (`wandb sync` uploads it
    # later); --tracking.wandb disabled (or WANDB_MODE=disabled) turns it off.
    "tracking.wandb": "offline",
}
"""What --smoke changes: a full pipeline run on 2 CPU cores in well under two minutes."""


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of `config` with dotted fields replaced: {"lora.r": 4, "train.max_steps": 10}."""
    for dotted, value in overrides.items():
        config = _replace_path(config, dotted.split("."), value)
    return config


def _replace_path(config: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    if not dataclasses.is_dataclass(config) or head not in {f.name for f in dataclasses.fields(config)}:
        raise KeyError(f"no config field {head!r} in {type(config).__name__}")
    new_value = _replace_path(getattr(config, head), rest, value) if rest else value
    return dataclasses.replace(config, **{head: new_value})


def to_dict(config: Any) -> dict:
    """JSON-ready dict of a config (paths as strings)."""

    def convert(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(dataclasses.asdict(config))
