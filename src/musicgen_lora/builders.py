"""The one place that turns config sections into objects (model, cache, data, optimizer, trackers).

The building blocks (audio, tokens, data, collate, loss, model) take plain arguments; only this
module reads config objects.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicgen_lora import model as model_lib
from musicgen_lora.collate import MusicgenCollator, codebook_delays
from musicgen_lora.config import ModelConfig, OptimConfig, RunConfig, to_dict
from musicgen_lora.data import (
    Clip,
    DataConfigError,
    EvalWindows,
    TrainWindows,
    check_batch,
    check_windows,
    split_clips,
)
from musicgen_lora.demo import write_demo_loops
from musicgen_lora.groups import split_record
from musicgen_lora.manifest import Launch, ManifestTracker, build_manifest
from musicgen_lora.model import AudioFormat
from musicgen_lora.outputs import respect_umask
from musicgen_lora.redact import redact
from musicgen_lora.tokens import codec_encoder, load_codes, load_manifest, prepare_cache
from musicgen_lora.tracking import (
    CompositeTracker,
    JsonlTracker,
    NullTracker,
    WandbTracker,
    wandb_mode,
)

log = logging.getLogger(__name__)

CACHE_ROOT = Path(".cache") / "musicgen-lora"
CPUINFO = Path("/proc/cpuinfo")


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_bf16_native() -> bool:
    """True on CPUs that compute bf16 in hardware (AMX tiles or AVX512-BF16): there bf16 matmuls
    run at least twice as fast as fp32; elsewhere bf16 is emulated and slower than fp32."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx is not None and avx512_bf16 is not None:
        return bool(amx() or avx512_bf16())
    try:  # an older torch without the helpers: the kernel's CPU flags
        flags = CPUINFO.read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def mixed_precision(setting: str) -> str:
    """auto -> bf16 on GPUs that support it, fp16 (with a grad scaler) on older GPUs; on CPU bf16
    where the CPU has native bf16 (`cpu_bf16_native`), else no (fp32)."""
    if setting != "auto":
        return setting
    if not torch.cuda.is_available():
        return "bf16" if cpu_bf16_native() else "no"
    return "bf16" if bf16_supported() else "fp16"


def precision_record(cfg: RunConfig, model, device: torch.device) -> dict:
    """What a run trains in, for the manifest: the resolved autocast, the dtypes the model's frozen
    and trainable (LoRA) weights really have, and why `auto` chose them."""
    if device.type == "cuda":
        reason = "GPU supports bf16" if bf16_supported() else "GPU without bf16: fp16 + grad scaler"
    else:
        reason = "CPU with native bf16 (AMX or AVX512-BF16)" if cpu_bf16_native() else "CPU without native bf16: fp32"
    name = lambda dtypes: sorted(str(d).removeprefix("torch.") for d in dtypes)  # noqa: E731
    decoder = model.get_base_model().decoder if hasattr(model, "get_base_model") else model.decoder
    return {
        "mixed_precision": mixed_precision(cfg.train.mixed_precision), "device": device.type,
        "decoder_weights": name({p.dtype for p in decoder.parameters() if not p.requires_grad}),
        "lora_weights": name({p.dtype for p in model.parameters() if p.requires_grad}),
        "auto": reason if "auto" in (cfg.train.mixed_precision, cfg.model.dtype) else None,
    }


def precision_line(record: dict) -> str:
    """One line of a `precision_record`: `bf16 autocast, decoder weights bfloat16, LoRA weights float32 (auto: ...)`."""
    autocast = "fp32 (no autocast)" if record["mixed_precision"] == "no" else f"{record['mixed_precision']} autocast"
    line = (f"{autocast} on {record['device']}, decoder weights {'/'.join(record['decoder_weights'])}, "
            f"LoRA weights {'/'.join(record['lora_weights'])}")
    return line + (f" (auto: {record['auto']})" if record.get("auto") else "")


