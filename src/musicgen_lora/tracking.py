"""Run directory and trackers. One small interface; the JSONL tracker always runs and is the local
source of truth; W&B mirrors it. Only the main process tracks (others get NullTracker)."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_audio(self, key: str, audio: np.ndarray, sample_rate: int, captions: list[str], step: int) -> None: ...

    def log_adapter(self, path: Path, name: str) -> None: ...

    def finish(self, outcome: str) -> None: ...


class NullTracker:
    def log(self, metrics, step):
        pass

    def log_audio(self, key, audio, sample_rate, captions, step):
        pass

    def log_adapter(self, path, name):
        pass

    def finish(self, outcome):
        pass


class JsonlTracker:
    """metrics.jsonl: one JSON object per log call with `step` and wall `time` (seconds since start)."""

    def __init__(self, path: Path):
        self.path = path
        self.start = time.time()
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

    def finish(self, outcome):
        self._handle.close()


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
        for tracker in self.trackers:
            tracker.log_audio(key, audio, sample_rate, captions, step)

    def log_adapter(self, path, name):
        for tracker in self.trackers:
            tracker.log_adapter(path, name)

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
