"""The training metrics logged every few steps: per-codebook loss and accuracy, learning rate,
gradient norm, throughput (frames, tokens and audio seconds per second) and peak memory."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import torch

from musicgen_lora.modeling.loss import codebook_metrics


def train_metrics(accelerator, stats, losses, step_times, frames_per_step, data, scheduler, grad_norm, state) -> dict:
    """The metrics logged every `log_every` steps, summed or averaged over processes."""
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
    metrics["perf/peak_memory_gb"] = peak_memory_gb(accelerator.device)
    return metrics


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # VmHWM is this process's own peak; ru_maxrss also carries a launching parent's peak across exec.
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 2**20
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
