"""Issue 6.4: a run killed with SIGKILL after a checkpoint and resumed with the same command ends
bit-identical to the uninterrupted run: adapter tensors, and every logged loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import BASELINE, REPO_ROOT, child_env, quick_args, run_baseline

# Runs the experiment script; with PAUSE_AT set, hangs in the PAUSE_AT-th training forward pass
# (after the checkpoint before it is complete) and says so in PAUSE_FILE: the moment to kill it.
PAUSING = textwrap.dedent("""
    import os, runpy, sys, time
    from pathlib import Path
    import musicgen_lora.train as train

    pause_at, calls, forward_loss = int(os.environ.get("PAUSE_AT", "0")), [], train.forward_loss
    def pausing_forward_loss(model, *args, **kwargs):
        calls.append(model.training)  # evaluation passes do not count
        if sum(calls) == pause_at and model.training:
            Path(os.environ["PAUSE_FILE"]).touch()
            time.sleep(600)
        return forward_loss(model, *args, **kwargs)
    train.forward_loss = pausing_forward_loss
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")

STEPS, CHECKPOINT_EVERY, KILL_IN_STEP = 8, 3, 5


def _losses(run_dir) -> list[tuple[str, int, float]]:
    """Every logged loss in file order: a record logged twice (before the kill and after) shows."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(key, r["step"], r[key]) for r in records for key in ("train/loss", "val/loss") if key in r]


@pytest.mark.slow
def test_kill_9_and_resume_is_bit_identical(tmp_path, demo_dir, demo_cache):
    shutil.copytree(demo_cache, tmp_path / "cache")
    extra = ["--train.max-steps", str(STEPS), "--train.checkpoint-every", str(CHECKPOINT_EVERY),
             "--train.log-every", "2", "--train.eval-every", "4", "--data.val-fraction", "0.2",
             "--lora.dropout", "0.1"]  # dropout draws on the RNG every step: its state must be restored
    args = lambda name: quick_args(tmp_path / name, tmp_path / "cache", demo_dir, *extra)  # noqa: E731
    command = [sys.executable, "-c", PAUSING, str(BASELINE), *args("B")]

    pause_file = tmp_path / "paused"
    interrupted = subprocess.Popen(command, env=child_env(PAUSE_AT=str(KILL_IN_STEP), PAUSE_FILE=str(pause_file)),
                                   cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    uninterrupted = run_baseline(args("A"))  # meanwhile, on the other core
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    deadline = time.monotonic() + 120
    while not pause_file.exists():
        assert interrupted.poll() is None, interrupted.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(interrupted.pid, signal.SIGKILL)
    interrupted.communicate()
    assert interrupted.returncode == -signal.SIGKILL
    run_b = tmp_path / "B"
    assert [p.name for p in (run_b / "checkpoints").iterdir()] == [f"step_{CHECKPOINT_EVERY:07d}"]
    assert not (run_b / "adapter").exists()

    resumed = subprocess.run(command, env=child_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_b / 'checkpoints'}" in resumed.stderr

    a = load_file(tmp_path / "A" / "adapter" / "adapter_model.safetensors")
    b = load_file(run_b / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different
    losses = _losses(tmp_path / "A")
    assert [(key, step) for key, step, _ in losses] == [
        ("train/loss", 2), ("train/loss", 3), ("train/loss", 4), ("val/loss", 4), ("train/loss", 6),
        ("train/loss", 8), ("val/loss", 8),
    ]
    assert _losses(run_b) == losses  # exact float equality: every logged train and val loss
