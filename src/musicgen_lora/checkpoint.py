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
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    scaler,
    rng_states: list[dict],
    state: dict,
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically and prune older ones down to `keep`."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"step_{step:07d}"
    tmp = checkpoint_dir / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), tmp / "adapter.safetensors")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_states,  # one entry per process rank
        },
        tmp / "training_state.pt",
    )
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
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


def load_checkpoint(path: Path, *, model, optimizer, scheduler, scaler) -> tuple[dict, list[dict]]:
    """Restore weights and optimizer/scheduler/scaler; returns (state.json, per-rank RNG states)."""
    weights = load_file(path / "adapter.safetensors")
    parameters = dict(model.named_parameters())
    missing = set(weights) ^ {name for name, p in parameters.items() if p.requires_grad}
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model's trainable weights: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    training = torch.load(path / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    if scaler is not None and training["scaler"] is not None:
        scaler.load_state_dict(training["scaler"])
    return json.loads((path / STATE_FILE).read_text()), training["rng"]
