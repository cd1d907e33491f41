"""manifest.json: lock hashes, git state, versions, redaction, and its start/end life cycle."""

from __future__ import annotations

import hashlib
import json
import subprocess

from musicgen_lora.tracking.manifest import (
    Launch,
    ManifestTracker,
    build_manifest,
    find_repo_root,
    git_state,
)
from musicgen_lora.training.config import RunConfig


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def test_manifest_fields(repo_root, monkeypatch):
    monkeypatch.setenv("SOME_API_KEY", "abcdef-secret-987")
    cfg = RunConfig(experiment="02_lora_rank", variant="r8", seed=7)
    launch = Launch(repo_root / "experiments" / "01_baseline.py", ("--seed", "7", "--wandb-key", "abcdef-secret-987"), "2025-01-01T00:00:00+00:00")
    manifest = build_manifest(cfg, launch, world_size=2, resumed_step=5)

    assert manifest["lock_sha256"]["uv.lock"] == hashlib.sha256((repo_root / "uv.lock").read_bytes()).hexdigest()
    assert manifest["lock_sha256"]["pyproject.toml"] == hashlib.sha256((repo_root / "pyproject.toml").read_bytes()).hexdigest()
    assert set(manifest["lock_sha256"]) == {"uv.lock", "pyproject.toml", "flake.lock"}
    assert manifest["experiment_file"] == "experiments/01_baseline.py"
    assert (manifest["experiment"], manifest["variant"], manifest["seed"]) == ("02_lora_rank", "r8", 7)
    assert manifest["world_size"] == 2 and manifest["resumed_step"] == 5
    assert manifest["start_time"] == "2025-01-01T00:00:00+00:00" and manifest["outcome"] == "running"
    assert manifest["argv"] == ["--seed", "7", "--wandb-key", "***"]
    assert "abcdef-secret-987" not in json.dumps(manifest)
    runtime = manifest["runtime"]
    assert {"python", "torch", "cuda", "cudnn", "device", "hostname"} <= set(runtime)
    assert runtime["device"]
    git = manifest["git"]
    head = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git["source"] == "git" and git["commit"] == head and isinstance(git["dirty"], bool)
    doctor = manifest["doctor"]
    assert doctor["lock_sha256"] == manifest["lock_sha256"]["uv.lock"]
    assert isinstance(doctor["ok"], bool) and isinstance(doctor["failed"], list)


def test_dirty_flag_and_diff_stat(tmp_path):
    (tmp_path / "uv.lock").write_text("lock\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    assert find_repo_root(tmp_path / "train.py") == tmp_path.resolve()
    clean = git_state(tmp_path)
    assert clean["dirty"] is False and clean["diff_stat"] == "" and len(clean["commit"]) == 40

    (tmp_path / "train.py").write_text("print(2)\n")
    dirty = git_state(tmp_path)
    assert dirty["dirty"] is True and dirty["commit"] == clean["commit"]
    assert "train.py" in dirty["diff_stat"] and dirty["changed_paths"] == ["train.py"]

    _git(tmp_path, "checkout", "--", "train.py")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_state(tmp_path)["dirty"] is True  # an untracked file is in no commit either


def test_git_state_from_the_launcher_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICGEN_LORA_GIT_COMMIT", "a" * 40)
    monkeypatch.setenv("MUSICGEN_LORA_GIT_DIRTY", "false")
    state = git_state(tmp_path)  # an Azure code snapshot has no .git
    assert state == {"source": "environment", "commit": "a" * 40, "dirty": False, "diff_stat": None, "changed_paths": None}


def test_manifest_tracker_life_cycle(tmp_path):
    path = tmp_path / "manifest.json"
    tracker = ManifestTracker(path, {"start_time": "2025-01-01T00:00:00+00:00", "outcome": "running", "resumed_step": 0})
    assert json.loads(path.read_text())["outcome"] == "running"
    tracker.log({"train/loss": 1.0}, 12)
    tracker.finish("failed")
    first = json.loads(path.read_text())
    assert first["outcome"] == "failed" and first["end_time"] and first["last_step"] == 12 and first["duration_s"] > 0

    resumed = ManifestTracker(path, {"start_time": "2025-01-02T00:00:00+00:00", "outcome": "running", "resumed_step": 10})
    resumed.finish("completed")
    final = json.loads(path.read_text())
    assert final["outcome"] == "completed" and final["last_step"] == 10
    assert final["previous_attempts"] == [first]
