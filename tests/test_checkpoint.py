"""Issue 6.3: checkpoints are written atomically; a process killed mid-save leaves the previous
checkpoint loadable, and old checkpoints are pruned only once a new one is complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from musicgen_lora.modeling.model import apply_lora, build_tiny_musicgen
from musicgen_lora.training.checkpoint import (
    apply_checkpoint,
    list_checkpoints,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def load_checkpoint(path, **objects):
    return apply_checkpoint(read_checkpoint(path), **objects)


# A child that saves step 1, changes the weights, and hangs in the middle of saving step 2: the
# adapter is written, the training state is half written, nothing is renamed yet.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from musicgen_lora.training import checkpoint
    from musicgen_lora.modeling.model import apply_lora, build_tiny_musicgen

    folder = Path(sys.argv[1])
    model = apply_lora(build_tiny_musicgen(), r=2, alpha=2, dropout=0.0, targets=("q_proj",))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    def save(step):
        checkpoint.save_checkpoint(folder / "checkpoints", step, model=model, optimizer=optimizer,
            scheduler=scheduler, scaler=None, rng_states=[checkpoint.rng_state()], state={"draws": step}, keep=1)
    save(1)
    save_file({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, folder / "reference.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)

    def hanging_save(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"half a training state")
            handle.flush()
        (folder / "ready").touch()
        time.sleep(600)

    checkpoint.torch.save = hanging_save
    save(2)
""")


def _small_lora():
    model = apply_lora(build_tiny_musicgen(), r=2, alpha=2, dropout=0.0, targets=("q_proj",))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def _save(folder, step, model, optimizer, scheduler, keep):
    return save_checkpoint(folder, step, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None,
                           rng_states=[rng_state()], state={"draws": step}, keep=keep)


@pytest.mark.slow
def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        assert child.poll() is None, child.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the child never reached the save"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    folder = tmp_path / "checkpoints"
    assert (folder / ".tmp_step_0000002" / "adapter_model.safetensors").exists()  # the interrupted save
    assert [p.name for p in list_checkpoints(folder)] == ["step_0000001"]  # kept despite keep=1

    model, optimizer, scheduler = _small_lora()
    state, rngs = load_checkpoint(folder / "step_0000001", model=model, optimizer=optimizer, scheduler=scheduler, scaler=None)
    assert state == {"step": 1, "draws": 1} and len(rngs) == 1
    reference = load_file(tmp_path / "reference.safetensors")
    weights = dict(model.named_parameters())
    assert all(torch.equal(weights[name], tensor) for name, tensor in reference.items())

    # The next complete save replaces it; only then is step 1 pruned and the debris removed.
    _save(folder, 3, model, optimizer, scheduler, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000003"]


def test_pruning_keeps_the_newest_n(tmp_path):
    model, optimizer, scheduler = _small_lora()
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, optimizer, scheduler, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    _save(tmp_path, 4, model, optimizer, scheduler, keep=2)  # re-saving a step replaces it whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000003", "step_0000004"]


def test_incomplete_folders_are_never_listed(tmp_path):
    (tmp_path / "step_0000009").mkdir()  # no state.json: not a checkpoint
    (tmp_path / ".tmp_step_0000010").mkdir()
    assert list_checkpoints(tmp_path) == []


def test_scaler_and_rng_states_round_trip(tmp_path):
    model, optimizer, scheduler = _small_lora()
    scaler = torch.amp.GradScaler("cpu", init_scale=1234.0)
    scaler.scale(torch.ones(()))  # the scale is created lazily
    scaler.update(new_scale=777.0)
    torch.manual_seed(5)
    rng = rng_state()
    expected = torch.rand(3)
    save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    rng_states=[rng], state={"draws": 8}, keep=1)
    restored_scaler = torch.amp.GradScaler("cpu")
    state, rngs = load_checkpoint(tmp_path / "step_0000001", model=model, optimizer=optimizer,
                                  scheduler=scheduler, scaler=restored_scaler)
    assert restored_scaler.get_scale() == 777.0 and state["draws"] == 8
    set_rng_state(rngs[0])
    assert torch.equal(torch.rand(3), expected)
