"""Issue 6.4: a run killed with SIGKILL after a checkpoint and resumed with the same command ends
bit-identical to the uninterrupted run: adapter tensors, and every logged loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import BASELINE, PAUSING, REPO_ROOT, child_env, quick_args, run_baseline

STEPS, CHECKPOINT_EVERY, KILL_IN_STEP = 8, 3, 5


def _losses(run_dir) -> list[tuple[str, int, float]]:
    """Every logged loss in file order: a record logged twice (before the kill and after) shows."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(key, r["step"], r[key]) for r in records for key in ("train/loss", "val/loss") if key in r]


def _records(run_dir) -> list[dict]:
    """metrics.jsonl without what depends on the clock (time, perf/*)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time" and not k.startswith("perf/")} for line in lines]


def _start_paused(command, pause_at: int, pause_file):
    """Start `command` (the PAUSING wrapper) and wait until it hangs in training step `pause_at`."""
    process = subprocess.Popen(command, env=child_env(PAUSE_AT=str(pause_at), PAUSE_FILE=str(pause_file)),
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process


def _wait_paused(process, pause_file) -> None:
    deadline = time.monotonic() + 180
    while not pause_file.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_and_resume_is_bit_identical(tmp_path, demo_dir, demo_cache):
    """Killed after a checkpoint (B) or before the first one (C): the same command ends with the
    uninterrupted run's adapter, bit for bit, and its metrics.jsonl (samples and generation metrics
    on, as by default)."""
    shutil.copytree(demo_cache, tmp_path / "cache")
    extra = ["--train.max-steps", str(STEPS), "--train.checkpoint-every", str(CHECKPOINT_EVERY),
             "--train.log-every", "2", "--train.eval-every", "4", "--data.val-fraction", "0.2",
             "--lora.dropout", "0.1",  # dropout draws on the RNG every step: its state must be restored
             "--sample.base-model", "--metrics.enabled", "--metrics.seconds", "0.04"]
    args = lambda name: quick_args(tmp_path / name, tmp_path / "cache", demo_dir, *extra)  # noqa: E731
    command = lambda name: [sys.executable, "-c", PAUSING, str(BASELINE), *args(name)]  # noqa: E731

    killed = {name: (_start_paused(command(name), at, tmp_path / f"paused_{name}"), tmp_path / f"paused_{name}")
              for name, at in (("B", KILL_IN_STEP), ("C", 2))}
    uninterrupted = run_baseline(args("A"), timeout=240)  # meanwhile, on the other core
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    for process, pause_file in killed.values():
        _wait_paused(process, pause_file)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL
    run_b, run_c = tmp_path / "B", tmp_path / "C"
    assert [p.name for p in (run_b / "checkpoints").iterdir()] == [f"step_{CHECKPOINT_EVERY:07d}"]
    assert not (run_b / "adapter").exists() and not (run_c / "checkpoints").exists()
    # The dead run's lock file is still there, naming it: the next run takes it over.
    assert json.loads((run_b / "run.lock").read_text())["pid"] == killed["B"][0].pid

    for run_dir in (run_b, run_c):
        resumed = subprocess.run(command(run_dir.name), env=child_env(), cwd=REPO_ROOT, capture_output=True,
                                 text=True, timeout=240)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (f"resumed from {run_dir / 'checkpoints'}" in resumed.stderr) == (run_dir == run_b)
        a = load_file(tmp_path / "A" / "adapter" / "adapter_model.safetensors")
        b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and len(a) > 0
        different = [name for name in a if not torch.equal(a[name], b[name])]
        assert not different, different
        assert _records(run_dir) == _records(tmp_path / "A")  # no record twice, none torn, none lost
    losses = _losses(tmp_path / "A")
    assert [(key, step) for key, step, _ in losses] == [
        ("val/loss", 0), ("train/loss", 2), ("train/loss", 3), ("train/loss", 4), ("val/loss", 4), ("train/loss", 6),
        ("train/loss", 8), ("val/loss", 8),
    ]
    assert _losses(run_b) == losses  # exact float equality: every logged train and val loss
    assert any("gen/fad" in r for r in _records(run_b))
