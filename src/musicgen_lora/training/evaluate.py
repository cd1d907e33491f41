"""What a run does between training steps: validation loss on the held-out windows (and the base
model's, adapter disabled), the best adapter so far, audio samples and generation metrics."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from pathlib import Path

import torch

from musicgen_lora.modeling.forward import forward_loss
from musicgen_lora.modeling.generate import generate_audio, write_wav
from musicgen_lora.modeling.loss import add_stats, codebook_metrics
from musicgen_lora.training import builders

log = logging.getLogger(__name__)

BEST_ADAPTER = "adapter_best"
"""In the run directory: the adapter of the evaluation with the lowest validation loss."""


@torch.no_grad()
def validation_loss(cfg, model, data, text_cache, accelerator, tracker, step, *, base: bool = False) -> float | None:
    """Validation loss on the fixed held-out windows, each process taking a disjoint share.

    `base`: with the adapter disabled (the base model's loss on the same windows), logged as
    val/* and val/loss_base, the reference every later evaluation is read against."""
    if len(data.val) == 0:
        return None
    # The unwrapped model: the DDP wrapper's forward broadcasts buffers from rank 0, a collective
    # that would wait forever for a rank holding fewer (or no) held-out windows.
    model = accelerator.unwrap_model(model)
    with model.disable_adapter() if base else contextlib.nullcontext():
        return _evaluate_windows(cfg, model, data, text_cache, accelerator, tracker, step, base)


def _evaluate_windows(cfg, model, data, text_cache, accelerator, tracker, step, base) -> float:
    model.eval()
    indices = list(range(accelerator.process_index, len(data.val), accelerator.num_processes))
    total = None
    for start in range(0, len(indices), cfg.train.batch_size):
        examples = [data.val[i] for i in indices[start : start + cfg.train.batch_size]]
        batch = {k: v.to(accelerator.device) for k, v in data.collator(examples).items()}
        with accelerator.autocast():
            _, stats = forward_loss(model, batch, text_cache)
        total = add_stats(total, stats)
    if total is None:  # more processes than windows: contribute zeros to the sum
        k = data.num_codebooks
        total = {"ce_sum": torch.zeros(k), "correct": torch.zeros(k, dtype=torch.long), "count": torch.zeros(k, dtype=torch.long)}
    total = {key: accelerator.reduce(value.to(accelerator.device), reduction="sum") for key, value in total.items()}
    metrics = codebook_metrics(total, "val")
    if base:
        metrics["val/loss_base"] = metrics["val/loss"]
    tracker.log(metrics, step)
    model.train()
    return metrics["val/loss"]


def keep_best_adapter(cfg, model, run_dir: Path, val_loss: float | None, step: int, state: dict) -> None:
    """Save the adapter as adapter_best/ when this evaluation's validation loss is the lowest yet."""
    if val_loss is None or not math.isfinite(val_loss):
        return
    if state["best_val_loss"] is not None and val_loss >= state["best_val_loss"]:
        return
    if not builders.adapter_is_finite(model):
        return
    tmp = run_dir / f".tmp_{BEST_ADAPTER}"
    shutil.rmtree(tmp, ignore_errors=True)
    builders.save_adapter(model, tmp, cfg)
    final = run_dir / BEST_ADAPTER
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    state["best_val_loss"], state["best_step"] = val_loss, step


def can_sample(model, step: int) -> bool:
    """Sampling a model with non-finite weights fails inside torch.multinomial: skip it, say why."""
    if builders.adapter_is_finite(model):
        return True
    log.warning("samples and generation metrics skipped at step %d: the adapter weights are not finite", step)
    return False


def non_finite_sampling(error: RuntimeError) -> bool:
    """torch.multinomial's refusal of NaN/Inf probabilities (a diverged model's logits)."""
    message = str(error).lower()
    return "probability tensor" in message or "nan" in message or "inf" in message


def write_samples(cfg, model, tokenizer, prompts, run_dir, tag, tracker, step, accelerator, melodies=None) -> None:
    """One WAV per prompt (and guidance scale); a melody model's prompt i follows `melodies[i]`."""
    if not prompts:
        return
    unwrapped = accelerator.unwrap_model(model)
    rate = unwrapped.config.audio_encoder.sampling_rate
    key = f"samples/{'base' if tag == 'base' else 'adapter'}"
    for guidance in (cfg.sample.guidance, *cfg.sample.extra_guidance):
        audio = generate_audio(
            unwrapped, tokenizer, list(prompts), seconds=cfg.sample.seconds, guidance=guidance,
            top_k=cfg.sample.top_k, temperature=cfg.sample.temperature, seed=cfg.sample.seed, melody=melodies,
        )
        suffix = "" if guidance == cfg.sample.guidance else f"_g{guidance:g}"
        for index, clip in enumerate(audio):
            write_wav(run_dir / "samples" / f"{tag}{suffix}_{index}.wav", clip, rate)
        tracker.log_audio(key + suffix, audio, rate, list(prompts), step)


def generation_metrics(cfg, evaluator, model, tokenizer, tracker, step, accelerator, *, adapter, base, base_metrics=None) -> dict:
    """Log gen/fad, gen/clap of the adapter (`adapter`) and the base model's gen/*_base (`base`: at
    the start and in the final record, computed once per process). Returns the base metrics."""
    if evaluator is None:
        return {}
    unwrapped = accelerator.unwrap_model(model)
    metrics = evaluator(unwrapped, tokenizer) if adapter else {}
    if base and cfg.metrics.base_model:
        base_metrics = base_metrics or evaluator.base_metrics(unwrapped, tokenizer)
        metrics.update(base_metrics)
    if metrics:
        tracker.log(metrics, step)
    return base_metrics or {}
