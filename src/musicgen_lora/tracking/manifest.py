"""manifest.json: everything that produced a run, so a result can be traced and reproduced later.

Written when the run starts (outcome "running") and rewritten when it ends (outcome "completed" or
"failed", with the end time) by ManifestTracker. Holds: sha256 of uv.lock / pyproject.toml /
flake.lock, git commit + dirty flag + diff stat, the command line (secrets redacted), Python /
torch / CUDA / cuDNN versions, the device, host, world size, seed, experiment file, times, outcome
and the `doctor` report. A resumed run keeps the manifests of its earlier attempts.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from musicgen_lora.helpers import atomic_write_json, file_sha256
from musicgen_lora.tracking.redact import redact

LOCK_FILES = ("uv.lock", "pyproject.toml", "flake.lock")
# The Azure launcher uploads the code without .git; it passes the commit in these instead.
GIT_COMMIT_VAR = "MUSICGEN_LORA_GIT_COMMIT"
GIT_DIRTY_VAR = "MUSICGEN_LORA_GIT_DIRTY"
MAX_LISTED_PATHS = 50


@dataclass(frozen=True)
class Launch:
    """How the run was started: the experiment script and the arguments it parsed."""

    experiment_file: Path | None = None
    argv: tuple[str, ...] = ()
    start_time: str | None = None
    """When the process started (ISO 8601 UTC); None: when the manifest is first written."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def find_repo_root(*starts: Path) -> Path | None:
    """The first folder holding uv.lock, walking up from each start (a file or folder) in turn."""
    for start in starts:
        folder = Path(start).resolve()
        folder = folder if folder.is_dir() else folder.parent
        for candidate in (folder, *folder.parents):
            if (candidate / "uv.lock").is_file():
                return candidate
    return None


def lock_hashes(root: Path | None) -> dict[str, str | None]:
    """sha256 of each lock file at the repo root (None for a missing one)."""
    return {
        name: file_sha256(root / name) if root and (root / name).is_file() else None
        for name in LOCK_FILES
    }


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def git_state(root: Path | None) -> dict:
    """Commit, dirty flag (modified, staged or untracked files), `git diff --stat HEAD`."""
    try:
        if root is None:
            raise FileNotFoundError("no repository root")
        commit = _git(root, "rev-parse", "--verify", "HEAD").strip()
        status = [line for line in _git(root, "status", "--porcelain=v1", "--untracked-files=all").splitlines() if line]
        diff_stat = _git(root, "diff", "--stat", "HEAD").strip()
    except (OSError, subprocess.SubprocessError) as error:
        commit = os.environ.get(GIT_COMMIT_VAR)
        dirty = os.environ.get(GIT_DIRTY_VAR)
        return {
            "source": "environment" if commit else "unavailable",
            "commit": commit,
            "dirty": None if dirty is None else dirty.lower() == "true",
            "diff_stat": None,
            "changed_paths": None,
            **({} if commit else {"error": f"{type(error).__name__}: {error}"}),
        }
    return {
        "source": "git",
        "commit": commit,
        "dirty": bool(status),
        "diff_stat": diff_stat,
        "changed_paths": [line[3:] for line in status[:MAX_LISTED_PATHS]],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_info() -> dict:
    import torch

    from musicgen_lora.tracking.doctor import format_cudnn

    cuda = torch.cuda.is_available()
    cudnn = format_cudnn(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU: {cpu_name()}",
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
    }


def doctor_report(root: Path | None) -> dict | None:
    """`musicgen-lora doctor`'s verdict on this environment versus uv.lock (None: no lock to check)."""
    if root is None or not (root / "uv.lock").is_file():
        return None
    from musicgen_lora.tracking.doctor import run_checks

    try:
        report = run_checks(root / "uv.lock")
    except Exception as error:  # an unreadable lock must not stop the run; the manifest says so
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {
        "ok": report.ok,
        "lock_sha256": report.lock_sha256,
        "failed": [{"name": check.name, "reason": check.reason} for check in report.failed],
        "report": report.to_dict(),
    }


def build_manifest(cfg, launch: Launch, *, world_size: int, resumed_step: int = 0) -> dict:
    """The manifest of a run starting now (outcome "running"). `cfg` is the RunConfig."""
    experiment_file = launch.experiment_file.resolve() if launch.experiment_file else None
    root = find_repo_root(*(p for p in (experiment_file, Path.cwd()) if p is not None))
    if experiment_file and root and experiment_file.is_relative_to(root):
        experiment_file = experiment_file.relative_to(root)
    manifest = {
        "experiment": cfg.experiment,
        "variant": cfg.variant,
        "seed": cfg.seed,
        "smoke": cfg.smoke,
        "experiment_file": str(experiment_file) if experiment_file else None,
        "command": shlex.join(sys.orig_argv),
        "argv": list(launch.argv),
        "cwd": str(Path.cwd()),
        "repo_root": str(root) if root else None,
        "lock_sha256": lock_hashes(root),
        "git": git_state(root),
        "runtime": runtime_info(),
        "world_size": world_size,
        "resumed_step": resumed_step,
        "start_time": launch.start_time or now_iso(),
        "end_time": None,
        "outcome": "running",
        "doctor": doctor_report(root),
        "generation_metrics": generation_metrics(cfg),
    }
    return redact(manifest)


def generation_metrics(cfg) -> dict | None:
    """What the gen/* metrics measure: the embedding of each FAD and the reference set (None: off)."""
    m = getattr(cfg, "metrics", None)
    if m is None or not m.enabled:
        return None
    latent = (f"EnCodec encoder latents of {cfg.model.name} ({m.fad_pooling} pooling)" if m.fad_embedding == "encodec"
              else f"CLAP {m.clap_model} audio embeddings")
    return {
        "gen/fad": {"embedding": latent, "comparable": "across runs of this project only"},
        "gen/fad_clap": {"embedding": f"CLAP {m.clap_model} audio embeddings (48 kHz, 16-bit, one per clip, first 10 s)",
                         "comparable": "with published CLAP FAD of the same checkpoint", "needs": "CLAP weights"},
        "reference": (f"up to {m.reference_clips} held-out clips (the training clips when none are held out), first "
                      f"{m.reference_seconds:g} s of each, decoded by the model's codec from the token cache"),
    }


def read_manifest(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


class ManifestTracker:
    """Writes manifest.json when created and stamps end time and outcome in `finish`.

    A run directory that already has a manifest (a resumed run) keeps it under previous_attempts."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        previous = read_manifest(self.path.parent) if self.path.name == "manifest.json" else None
        if previous:
            attempts = previous.pop("previous_attempts", [])
            manifest = {**manifest, "previous_attempts": [*attempts, previous]}
        self.manifest = manifest
        self.last_step = manifest.get("resumed_step", 0)
        atomic_write_json(self.path, self.manifest)

    def log(self, metrics, step):
        self.last_step = max(self.last_step, step)

    def log_audio(self, key, audio, sample_rate, captions, step):
        pass

    def log_adapter(self, path, name):
        pass

    def record(self, fields: dict) -> None:
        self.manifest.update(redact(fields))
        atomic_write_json(self.path, self.manifest)

    def finish(self, outcome: str) -> None:
        start = datetime.fromisoformat(self.manifest["start_time"])
        end = datetime.now(UTC)
        self.manifest.update(
            end_time=end.isoformat(timespec="seconds"),
            duration_s=round((end - start).total_seconds(), 1),
            outcome=outcome,
            last_step=self.last_step,
        )
        atomic_write_json(self.path, self.manifest)
