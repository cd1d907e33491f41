"""What a run may change when it resumes in an existing run directory.

A resumed run continues the record of the run before it (metrics, checkpoints, manifest), so a
setting that changes what is trained (model, data, LoRA, windows, seed, batch, optimizer, schedule)
would make that record false, or crash on a checkpoint of another shape: it is refused. Settings
that only change how long, how often or where things are logged are allowed and recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from musicgen_lora.helpers import flatten

CONFIG_FILE = "config.json"

ALLOWED_CHANGES = (
    "output_dir",
    "smoke",
    "train.max_steps",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.max_bad_steps",
    "train.resume",
    "train.allow_cpu",
    "data.num_workers",
    "data.cache_dir",
    "model.compile",
    "metrics.enabled",
    "metrics.clap",
    "sample.",
    "tracking.",
)
"""Dotted config fields (or whole sections, ending in '.') a resumed run may change."""


class ResumeConfigError(ValueError):
    """The resumed run's configuration differs from its run directory's in what it trains."""


LEGACY_VALUES = {"data.group_by": "file"}
"""Fields added later, with the value that reproduces what a run made before them did (the
split was by file): such a run resumes with that value, and is refused with another."""


def config_changes(previous: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (previous value, current value)} for every field that differs."""
    # A field the old config.json lacks was added since: the run behaved as its default (or as
    # LEGACY_VALUES says, where the default changed behaviour).
    old = {**_defaults(), **LEGACY_VALUES, **flatten(previous)}
    new = flatten(current)
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)}


def _defaults() -> dict[str, Any]:
    from musicgen_lora.training.config import RunConfig, to_dict

    return flatten(to_dict(RunConfig()))


def is_allowed(field: str) -> bool:
    return any(field == allowed or (allowed.endswith(".") and field.startswith(allowed)) for allowed in ALLOWED_CHANGES)


def check_resume_config(run_dir: Path, current: dict) -> dict[str, tuple[Any, Any]]:
    """Compare `current` (the redacted config dict) with the run directory's config.json.

    Returns the allowed changes (to record in the manifest); raises ResumeConfigError naming every
    refused field and how to start a new run instead."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError:
        previous = {}  # a config.json cut short by a kill: nothing to compare, checkpoints decide
    changes = config_changes(previous, current) if previous else {}
    refused = {key: change for key, change in changes.items() if not is_allowed(key)}
    if refused:
        listed = "; ".join(f"--{key.replace('_', '-')} {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ResumeConfigError(
            f"{run_dir} holds a run trained with other settings, so it cannot resume with: {listed}. "
            "Start a new run with another --output-dir (or leave out --output-dir for a fresh one)."
        )
    return changes


def change_record(changes: dict[str, tuple[Any, Any]]) -> dict[str, dict[str, Any]]:
    return {key: {"previous": old, "now": new} for key, (old, new) in changes.items()}