def base_dtype(setting: str, precision: str = "auto") -> torch.dtype:
    """auto: bf16 frozen weights when training runs in bf16 autocast, else fp32 (fp16 autocast casts
    fp32 weights per op; bf16 weights under fp16 autocast would round twice)."""
    if setting == "auto":
        return torch.bfloat16 if mixed_precision(precision) == "bf16" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def base_model(cfg: ModelConfig, device: torch.device, precision: str = "auto"):
    model, tokenizer = model_lib.load_musicgen(
        cfg.name, revision=cfg.revision, dtype=base_dtype(cfg.dtype, precision), attn_implementation=cfg.attn_implementation
    )
    return model.to(device), tokenizer


audio_format = model_lib.audio_format


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
    )
    if log_summary:
        print(result.summary())
    return cache_dir


def _dataset_token_cache(cfg: RunConfig, model, fmt: AudioFormat, device, codec_id: str, log_summary: bool) -> Path:
    from musicgen_lora.hf_data import prepare_dataset_cache

    encoder, preprocessing = codec_encoder(model.audio_encoder, fmt, device), None
    if cfg.data.percussive:
        encoder, preprocessing = percussive_encoder(encoder)
    cache_tag = codec_id + ("-percussive" if preprocessing else "")
    cache_dir = cfg.data.cache_dir or dataset_cache_dir(cfg.data.dataset, cache_tag, cfg.data.split)
    result = prepare_dataset_cache(
        cfg.data.dataset, cache_dir, encoder=encoder, fmt=fmt, codec_id=codec_id,
        audio_column=cfg.data.audio_column, text_column=cfg.data.text_column, split=cfg.data.split,
        caption_template=cfg.data.caption_template, batch_size=cfg.data.encode_batch_size, preprocessing=preprocessing,
    )
    if log_summary:
        print(result.summary())
    return cache_dir


def split_cached(cache_dir: Path, val_fraction: float, train_split: str = "train", clips: list[Clip] | None = None):
    """(train clips, validation clips, the split.json record): a dataset's own validation split
    when the cache records one, else a deterministic share of the groups (see `groups`)."""
    from musicgen_lora.hf_data import held_out_sources

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
    from musicgen_lora.percussive import percussive_emphasis, settings

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


def load_clips(cache_dir: Path) -> list[Clip]:
    return [
        Clip(load_codes(cache_dir, entry), entry.caption, entry.source, entry.content_sha256, entry.group)
        for entry in load_manifest(cache_dir)
    ]


def training_data(cfg: RunConfig, cache_dir: Path, fmt: AudioFormat, world_size: int = 1, silence=None, tokenizer=None) -> TrainingData:
    clips = load_clips(cache_dir)
    train_clips, val_clips, split = split_cached(cache_dir, cfg.data.val_fraction, cfg.data.split, clips)
    if cfg.data.val_fraction > 0 and len(clips) > 1 and not val_clips:
        log.warning("all %d files form one group (--data.group-by %s): nothing is held out for validation",
                    len(clips), cfg.data.group_by)
    frames = max(1, round(cfg.data.window_seconds * fmt.frame_rate))
    check_windows(train_clips, frames, cfg.data.pad_mode, fmt.frame_rate)
    check_batch(train_clips, frames, cfg.train.batch_size)
    if cfg.train.batch_size % world_size:
        raise DataConfigError(f"--train.batch-size {cfg.train.batch_size} must be divisible by the {world_size} processes")
    common = {
        "frames": frames,
        "pad_mode": cfg.data.pad_mode,
        "special_token_id": fmt.pad_token_id,
        "caption_override": cfg.data.caption_override,
        "silence_codes": silence,
    }
    train = TrainWindows(train_clips, seed=cfg.seed, condition_dropout=cfg.data.condition_dropout, **common)
    val = EvalWindows(val_clips, max_windows=cfg.train.eval_max_windows, **common)
    prompts = cfg.sample.prompts or tuple(dict.fromkeys(c.caption for c in (val_clips or train_clips)))[:3]
    if cfg.data.caption_override:
        prompts = cfg.sample.prompts or (cfg.data.caption_override,)
    collator = MusicgenCollator(
        tokenizer if tokenizer is not None else _tokenizer_for(cfg),
        delays=codebook_delays(fmt.num_codebooks, fmt.channels),
        special_token_id=fmt.pad_token_id,
    )
    return TrainingData(train, val, collator, frames, fmt.frame_rate, fmt.num_codebooks, tuple(prompts), split)


