"""Run directory and trackers. One small interface; the JSONL tracker always runs and is the local
source of truth; W&B mirrors it. Only the main process tracks (others get NullTracker)."""

from __future__ import annotations

import json
import math
import netrc
import os
import random
import re
import string
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np

from musicgen_lora.tracking.redact import redact


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_audio(self, key: str, audio: np.ndarray, sample_rate: int, captions: list[str], step: int) -> None: ...

    def log_adapter(self, path: Path, name: str) -> None: ...

    def record(self, fields: dict) -> None:
        """Facts about the run that are no time series (adapters kept, resume changes)."""

    def finish(self, outcome: str) -> None: ...


class NullTracker:
    def log(self, metrics, step):
        pass

    def log_audio(self, key, audio, sample_rate, captions, step):
        pass

    def log_adapter(self, path, name):
        pass

    def record(self, fields):
        pass

    def finish(self, outcome):
        pass


class JsonlTracker:
    """metrics.jsonl: one JSON object per log call with `step` and wall `time` (seconds since start)."""

    def __init__(self, path: Path):
        self.path = path
        # A resumed run continues the clock where its (truncated) metrics file stops.
        self.start = time.time() - _last_time(path)
        # Kept open for the whole run (closed in finish); append: a resumed run continues the file.
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def log(self, metrics, step):
        record = {"step": step, "time": round(time.time() - self.start, 3)}
        record.update({k: _json_number(v) for k, v in metrics.items()})
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def log_audio(self, key, audio, sample_rate, captions, step):
        pass  # the WAV files in samples/ are the local record

    def log_adapter(self, path, name):
        pass

    def record(self, fields):
        pass

    def finish(self, outcome):
        self._handle.close()


def _last_time(path: Path) -> float:
    records = _complete_records(path)
    return float(records[-1].get("time", 0.0)) if records else 0.0


def _complete_records(path: Path) -> list[dict]:
    """The file's whole records; a line cut short by a kill (or otherwise unreadable) is left out."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int | float):
            records.append(record)
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the whole records up to `step` (-1: none), before a resumed run logs again.

    Records after the checkpoint a run resumes from are logged again by the resumed run, and a run
    that starts over logs everything again, so the file never holds a record twice or a torn line."""
    if not path.exists():
        return
    from musicgen_lora.helpers import atomic_write_bytes

    kept = [record for record in _complete_records(path) if record["step"] <= step]
    atomic_write_bytes(path, "".join(json.dumps(record) + "\n" for record in kept).encode())


def _json_number(value):
    value = float(value) if isinstance(value, int | float | np.floating | np.integer) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible
    return value


class CompositeTracker:
    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, metrics, step):
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_audio(self, key, audio, sample_rate, captions, step):
        captions = redact(list(captions))  # prompts come from flags and metadata: no secret leaves
        for tracker in self.trackers:
            tracker.log_audio(key, audio, sample_rate, captions, step)

    def log_adapter(self, path, name):
        for tracker in self.trackers:
            tracker.log_adapter(path, name)

    def record(self, fields):
        for tracker in self.trackers:
            tracker.record(fields)

    def finish(self, outcome):
        for tracker in self.trackers:
            tracker.finish(outcome)


def run_name(experiment: str, variant: str, seed: int, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{experiment}-{variant}-s{seed}-{stamp}"


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- Weights & Biases ---------------------------------------------------------------------------

WANDB_STEP = "global_step"
"""Every W&B metric is plotted against this key, so train/, val/, perf/ and samples share one axis
(and a resumed run can re-log steps W&B's own monotonic _step has passed)."""
WANDB_RUN_ID_FILE = "wandb_run_id"
"""In the run directory: the W&B run id, so a resumed run continues the same W&B run."""
WANDB_RUN_FILE = "wandb_run.json"
"""In the run directory: id, mode, project, entity and URL of the W&B run (read by reports)."""


def wandb_credentials_present() -> bool:
    """A W&B API key in the environment, or a `wandb login` entry in the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(setting: str) -> str:
    """online / offline / disabled. auto: $WANDB_MODE when set (the Azure job sets offline when it
    has no key), else online with credentials, offline without."""
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    if env_mode == "disabled":  # W&B's own global off switch wins over any flag or preset
        return "disabled"
    if setting != "auto":
        return setting
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    if env_mode == "dryrun":
        return "offline"
    return "online" if wandb_credentials_present() else "offline"


def _new_run_id() -> str:
    """8 random lowercase letters and digits, like W&B's own ids (not from the seeded RNGs)."""
    return "".join(random.SystemRandom().choices(string.ascii_lowercase + string.digits, k=8))


def _artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:128]


def _wandb_audio_array(clip: np.ndarray) -> np.ndarray:
    """(channels, samples) -> what wandb.Audio writes: (samples,) mono or (samples, channels)."""
    clip = np.asarray(clip, dtype=np.float32)
    return clip[0] if clip.shape[0] == 1 else clip.T


class WandbTracker:
    """Mirrors the JSONL metrics to a W&B run (online, or offline into run_dir/wandb for a later
    `wandb sync`), with audio samples and the final adapter as a model artifact."""

    def __init__(self, run_dir: Path, *, mode: str, project: str, entity: str | None, group: str,
                 job_type: str, name: str, tags: list[str], config: dict):
        import wandb

        self.wandb = wandb
        self.run_dir = Path(run_dir)
        id_file = self.run_dir / WANDB_RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else _new_run_id()
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            id=run_id, resume="allow", mode=mode, dir=str(self.run_dir), project=project, entity=entity,
            group=group, job_type=job_type, name=name, tags=[tag[:64] for tag in tags], config=config,
        )
        self.run.define_metric(WANDB_STEP)
        self.run.define_metric("*", step_metric=WANDB_STEP)
        record = {"id": run_id, "mode": mode, "project": project, "entity": entity or self.run.entity or None,
                  "name": name, "url": self.run.url if mode == "online" else None}
        (self.run_dir / WANDB_RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")

    def log(self, metrics, step):
        self.run.log({**metrics, WANDB_STEP: step})

    def log_audio(self, key, audio, sample_rate, captions, step):
        clips = [
            self.wandb.Audio(_wandb_audio_array(clip), sample_rate=sample_rate, caption=caption)
            for clip, caption in zip(audio, captions, strict=True)
        ]
        self.run.log({key: clips, WANDB_STEP: step})

    def log_adapter(self, path, name):
        path = Path(path)
        config_file = path / "adapter_config.json"
        metadata = json.loads(config_file.read_text()) if config_file.exists() else {}
        # Named after the W&B run: unique where the run directory's name is not (an Azure job's output).
        artifact = self.wandb.Artifact(_artifact_name(f"adapter-{self.run.name}"), type="model", metadata=metadata)
        artifact.add_dir(str(path))
        self.run.log_artifact(artifact, aliases=["latest", "final"])

    def record(self, fields):
        self.run.summary.update(fields)

    def finish(self, outcome):
        self.run.summary["outcome"] = outcome
        self.run.finish(exit_code=0 if outcome == "completed" else 1)
