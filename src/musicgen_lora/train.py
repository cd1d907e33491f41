"""The training loop: a plain function over accelerate, the same on CPU, one GPU, or many.

`train(config)` does everything a run needs, in one direction: token cache -> data -> model + LoRA
-> optimizer -> (resume) -> loop with eval, samples and checkpoints -> final adapter.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from musicgen_lora import builders
from musicgen_lora.checkpoint import (
    apply_checkpoint,
    list_checkpoints,
    newest_readable_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from musicgen_lora.config import RunConfig, to_dict
from musicgen_lora.data import DataConfigError, DrawSampler
from musicgen_lora.forward import TextStateCache, forward_loss
from musicgen_lora.generate import generate_audio, write_wav
from musicgen_lora.hf_data import DatasetSourceError
from musicgen_lora.loss import add_stats, codebook_metrics
from musicgen_lora.manifest import Launch, read_manifest
from musicgen_lora.model import LoraTargetError, ModelLoadError
from musicgen_lora.redact import redact
from musicgen_lora.resume import ResumeConfigError, change_record, check_resume_config
from musicgen_lora.run_lock import RunDirLock, RunDirLockedError
from musicgen_lora.tokens import (
    CacheMismatchError,
    NoUsableAudioError,
    atomic_write_json,
)
from musicgen_lora.tracking import run_name, truncate_metrics

log = logging.getLogger(__name__)


CONFIG_ERRORS = (
    ModelLoadError, LoraTargetError, CacheMismatchError, NoUsableAudioError, DataConfigError, ResumeConfigError,
    RunDirLockedError, DatasetSourceError,
)
"""Errors raised before training starts whose message says which setting to change."""

COLLECTIVE_TIMEOUT_S = 2 * 3600
BEST_ADAPTER = "adapter_best"
"""In the run directory: the adapter of the evaluation with the lowest validation loss."""


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class RunInterrupted(Exception):
    """Ctrl-C during training: the run's trackers are finished as "interrupted"."""

    def __init__(self, run_dir: Path, checkpoint: Path | None):
        super().__init__(f"interrupted; last checkpoint: {checkpoint}")
        self.run_dir, self.checkpoint = run_dir, checkpoint


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    steps: int
    final_val_loss: float | None
    skipped_steps: int
    already_finished: bool = False
    best_val_loss: float | None = None
    best_step: int | None = None
    base_val_loss: float | None = None


def make_accelerator(cfg: RunConfig) -> Accelerator:
    # Several processes without a GPU (torchrun --nproc_per_node N): accelerate joins them over gloo
    # only when told cpu=True; otherwise every process would silently train alone.
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    precision = builders.mixed_precision(cfg.train.mixed_precision)
    if AcceleratorState._shared_state.get("_mixed_precision") not in (None, precision):
        # accelerate fixes one precision per process; a later run in it (a test, a notebook) may pick another.
        AcceleratorState._reset_state()
    return Accelerator(
        cpu=cpu_processes,
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        # The loader yields global batches that accelerate splits across processes, so the data a
        # step sees is the same for 1 or N processes (same global batch, same order).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # Rank 0 alone writes samples and generation metrics while the others wait at a barrier:
        # on a real model that can outlast the default collective timeout (10 min with NCCL).
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))],
    )


def resolve_run_dir(cfg: RunConfig, accelerator: Accelerator) -> Path:
    """The run directory; its timestamped default name is chosen once and shared by all ranks."""
    names = [str(cfg.output_dir) if cfg.output_dir else str(Path("runs") / run_name(cfg.experiment, cfg.variant, cfg.seed))]
    if accelerator.num_processes > 1:
        broadcast_object_list(names)
    return Path(names[0])


def _on_all_ranks(accelerator: Accelerator, action):
    """Run `action` on the main process and raise its exception, if any, on every process (so no
    rank waits forever in a collective the others never reach)."""
    result, error = None, [None]
    if accelerator.is_main_process:
        try:
            result = action()
        except Exception as exc:  # re-raised below on every rank
            error[0] = exc
    if accelerator.num_processes > 1:
        broadcast_object_list(error)
    if error[0] is not None:
        raise error[0]
    return result