def _tokenizer_for(cfg: RunConfig):
    if cfg.model.name == model_lib.TINY_MODEL:
        return model_lib.tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.model.name, revision=cfg.model.revision)


def generation_evaluator(cfg: RunConfig, model, cache_dir: Path, prompts: tuple[str, ...], device):
    """The run's fixed-prompt generation metrics (FAD vs held-out clips, CLAP), or None when off.

    The FAD reference is the held-out clips (the training clips when nothing is held out), decoded
    from their cached codes by the same frozen codec that decodes generated audio, so FAD measures
    the generated token distribution and not codec loss. Anything unavailable is said once, here.
    """
    from musicgen_lora import metrics as metrics_lib  # imported here: only runs that score need it

    m = cfg.metrics
    prompts = m.prompts or prompts
    if not m.enabled or not prompts:
        return None
    fmt = model_lib.audio_format(model)
    clap, notice = metrics_lib.ClapScorer.load(m.clap_model, m.clap, device)
    if notice:
        # Asked for (download) and missing: a warning; auto or off: said once, as information.
        (log.warning if m.clap == "download" else log.info)(notice)
    embed = metrics_lib.encodec_embedder(model.audio_encoder, m.fad_pooling)
    if m.fad_embedding == "clap":
        embed = None if clap is None else (lambda clips: clap.fad_embeddings(clips, fmt.sample_rate))
        if clap is None:
            log.warning("FAD with CLAP embeddings is skipped (no CLAP model); --metrics.fad-embedding encodec needs none.")
    reference = clap_reference = None
    chosen = []
    if embed is not None or clap is not None:
        train_clips, val_clips, _ = split_cached(cache_dir, cfg.data.val_fraction, cfg.data.split)
        chosen = (val_clips or train_clips)[: m.reference_clips]
        frames = max(1, round(m.reference_seconds * fmt.frame_rate))
        audio = [metrics_lib.decode_codes(model.audio_encoder, c.codes[:, :frames], fmt.channels) for c in chosen]
        reference = embed(audio) if embed is not None else None
        clap_reference = clap.fad_embeddings(audio, fmt.sample_rate) if clap is not None else None
        log.info("FAD reference: %d %s clips (%s embeddings%s)", len(chosen), "held-out" if val_clips else "training",
                 m.fad_embedding, f"; standard gen/fad_clap with {m.clap_model}" if clap is not None else "")
    if embed is None and clap is None:
        return None
    return metrics_lib.GenerationEvaluator(
        prompts=tuple(prompts), seeds=tuple(m.seeds), seconds=m.seconds or cfg.sample.seconds,
        sample_rate=fmt.sample_rate, reference=reference, embed=embed, clap=clap,
        guidance=cfg.sample.guidance, top_k=cfg.sample.top_k, temperature=cfg.sample.temperature,
        clap_reference=clap_reference, reference_clips=len(chosen),
    )


def check_lora_targets(cfg: RunConfig, model) -> None:
    """Raise LoraTargetError (naming the choices) for a target that matches no decoder module."""
    model_lib.find_lora_targets(model, cfg.lora.targets)


def lora_model(cfg: RunConfig, model):
    peft_model = model_lib.apply_lora(
        model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=cfg.lora.targets
    )
    peft_model.peft_config["default"].base_model_name_or_path = cfg.model.name
    # Saved in adapter_config.json: generate and export load the very weights the adapter was trained on.
    peft_model.peft_config["default"].revision = cfg.model.revision
    if cfg.model.gradient_checkpointing:
        model_lib.enable_gradient_checkpointing(peft_model.get_base_model())
    if cfg.model.compile:
        # In place, after LoRA wrapping: the compiled graph includes the adapters, and parameter
        # names keep no `_orig_mod.` prefix, so adapters and checkpoints save and load unchanged.
        peft_model.get_base_model().decoder.model.compile()
    return peft_model


