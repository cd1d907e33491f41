"""Issue 11.5, 11.7 (failed start), 11.12: one run per run directory, Ctrl-C ends a run cleanly with
the command that resumes it, and a start refused before training leaves no run directory behind."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import BASELINE, PAUSING, REPO_ROOT, child_env, quick_args, run_baseline


def _sigint_as_at_a_terminal() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and children
    # inherit that: a CI runner launched so made this run deaf to the Ctrl-C the test sends.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_second_run_is_refused_and_ctrl_c_says_how_to_resume(tmp_path, demo_dir, demo_cache):
    run_dir = tmp_path / "run"
    shutil.copytree(demo_cache, tmp_path / "cache")
    args = quick_args(run_dir, tmp_path / "cache", demo_dir, "--train.max-steps", "6", "--train.checkpoint-every", "2")
    pause_file = tmp_path / "paused"
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSING, str(BASELINE), *args], env=child_env(PAUSE_AT="4", PAUSE_FILE=str(pause_file)),
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_as_at_a_terminal,
    )
    deadline = time.monotonic() + 120
    while not pause_file.exists():
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)

    second = run_baseline(args)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"run directory {run_dir} is in use by process {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr

    os.kill(first.pid, signal.SIGINT)  # what Ctrl-C sends
    try:
        _, stderr = first.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        first.kill()  # leave no paused run behind
        first.communicate()
        raise
    assert first.returncode == 130
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted (last checkpoint {run_dir / 'checkpoints' / 'step_0000002'}); resume with: uv run ")
    assert json.loads((run_dir / "manifest.json").read_text())["outcome"] == "interrupted"

    # The printed command resumes the run (run here with this interpreter instead of `uv run`).
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[:2] == ["uv", "run"] and command[command.index("--output-dir") + 1] == str(run_dir)
    resumed = subprocess.run([sys.executable, *command[2:]], env=child_env(), cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_0000002'}" in resumed.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["outcome"] == "completed"


def test_a_refused_start_leaves_no_run_directory(tmp_path, demo_dir, demo_cache):
    run_dir = tmp_path / "run"
    shutil.copytree(demo_cache, tmp_path / "cache")
    refused = run_baseline(quick_args(run_dir, tmp_path / "cache", demo_dir, "--lora.targets", "no_such_proj"))
    assert refused.returncode == 2
    assert "no_such_proj" in refused.stderr and "Traceback" not in refused.stderr
    assert not run_dir.exists()