def train(cfg: RunConfig, accelerator: Accelerator | None = None, launch: Launch | None = None) -> TrainResult:
    """`launch` (script, arguments, start time) goes into the run's manifest.json."""
    accelerator = accelerator or make_accelerator(cfg)
    run_dir = resolve_run_dir(cfg, accelerator)
    main = accelerator.is_main_process
    created = not run_dir.exists()
    lock = _on_all_ranks(accelerator, lambda: _claim_run_dir(run_dir))
    try:
        return _train_in(cfg, accelerator, run_dir, launch)
    except CONFIG_ERRORS:
        if main and created:  # a start refused before training leaves nothing half-made behind
            if lock:
                lock.release()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if lock:
            lock.release()


def _claim_run_dir(run_dir: Path) -> RunDirLock:
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunDirLock.acquire(run_dir)


def _train_in(cfg: RunConfig, accelerator: Accelerator, run_dir: Path, launch: Launch | None) -> TrainResult:
    main = accelerator.is_main_process
    config = redact(to_dict(cfg))  # no secret passed as a flag
    checkpoint_dir = run_dir / "checkpoints"
    resuming = cfg.train.resume and bool(list_checkpoints(checkpoint_dir))
    changes = check_resume_config(run_dir, config) if resuming else {}
    finished = _finished_at(run_dir) if resuming else None
    if finished is not None and finished >= cfg.train.max_steps:
        return TrainResult(run_dir, finished, None, 0, already_finished=True)
    if main:
        atomic_write_json(run_dir / "config.json", config)
    set_seed(cfg.seed)

    model, tokenizer = builders.base_model(cfg.model, accelerator.device, cfg.train.mixed_precision)
    fmt = builders.audio_format(model)
    builders.check_lora_targets(cfg, model)  # a typo in --lora.targets fails now, not after encoding
    with accelerator.main_process_first():  # rank 0 encodes; the others then find the cache complete
        cache_dir = builders.token_cache(cfg, model, fmt, accelerator.device, log_summary=main)
    silence = builders.silence_codes(model, fmt, accelerator.device) if cfg.data.pad_mode == "zero_pad_legacy" else None
    data = builders.training_data(cfg, cache_dir, fmt, accelerator.num_processes, silence, tokenizer)
    evaluator = builders.generation_evaluator(cfg, model, cache_dir, data.sample_prompts, accelerator.device) if main else None
    model = builders.lora_model(cfg, model)
    optimizer, scheduler = builders.optimizer_and_schedule(cfg.optim, cfg.train.max_steps, model, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    scaler = accelerator.scaler

    state = {"draws": 0, "skipped_steps": 0, "consecutive_bad": 0, "best_val_loss": None, "best_step": None,
             "base_val_loss": None}
    step = 0
    checkpoint = newest_readable_checkpoint(checkpoint_dir, warn=log.warning if main else _quiet) if cfg.train.resume else None
    if checkpoint is not None:
        restored, rng_states = apply_checkpoint(
            checkpoint, model=accelerator.unwrap_model(model), optimizer=optimizer.optimizer,
            scheduler=scheduler, scaler=scaler,
        )
        step = restored.pop("step")
        state.update(restored)
        set_rng_state(rng_states[min(accelerator.process_index, len(rng_states) - 1)])
        if main:
            log.info("resumed from %s at step %d", checkpoint.path, step)
    elif resuming and main:
        log.warning("no checkpoint in %s could be read: the run starts over from step 0", checkpoint_dir)
    if main:
        # Records past the restored step (or every record, when starting over) are logged again.
        truncate_metrics(run_dir / "metrics.jsonl", step if checkpoint is not None else -1)

    tracker = builders.trackers(
        cfg, run_dir, main, resumed_step=step, launch=launch, world_size=accelerator.num_processes
    )
    if changes:
        tracker.record({"resume_changes": change_record(changes)})
    if main:  # which files were held out, by group: a leak between the sides is visible here
        atomic_write_json(run_dir / "split.json", data.split)
        log.info("split by group: %(train)d train, %(val)d validation groups (split.json)", data.split["groups"])
    tracker.record({"split": {"groups": data.split["groups"], "files": data.split["files_per_side"]}})
    precision = builders.precision_record(cfg, accelerator.unwrap_model(model), accelerator.device)
    tracker.record({"precision": precision})
    if main:
        log.info("precision: %s", builders.precision_line(precision))
    try:
        result = _train_loop(cfg, accelerator, run_dir, model, tokenizer, optimizer, scheduler, data, tracker, state, step, evaluator)
    except KeyboardInterrupt:
        tracker.finish("interrupted")
        raise RunInterrupted(run_dir, _last_checkpoint(checkpoint_dir)) from None
    except BaseException:
        tracker.finish("failed")
        raise
    tracker.record({"adapters": _adapter_record(run_dir, state)})
    tracker.finish("completed")
    return result


def _quiet(*_args) -> None:
    pass


def _finished_at(run_dir: Path) -> int | None:
    """The step a completed run directory ended at (its final adapter written), else None."""
    manifest = read_manifest(run_dir)
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not (run_dir / "adapter").is_dir() or not checkpoints or (manifest or {}).get("outcome") != "completed":
        return None
    return int(checkpoints[-1].name.split("_")[1])


def _last_checkpoint(checkpoint_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


def _adapter_record(run_dir: Path, state: dict) -> dict:
    best = None
    if (run_dir / BEST_ADAPTER).is_dir():
        best = {"path": BEST_ADAPTER, "step": state["best_step"], "val_loss": state["best_val_loss"]}
    return {"final": "adapter", "best": best}


def _train_loop(cfg, accelerator, run_dir, model, tokenizer, optimizer, scheduler, data, tracker, state, step, evaluator=None) -> TrainResult:
    main = accelerator.is_main_process
    scaler = accelerator.scaler
    text_cache = TextStateCache() if cfg.train.cache_text_states else None
    draws_per_step = cfg.train.batch_size * cfg.train.grad_accum_steps
    loader = torch.utils.data.DataLoader(
        data.train,
        batch_size=cfg.train.batch_size,
        sampler=DrawSampler(step * draws_per_step, cfg.train.max_steps * draws_per_step),
        collate_fn=data.collator,
        num_workers=cfg.data.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
        generator=torch.Generator(),  # keeps the loader from drawing on the global RNG (exact resume)
    )
    loader = accelerator.prepare(loader)

    if step == 0 and main and cfg.sample.base_model:
        _write_samples(cfg, model, tokenizer, data.sample_prompts, run_dir, "base", tracker, step, accelerator)
    if step == 0:
        state["base_val_loss"] = _evaluate(cfg, model, data, text_cache, accelerator, tracker, step, base=True)
    base_metrics = {}
    if step == 0 and main:
        base_metrics = _generation_metrics(cfg, evaluator, model, tokenizer, tracker, step, accelerator, adapter=False, base=True)
    accelerator.wait_for_everyone()

    frames_per_step = draws_per_step * data.frames
    model.train()
    progress = tqdm(total=cfg.train.max_steps, initial=step, disable=not main, desc="train", dynamic_ncols=True)
    window_stats, window_loss, step_times = None, [], []
    tick = time.perf_counter()
    val_loss = None
    step_stats, step_loss = None, []
    try:  # the bar is closed on any exit, so a message printed after it stays the last line
        for batch in loader:
            with accelerator.accumulate(model):
                loss, stats = forward_loss(model, batch, text_cache)
                accelerator.backward(loss)
                step_stats = add_stats(step_stats, stats)
                step_loss.append(loss.detach())
                if not accelerator.sync_gradients:
                    continue
                grad_norm = accelerator.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.optim.max_grad_norm or math.inf
                )
                # Every process decides alike: the loss sum is reduced, the grad norm is already global.
                loss_sum = accelerator.reduce(torch.stack(step_loss).sum(), reduction="sum")
                finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(loss_sum))
                if finite or scaler is not None:
                    optimizer.step()  # with fp16 the grad scaler skips a non-finite step and lowers its scale
                if finite:
                    scheduler.step()
                    state["consecutive_bad"] = 0
                    window_stats = add_stats(window_stats, step_stats)  # a skipped step's NaNs are not averaged in
                    window_loss.extend(step_loss)
                else:
                    state["skipped_steps"] += 1
                    state["consecutive_bad"] += 1
                    if main:
                        log.warning("step %d skipped: non-finite loss or gradient norm (%d in a row, %d in all)",
                                    step + 1, state["consecutive_bad"], state["skipped_steps"])
                optimizer.zero_grad(set_to_none=True)
                step_stats, step_loss = None, []
            step += 1
            state["draws"] = step * draws_per_step
            step_times.append(time.perf_counter() - tick)
            progress.update(1)

            if state["consecutive_bad"] >= cfg.train.max_bad_steps:
                tracker.log({"train/skipped_steps": state["skipped_steps"]}, step)
                raise NonFiniteTrainingError(
                    f"{state['consecutive_bad']} consecutive steps had a non-finite loss or gradient (step {step}); "
                    "the last good checkpoint is kept. Lower --optim.lr, or use --train.mixed-precision bf16/no."
                )
            last = step == cfg.train.max_steps
            checkpoint_due = bool(cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0) or last
            # Logging at every checkpoint too closes the averaging window there, so a resumed run logs
            # exactly the records the uninterrupted run logs.
            if step % cfg.train.log_every == 0 or checkpoint_due:
                if window_stats is None:  # every step since the last log was skipped
                    metrics = {"train/skipped_steps": state["skipped_steps"], "train/grad_norm": float(grad_norm)}
                else:
                    metrics = _train_metrics(accelerator, window_stats, window_loss, step_times, frames_per_step, data, scheduler, grad_norm, state)
                    progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", fps=f"{metrics['perf/frames_per_s']:.0f}")
                tracker.log(metrics, step)
                window_stats, window_loss, step_times = None, [], []
            if (cfg.train.eval_every and step % cfg.train.eval_every == 0) or last:
                if main:  # generating samples and metrics can take minutes: say what is running
                    tqdm.write(_eval_status(step, data, evaluator), file=sys.stderr)
                val_loss = _evaluate(cfg, model, data, text_cache, accelerator, tracker, step)
                if main:
                    _keep_best_adapter(cfg, accelerator.unwrap_model(model), run_dir, val_loss, step, state)
                    tag = "final" if last else f"step_{step:07d}"
                    if _can_sample(accelerator.unwrap_model(model), step):
                        try:
                            _write_samples(cfg, model, tokenizer, data.sample_prompts, run_dir, tag, tracker, step, accelerator)
                            _generation_metrics(
                                cfg, evaluator, model, tokenizer, tracker, step, accelerator, adapter=True, base=last,
                                base_metrics=base_metrics,
                            )
                        except RuntimeError as error:
                            if not _non_finite_sampling(error):
                                raise
                            log.warning("samples and generation metrics skipped at step %d: the model's output "
                                        "probabilities are not finite (%s)", step, " ".join(str(error).split())[:120])
                accelerator.wait_for_everyone()
            if checkpoint_due:
                _checkpoint(cfg, run_dir, step, model, optimizer, scheduler, scaler, state, accelerator)
            tick = time.perf_counter()
    finally:
        progress.close()

    if main:
        builders.save_adapter(accelerator.unwrap_model(model), run_dir / "adapter", cfg)
        tracker.log_adapter(run_dir / "adapter", f"adapter-{run_dir.name}")
    accelerator.wait_for_everyone()
    return TrainResult(
        run_dir, step, val_loss, state["skipped_steps"], best_val_loss=state["best_val_loss"],
        best_step=state["best_step"], base_val_loss=state["base_val_loss"],
    )


