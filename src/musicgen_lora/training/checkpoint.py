"""Crash-safe checkpoints: adapter, optimizer, scheduler, grad scaler, RNG states and data position.

A checkpoint is a folder `checkpoints/step_NNNNNNN/`, written under a temporary name and renamed
when complete, so a process killed mid-save leaves the previous checkpoints untouched and loadable.
Old checkpoints are pruned only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from musicgen_lora.helpers import respect_umask

STATE_FILE = "state.json"
ADAPTER_FILE = "adapter_model.safetensors"  # PEFT's name: the folder loads as an adapter
TRAINING_STATE_FILE = "training_state.pt"


def rng_state() -> dict:
    """Every RNG a training step draws from (LoRA dropout, any numpy/python use)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    rng_states: list[dict],
    state: dict,
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically and prune older ones down to `keep`.

    The adapter is saved in PEFT format (adapter_config.json + adapter_model.safetensors), so a
    checkpoint folder is itself an adapter: `generate --adapter runs/X/checkpoints/step_N` works."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"step_{step:07d}"
    tmp = checkpoint_dir / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp, save_embedding_layers=False)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_states,  # one entry per process rank
        },
        tmp / TRAINING_STATE_FILE,
    )
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
    respect_umask(tmp.iterdir())  # safetensors leaves its file 0600
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step: move the old copy aside first, so a step_ folder is always whole
        old = checkpoint_dir / f".old_step_{step:07d}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(checkpoint_dir)
    prune_checkpoints(checkpoint_dir, keep)
    return final


def _fsync_dir(path: Path) -> None:
    """Flush the files in `path` and the folder entry itself, so a rename lands after the data."""
    for file in path.iterdir() if path.is_dir() else []:
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    if not checkpoint_dir.is_dir():
        return []
    done = [p for p in checkpoint_dir.glob("step_*") if (p / STATE_FILE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    complete = list_checkpoints(checkpoint_dir)
    for old in complete[: max(0, len(complete) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in [*checkpoint_dir.glob(".tmp_step_*"), *checkpoint_dir.glob(".old_step_*")]:
        shutil.rmtree(stale, ignore_errors=True)


@dataclass
class Checkpoint:
    """A checkpoint read completely into memory: nothing is applied until every file has loaded."""

    path: Path
    adapter: dict[str, torch.Tensor]
    training: dict
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_checkpoint(path: Path) -> Checkpoint:
    """Every file of a checkpoint, or an exception saying which one is unreadable."""
    state = json.loads((path / STATE_FILE).read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{STATE_FILE} has no step")
    adapter = load_file(path / ADAPTER_FILE)
    training = torch.load(path / TRAINING_STATE_FILE, weights_only=False)
    return Checkpoint(path, adapter, training, state)


def newest_readable_checkpoint(checkpoint_dir: Path, warn=print) -> Checkpoint | None:
    """The newest checkpoint whose files all load; each unreadable newer one is reported in one line."""
    for path in reversed(list_checkpoints(checkpoint_dir)):
        try:
            return read_checkpoint(path)
        except Exception as error:  # truncated safetensors / torch file, empty state.json, ...
            reason = " ".join(str(error).split())[:160]
            warn(f"checkpoint {path} is unreadable ({type(error).__name__}: {reason}); trying the one before it")
    return None


def apply_checkpoint(checkpoint: Checkpoint, *, model, optimizer, scheduler, scaler) -> tuple[dict, list[dict]]:
    """Restore weights and optimizer/scheduler/scaler; returns (state.json, per-rank RNG states)."""
    from peft import set_peft_model_state_dict

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    result = set_peft_model_state_dict(model, checkpoint.adapter)
    mismatched = sorted(set(result.unexpected_keys) | (trainable & set(result.missing_keys)))
    if mismatched:
        raise ValueError(f"checkpoint {checkpoint.path} does not match the model's trainable weights: {mismatched[:5]}")
    optimizer.load_state_dict(checkpoint.training["optimizer"])
    scheduler.load_state_dict(checkpoint.training["scheduler"])
    if scaler is not None and checkpoint.training["scaler"] is not None:
        scaler.load_state_dict(checkpoint.training["scaler"])
    return dict(checkpoint.state), checkpoint.training["rng"]
