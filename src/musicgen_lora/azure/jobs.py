"""Follow up on submitted jobs: status, logs, the run directory, and offline W&B runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from musicgen_lora.azure.job import RUN_DIR_OUTPUT

if TYPE_CHECKING:
    from azure.ai.ml import MLClient


def describe_job(client: MLClient, name: str) -> str:
    found = client.jobs.get(name)
    rows = [
        ("job", found.name),
        ("display name", found.display_name),
        ("status", found.status),
        ("experiment", found.experiment_name),
        ("compute", found.compute),
        ("created", getattr(found.creation_context, "created_at", None)),
        ("studio", found.studio_url),
    ]
    rows += [(f"tag {key}", value) for key, value in sorted((found.tags or {}).items())]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows if value is not None)


def stream_logs(client: MLClient, name: str) -> None:
    """Print the job's output as it runs; returns when the job ends."""
    client.jobs.stream(name)


def download_run_dir(client: MLClient, name: str, destination: Path) -> Path:
    """Download the job's run directory so that `destination` *is* that run directory.

    Azure ML puts a named output under <path>/named-outputs/<name>/; this unwraps it, so the
    result is ready for `musicgen-lora report`.
    """
    destination = destination.resolve()
    if destination.exists() and not destination.is_dir():
        raise FileExistsError(f"--to {destination} is an existing file; give a folder (new or empty)")
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} exists and is not empty")
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Staged next to the destination, so the final move is a rename on the same filesystem.
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".download-") as staging:
        client.jobs.download(name, download_path=staging, output_name=RUN_DIR_OUTPUT)
        downloaded = Path(staging) / "named-outputs" / RUN_DIR_OUTPUT
        if not downloaded.is_dir():
            raise FileNotFoundError(
                f"job {name} has no {RUN_DIR_OUTPUT!r} output to download (did it start?)"
            )
        if destination.exists():
            destination.rmdir()
        shutil.move(str(downloaded), str(destination))
    return destination


def offline_wandb_runs(run_dir: Path) -> list[Path]:
    """W&B offline run folders under a run directory (<run_dir>/wandb/offline-run-*)."""
    return sorted(path for path in run_dir.rglob("offline-run-*") if path.is_dir())


def sync_wandb_runs(runs: list[Path]) -> int:
    """Upload offline W&B runs with `wandb sync`; returns its exit code. Needs a W&B login."""
    command = [sys.executable, "-m", "wandb", "sync", *(str(run) for run in runs)]
    return subprocess.run(command, check=False).returncode
