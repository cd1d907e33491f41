"""The training loop: a plain function over accelerate, the same on CPU, one GPU, or many.

`train(config)` does everything a run needs, in one direction: token cache -> data -> model + LoRA
-> optimizer -> (resume) -> loop with eval, samples and checkpoints -> final adapter.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from musicgen_lora.data.chroma import chroma_settings
from musicgen_lora.data.hf_datasets import DatasetSourceError
from musicgen_lora.data.tokens import CacheMismatchError, NoUsableAudioError
from musicgen_lora.data.windows import DataConfigError, DrawSampler
from musicgen_lora.helpers import atomic_write_json
from musicgen_lora.modeling.forward import TextStateCache, forward_loss
from musicgen_lora.modeling.loss import add_stats
from musicgen_lora.modeling.model import LoraTargetError, ModelLoadError, describe
from musicgen_lora.tracking.manifest import Launch, read_manifest
from musicgen_lora.tracking.redact import redact
from musicgen_lora.tracking.run_lock import RunDirLock, RunDirLockedError
from musicgen_lora.tracking.trackers import run_name, truncate_metrics
from musicgen_lora.training import auto_batch, builders, data_setup, evaluate, step_metrics
from musicgen_lora.training.checkpoint import (
    apply_checkpoint,
    list_checkpoints,
    newest_readable_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from musicgen_lora.training.config import RunConfig, to_dict
from musicgen_lora.training.resume import ResumeConfigError, change_record, check_resume_config

log = logging.getLogger(__name__)


CONFIG_ERRORS = (
    ModelLoadError, LoraTargetError, CacheMismatchError, NoUsableAudioError, DataConfigError, ResumeConfigError,
    RunDirLockedError, DatasetSourceError, auto_batch.AutoBatchError,
)
"""Errors raised before training starts whose message says which setting to change."""

COLLECTIVE_TIMEOUT_S = 2 * 3600


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
    checkpoint_dir = run_dir / "checkpoints"
    resuming = cfg.train.resume and bool(list_checkpoints(checkpoint_dir))
    cfg = auto_batch.memory_setup(cfg, run_dir, resuming, accelerator.device)  # CPU allocator; resumed auto batch
    config = redact(to_dict(cfg))  # no secret passed as a flag
    changes = check_resume_config(run_dir, config) if resuming else {}
    finished = _finished_at(run_dir) if resuming else None
    if finished is not None and finished >= cfg.train.max_steps:
        return TrainResult(run_dir, finished, None, 0, already_finished=True)
    if main:
        atomic_write_json(run_dir / "config.json", config)
    set_seed(cfg.seed)

    model, tokenizer = builders.base_model(cfg.model, accelerator.device, cfg.train.mixed_precision)
    fmt = builders.audio_format(model)
    if main:
        log.info("model: %s", describe(model))
    builders.check_lora_targets(cfg, model)  # a typo in --lora.targets fails now, not after encoding
    with accelerator.main_process_first():  # rank 0 encodes; the others then find the cache complete
        cache_dir = data_setup.token_cache(cfg, model, fmt, accelerator.device, log_summary=main)
    silence = data_setup.silence_codes(model, fmt, accelerator.device) if cfg.data.pad_mode == "zero_pad_legacy" else None
    data = data_setup.training_data(cfg, cache_dir, fmt, accelerator.num_processes, silence, tokenizer,
                                    chroma=chroma_settings(model))
    evaluator = builders.generation_evaluator(cfg, model, cache_dir, data.sample_prompts, accelerator.device) if main else None
    model = builders.lora_model(cfg, model)
    cfg, batch_record = auto_batch.resolve_batch_size(cfg, model, data, accelerator, run_dir)
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
    if batch_record:
        tracker.record({"batch_size": batch_record})
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
    if (run_dir / evaluate.BEST_ADAPTER).is_dir():
        best = {"path": evaluate.BEST_ADAPTER, "step": state["best_step"], "val_loss": state["best_val_loss"]}
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
        evaluate.write_samples(cfg, model, tokenizer, data.sample_prompts, run_dir, "base", tracker, step, accelerator,
                               data.sample_melodies)
    if step == 0:
        state["base_val_loss"] = evaluate.validation_loss(cfg, model, data, text_cache, accelerator, tracker, step, base=True)
    base_metrics = {}
    if step == 0 and main:
        base_metrics = evaluate.generation_metrics(cfg, evaluator, model, tokenizer, tracker, step, accelerator, adapter=False, base=True)
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
                    metrics = step_metrics.train_metrics(accelerator, window_stats, window_loss, step_times, frames_per_step, data, scheduler, grad_norm, state)
                    progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", fps=f"{metrics['perf/frames_per_s']:.0f}")
                tracker.log(metrics, step)
                window_stats, window_loss, step_times = None, [], []
            if (cfg.train.eval_every and step % cfg.train.eval_every == 0) or last:
                if main:  # generating samples and metrics can take minutes: say what is running
                    tqdm.write(_eval_status(step, data, evaluator), file=sys.stderr)
                val_loss = evaluate.validation_loss(cfg, model, data, text_cache, accelerator, tracker, step)
                if main:
                    evaluate.keep_best_adapter(cfg, accelerator.unwrap_model(model), run_dir, val_loss, step, state)
                    tag = "final" if last else f"step_{step:07d}"
                    if evaluate.can_sample(accelerator.unwrap_model(model), step):
                        try:
                            evaluate.write_samples(cfg, model, tokenizer, data.sample_prompts, run_dir, tag, tracker, step, accelerator,
                                                   data.sample_melodies)
                            evaluate.generation_metrics(
                                cfg, evaluator, model, tokenizer, tracker, step, accelerator, adapter=True, base=last,
                                base_metrics=base_metrics,
                            )
                        except RuntimeError as error:
                            if not evaluate.non_finite_sampling(error):
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