def _eval_status(step: int, data, evaluator) -> str:
    parts = [f"validation loss ({len(data.val)} windows)", f"{len(data.sample_prompts)} samples"]
    return f"evaluating at step {step}: " + ", ".join(parts + ["generation metrics"] * (evaluator is not None))


def _train_metrics(accelerator, stats, losses, step_times, frames_per_step, data, scheduler, grad_norm, state) -> dict:
    stats = {key: accelerator.reduce(value.to(accelerator.device), reduction="sum") for key, value in stats.items()}
    metrics = codebook_metrics(stats, "train")
    metrics["train/loss_mean"] = float(accelerator.reduce(torch.stack(losses).mean(), reduction="mean"))
    metrics["train/lr"] = scheduler.get_last_lr()[0]
    metrics["train/grad_norm"] = float(grad_norm)
    metrics["train/skipped_steps"] = state["skipped_steps"]
    metrics["data/epoch"] = state["draws"] / max(1, data.train.epoch_size())
    step_time = float(np.median(step_times))
    metrics["perf/step_time_s"] = step_time
    metrics["perf/frames_per_s"] = frames_per_step / step_time
    metrics["perf/tokens_per_s"] = frames_per_step * data.num_codebooks / step_time
    metrics["perf/audio_s_per_s"] = frames_per_step / data.frame_rate / step_time
    metrics["perf/peak_memory_gb"] = _peak_memory_gb(accelerator.device)
    return metrics


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # VmHWM is this process's own peak; ru_maxrss also carries a launching parent's peak across exec.
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 2**20
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@torch.no_grad()
def _evaluate(cfg, model, data, text_cache, accelerator, tracker, step, *, base: bool = False) -> float | None:
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


