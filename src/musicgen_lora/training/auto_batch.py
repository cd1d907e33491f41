"""`--train.batch-size auto`: the largest batch that fits this device, resolved once per run.

- GPU: the memory estimate (`training.memory_estimate`) against what this process may use on the device
  (torch.cuda.mem_get_info's free memory plus what its allocator holds), less GPU_MARGIN; then one
  trial forward + backward at that batch, halved on out-of-memory until one succeeds.
- CPU: the estimate against MemAvailable (shared by the processes on this host), less CPU_MARGIN.

Either way the batch is at most the distinct windows the training data holds and a multiple of
the process count. The choice and its numbers are logged in one line and recorded: the run's
config.json holds the number (so a resume, a report or an export sees a number) and manifest.json
holds how it was chosen. A resumed run keeps the number its run directory recorded.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from musicgen_lora.data.windows import window_capacity
from musicgen_lora.helpers import atomic_write_json
from musicgen_lora.modeling.forward import forward_loss
from musicgen_lora.tracking.redact import redact
from musicgen_lora.training import builders
from musicgen_lora.training import memory_estimate as me
from musicgen_lora.training.architecture import architecture_of, lora_modules
from musicgen_lora.training.config import RunConfig, apply_overrides, to_dict
from musicgen_lora.training.host_memory import mem_available_bytes, release_freed_activations

log = logging.getLogger(__name__)

CPU_MARGIN = 0.2
"""Share of MemAvailable left free: other programs, the page cache, the estimate's error."""
GPU_MARGIN = 0.1
"""Share of the usable GPU memory left free: the caching allocator's fragmentation; a trial step
then checks the choice for real."""


class AutoBatchError(RuntimeError):
    """Not even a batch of one fits; the message says what to change."""


def memory_setup(cfg: RunConfig, run_dir: Path, resuming: bool, device: torch.device) -> RunConfig:
    """Before a run: on CPU, freed activations go back to the system at once
    (host_memory.release_freed_activations); a resumed run with --train.batch-size auto takes the
    number its run directory recorded (`recorded_batch_size`)."""
    if device.type == "cpu":
        release_freed_activations()
    return recorded_batch_size(cfg, run_dir) if resuming else cfg