def optimizer_and_schedule(cfg: OptimConfig, max_steps: int, model, device: torch.device):
    """AdamW over the trainable (LoRA) weights; linear warm-up then cosine to lr * min_lr_ratio."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
        fused=cfg.fused and device.type == "cuda",
        # On CPU torch's default is a Python loop over the tensors; its foreach path gives the same
        # values bit for bit in fewer kernel launches (tests/test_cpu_optimizer.py).
        foreach=True if device.type == "cpu" else None,
    )

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def trackers(
    cfg: RunConfig, run_dir: Path, is_main: bool, resumed_step: int = 0, launch: Launch | None = None, world_size: int = 1
):
    """All trackers of a run: manifest.json, metrics.jsonl, W&B (unless disabled); only the main
    process tracks."""
    if not is_main:
        return NullTracker()
    manifest = build_manifest(cfg, launch or Launch(), world_size=world_size, resumed_step=resumed_step)
    items = [ManifestTracker(run_dir / "manifest.json", manifest), JsonlTracker(run_dir / "metrics.jsonl")]
    wandb = wandb_tracker(cfg, run_dir, manifest)
    return CompositeTracker(items if wandb is None else [*items, wandb])


def wandb_tracker(cfg: RunConfig, run_dir: Path, manifest: dict) -> WandbTracker | None:
    """The W&B run: group = experiment, name = run directory, config = resolved config + manifest.
    In auto mode an online start that fails (network, key) falls back to offline."""
    mode = wandb_mode(cfg.tracking.wandb)
    if mode == "disabled":
        return None
    commit = manifest["git"].get("commit") or "unknown"
    lock = manifest["lock_sha256"].get("uv.lock") or "unknown"
    tags = [f"git:{commit[:8]}", f"lock:{lock[:12]}", f"variant:{cfg.variant}", f"seed:{cfg.seed}"]
    tags += ["dirty"] * bool(manifest["git"].get("dirty")) + list(cfg.tracking.tags)
    options = {
        "project": os.environ.get("WANDB_PROJECT") or cfg.tracking.project,
        "entity": cfg.tracking.entity,
        "group": cfg.experiment,
        "job_type": "smoke" if cfg.smoke else "train",
        "name": wandb_run_name(cfg, run_dir),
        "tags": tags,
        "config": redact({**to_dict(cfg), "manifest": manifest}),
    }
    try:
        return WandbTracker(run_dir, mode=mode, **options)
    except Exception as error:
        if cfg.tracking.wandb != "auto" or mode != "online":
            raise
        log.warning("W&B online start failed (%s); logging offline into %s (sync later with `wandb sync`).",
                    error, run_dir / "wandb")
        return WandbTracker(run_dir, mode="offline", **options)


def wandb_run_name(cfg: RunConfig, run_dir: Path) -> str:
    """Unique per run directory: its name when it already says experiment, variant, seed and time;
    else (an --output-dir such as an Azure job's output folder) experiment, variant and seed plus the
    Azure job id or the folder's name. A resumed run keeps its name."""
    if run_dir.name.startswith(cfg.experiment):
        return run_dir.name
    suffix = os.environ.get("AZUREML_RUN_ID") or run_dir.name
    return f"{cfg.experiment}-{cfg.variant}-s{cfg.seed}-{suffix}"


def adapter_is_finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)


def save_adapter(model, folder: Path, cfg: RunConfig) -> None:
    """The final adapter in PEFT format (adapter_config.json + adapter_model.safetensors)."""
    if not adapter_is_finite(model):
        raise RuntimeError("adapter weights are not finite; refusing to save them")
    # The embeddings are never resized here, so peft need not look up the base config to decide.
    model.save_pretrained(folder, save_embedding_layers=False)
    respect_umask(Path(folder).iterdir())
