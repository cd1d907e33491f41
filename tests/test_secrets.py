"""Issue 6.8: values of environment variables named like KEY, TOKEN, SECRET or PASSWORD never appear
in what a run writes (config.json, manifest.json, metrics.jsonl, W&B files, anything in the run
directory) nor in its stdout/stderr, even when one is also passed on the command line."""

from __future__ import annotations

import secrets
import shutil

import pytest

from conftest import child_env, quick_args, run_baseline


@pytest.mark.slow
def test_a_run_writes_no_secret(tmp_path, demo_dir, demo_cache):
    values = {name: secrets.token_hex(16) for name in ("WANDB_API_KEY", "MY_TOKEN", "DB_PASSWORD", "AZURE_CLIENT_SECRET")}
    shutil.copytree(demo_cache, tmp_path / "cache")
    run_dir = tmp_path / "run"
    args = quick_args(run_dir, tmp_path / "cache", demo_dir, "--train.max-steps", "2",
                      "--tracking.wandb", "offline",  # W&B files are written too, and scanned
                      "--data.caption-override", f"drums {values['MY_TOKEN']}")  # a secret on the command line
    done = run_baseline(args, env=child_env(WANDB_MODE="offline", WANDB_SILENT="true", **values))
    assert done.returncode == 0, done.stderr[-3000:]

    written = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    names = {p.relative_to(run_dir).as_posix() for p in written}
    assert {"config.json", "manifest.json", "metrics.jsonl"} <= names
    assert any("wandb" in name for name in names)
    logs = (done.stdout + done.stderr).encode()
    for name, value in values.items():
        assert value.encode() not in logs, f"{name} in the logs"
        leaks = sorted(p.relative_to(run_dir).as_posix() for p, content in written.items() if value.encode() in content)
        assert not leaks, f"{name} written to {leaks}"
    assert b"drums ***" in (run_dir / "manifest.json").read_bytes()  # the command line is kept, redacted