def recorded_batch_size(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """A resumed run with --train.batch-size auto trains on with the number its config.json
    recorded (free memory may differ now; the batch of a run must not)."""
    if cfg.train.batch_size != "auto":
        return cfg
    try:
        recorded = json.loads((Path(run_dir) / "config.json").read_text())["train"]["batch_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return cfg
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        log.info("--train.batch-size auto: %d, as the run directory recorded", recorded)
        return apply_overrides(cfg, {"train.batch_size": recorded})
    return cfg


def largest_fitting(fits, high: int) -> int:
    """The largest b in [1, high] with fits(b) (fits is monotone: true up to some b), or 0."""
    low, best = 1, 0
    while low <= high:
        middle = (low + high) // 2
        if fits(middle):
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return best


def estimate_settings(cfg: RunConfig, data, device: torch.device) -> me.Settings:
    """The estimate's settings for this run at batch 1 per process."""
    precision = builders.mixed_precision(cfg.train.mixed_precision)
    dtype = builders.base_dtype(cfg.model.dtype, cfg.train.mixed_precision)
    captions = sorted({data.train.caption_override or clip.caption for clip in data.train.clips})
    tokenizer = data.collator.tokenizer
    tokens = tokenizer(captions, truncation=True, max_length=data.collator.max_text_tokens)["input_ids"]
    return me.Settings(
        batch_size=1, window_seconds=cfg.data.window_seconds, device="cuda" if device.type == "cuda" else "cpu",
        precision=precision, base_dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
        gradient_checkpointing=cfg.model.gradient_checkpointing, attention=cfg.model.attn_implementation,
        lora_r=cfg.lora.r, lora_dropout=cfg.lora.dropout, lora_targets=cfg.lora.targets,
        text_tokens=max(len(ids) for ids in tokens),
        cached_captions=min(len(captions) + 1, 4096) if cfg.train.cache_text_states else 0,
    )


def resolve_batch_size(cfg: RunConfig, model, data, accelerator, run_dir: Path | None = None) -> tuple[RunConfig, dict | None]:
    """`cfg` with --train.batch-size auto replaced by a number, and the record of how it was chosen
    (None when the batch size was a number already). `model` is the LoRA model, not yet prepared.
    With `run_dir`, the main process rewrites its config.json with the number (for resume and reports)."""
    if cfg.train.batch_size != "auto":
        return cfg, None
    device, world = accelerator.device, accelerator.num_processes
    arch = architecture_of(model, cfg.model.name)
    modules = lora_modules(arch, cfg.lora.targets)
    settings = estimate_settings(cfg, data, device)
    capacity = window_capacity(data.train.clips, data.frames)
    limit = capacity // world
    if limit < 1:
        raise AutoBatchError(f"--train.batch-size auto: the training data holds {capacity} distinct windows, fewer than "
                             f"the {world} processes: add data or shorten --data.window-seconds")

    def peak(batch: int) -> float:
        return me.estimate(arch, me.with_settings(settings, batch_size=batch), modules).total

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        available = free + torch.cuda.memory_reserved(device)  # the allocator's cached blocks are ours to reuse
        margin, source = GPU_MARGIN, f"{_gib(free)} GiB free on {torch.cuda.get_device_name(device)}"
    else:
        host = mem_available_bytes()
        if host is None:
            raise AutoBatchError("--train.batch-size auto needs /proc/meminfo (Linux) on CPU; pass a number instead")
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world)))  # they share this host's memory
        available = host / processes
        margin = CPU_MARGIN
        source = f"MemAvailable {_gib(host)} GiB" + (f" / {processes} processes" if processes > 1 else "")
    usable = available * (1 - margin)
    chosen = largest_fitting(lambda b: peak(b) <= usable, limit)
    trials: list[dict] = []
    if device.type == "cuda":
        chosen = _trial(model, data, max(chosen, 1), accelerator, trials)
    elif chosen == 0:
        raise AutoBatchError(
            f"--train.batch-size auto: even a batch of 1 needs {_gib(peak(1))} GiB (predicted), more than the "
            f"{_gib(usable)} GiB usable ({source}, {margin:.0%} kept free): use --model.gradient-checkpointing, a "
            "shorter --data.window-seconds, or free memory"
        )
    if world > 1:  # every process trains the same global batch: the smallest choice binds
        from accelerate.utils import gather_object

        chosen = min(gather_object([chosen]))
    batch = chosen * world
    limited_by = "data" if chosen == limit and peak(limit + 1) <= usable else "memory"
    record = {
        "requested": "auto", "resolved": batch, "per_process": chosen, "processes": world, "device": device.type,
        "limited_by": limited_by, "predicted_peak_bytes": peak(chosen), "usable_bytes": usable,
        "available_bytes": available, "margin": margin, "data_windows": capacity, "trials": trials,
        "estimate": {row.label: row.bytes for row in me.estimate(arch, me.with_settings(settings, batch_size=chosen), modules).rows},
    }
    if accelerator.is_main_process:
        log.info(
            "--train.batch-size auto: %d (%s; predicted peak %s GiB at %d per process, %s GiB at %d; %s GiB usable = "
            "%.0f%% of %s; data: %d distinct windows; limited by %s%s)", batch, device.type, _gib(peak(chosen)), chosen,
            _gib(peak(chosen + 1)), chosen + 1, _gib(usable), 100 * (1 - margin), source, capacity, limited_by,
            "".join(f"; trial at {t['batch']}: {t['outcome']}" for t in trials),
        )
    cfg = apply_overrides(cfg, {"train.batch_size": batch})
    if run_dir is not None and accelerator.is_main_process:
        atomic_write_json(Path(run_dir) / "config.json", redact(to_dict(cfg)))
    return cfg, record


def _trial(model, data, batch: int, accelerator, trials: list[dict]) -> int:
    """One forward + backward at `batch` on real windows; halve on out-of-memory. The RNG state and
    the gradients are left as they were, so the run trains exactly as with that number given."""
    device = accelerator.device
    params = [p for p in model.parameters() if p.requires_grad]
    training = model.training
    while batch >= 1:
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                examples = [data.train[i] for i in range(batch)]
                inputs = {key: value.to(device) for key, value in data.collator(examples).items()}
                model.train()
                with accelerator.autocast():
                    loss, _ = forward_loss(model, inputs, None)
                loss.backward()
            trials.append({"batch": batch, "outcome": "fits"})
            return batch
        except torch.OutOfMemoryError:
            trials.append({"batch": batch, "outcome": "out of memory"})
            batch //= 2
        finally:
            loss = inputs = None
            for p in params:
                p.grad = None
            model.train(training)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise AutoBatchError("--train.batch-size auto: a batch of 1 runs out of GPU memory: use "
                         "--model.gradient-checkpointing, a shorter --data.window-seconds, or a larger GPU")


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"
