"""Configuration -> objects: the base model and its precision, LoRA, the optimizer and schedule,
the generation evaluator, trackers and the saved adapter (the training data: `data_setup`).

The building blocks (data, modeling, evaluation) take plain arguments; only these two modules read
config objects.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from musicgen_lora.helpers import respect_umask
from musicgen_lora.modeling import model as model_lib
from musicgen_lora.tracking.manifest import Launch, ManifestTracker, build_manifest
from musicgen_lora.tracking.redact import redact
from musicgen_lora.tracking.trackers import (
    CompositeTracker,
    JsonlTracker,
    NullTracker,
    WandbTracker,
    wandb_mode,
)
from musicgen_lora.training.config import ModelConfig, OptimConfig, RunConfig, to_dict
from musicgen_lora.training.data_setup import split_cached

log = logging.getLogger(__name__)

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


def generation_evaluator(cfg: RunConfig, model, cache_dir: Path, prompts: tuple[str, ...], device):
    """The run's fixed-prompt generation metrics (FAD vs held-out clips, CLAP), or None when off.

    The FAD reference is the held-out clips (the training clips when nothing is held out), decoded
    from their cached codes by the same frozen codec that decodes generated audio, so FAD measures
    the generated token distribution and not codec loss. Anything unavailable is said once, here.
    """
    # imported here: only runs that score need them
    from musicgen_lora.evaluation.clap import ClapScorer
    from musicgen_lora.evaluation.evaluator import GenerationEvaluator
    from musicgen_lora.evaluation.fad import decode_codes, encodec_embedder

    m = cfg.metrics
    prompts = m.prompts or prompts
    if not m.enabled or not prompts:
        return None
    fmt = model_lib.audio_format(model)
    clap, notice = ClapScorer.load(m.clap_model, m.clap, device)
    if notice:
        # Asked for (download) and missing: a warning; auto or off: said once, as information.
        (log.warning if m.clap == "download" else log.info)(notice)
    embed = encodec_embedder(model.audio_encoder, m.fad_pooling)
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
        audio = [decode_codes(model.audio_encoder, c.codes[:, :frames], fmt.channels) for c in chosen]
        reference = embed(audio) if embed is not None else None
        clap_reference = clap.fad_embeddings(audio, fmt.sample_rate) if clap is not None else None
        log.info("FAD reference: %d %s clips (%s embeddings%s)", len(chosen), "held-out" if val_clips else "training",
                 m.fad_embedding, f"; standard gen/fad_clap with {m.clap_model}" if clap is not None else "")
    if embed is None and clap is None:
        return None
    return GenerationEvaluator(
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