def _keep_best_adapter(cfg, model, run_dir: Path, val_loss: float | None, step: int, state: dict) -> None:
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


def _can_sample(model, step: int) -> bool:
    """Sampling a model with non-finite weights fails inside torch.multinomial: skip it, say why."""
    if builders.adapter_is_finite(model):
        return True
    log.warning("samples and generation metrics skipped at step %d: the adapter weights are not finite", step)
    return False


def _non_finite_sampling(error: RuntimeError) -> bool:
    """torch.multinomial's refusal of NaN/Inf probabilities (a diverged model's logits)."""
    message = str(error).lower()
    return "probability tensor" in message or "nan" in message or "inf" in message


def _write_samples(cfg, model, tokenizer, prompts, run_dir, tag, tracker, step, accelerator) -> None:
    if not prompts:
        return
    unwrapped = accelerator.unwrap_model(model)
    rate = unwrapped.config.audio_encoder.sampling_rate
    key = f"samples/{'base' if tag == 'base' else 'adapter'}"
    for guidance in (cfg.sample.guidance, *cfg.sample.extra_guidance):
        audio = generate_audio(
            unwrapped, tokenizer, list(prompts), seconds=cfg.sample.seconds, guidance=guidance,
            top_k=cfg.sample.top_k, temperature=cfg.sample.temperature, seed=cfg.sample.seed,
        )
        suffix = "" if guidance == cfg.sample.guidance else f"_g{guidance:g}"
        for index, clip in enumerate(audio):
            write_wav(run_dir / "samples" / f"{tag}{suffix}_{index}.wav", clip, rate)
        tracker.log_audio(key + suffix, audio, rate, list(prompts), step)


def _generation_metrics(cfg, evaluator, model, tokenizer, tracker, step, accelerator, *, adapter, base, base_metrics=None) -> dict:
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


def _checkpoint(cfg, run_dir, step, model, optimizer, scheduler, scaler, state, accelerator) -> None:
    rng_states = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if builders.adapter_is_finite(unwrapped):
            save_checkpoint(
                run_dir / "checkpoints", step, model=unwrapped, optimizer=optimizer.optimizer,
                scheduler=scheduler, scaler=scaler, rng_states=rng_states, state=dict(state), keep=cfg.train.keep_checkpoints,
            )
        else:
            log.error("adapter weights are not finite at step %d: checkpoint not written", step)
    accelerator.wait_for_everyone()
