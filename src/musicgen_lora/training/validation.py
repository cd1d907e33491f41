"""Option checks that run right after the command line is parsed, before any heavy work.

A value out of range used to surface minutes later as a traceback deep in torch or peft (or not at
all: zero steps trained "successfully"). Every check here names the option as the user types it
(`--train.max-steps`) and the allowed range, in one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from musicgen_lora.data.groups import check_group_by
from musicgen_lora.training.config import RunConfig


class ConfigValueError(ValueError):
    """An option is out of its allowed range; the one-line message names the option and the range."""


def flag(dotted: str) -> str:
    """`train.max_steps` -> `--train.max-steps`, the spelling tyro gives the option."""
    return "--" + dotted.replace("_", "-")


def _fail(option: str, rule: str, value) -> None:
    raise ConfigValueError(f"{flag(option)} must be {rule} (got {value!r})")


def at_least(option: str, value: int | float, minimum: int | float) -> None:
    if value < minimum:
        _fail(option, f">= {minimum}", value)


def positive(option: str, value: float) -> None:
    # `not value > 0` also rejects NaN, which every comparison lets through.
    if not (value > 0 and math.isfinite(value)):
        _fail(option, "a finite number > 0", value)


def within(option: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    """low <= value <= high (or < high when `high_open`)."""
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        _fail(option, f"in [{low:g}, {high:g}{')' if high_open else ']'}", value)


def not_empty(option: str, values: Iterable) -> None:
    if not tuple(values):
        raise ConfigValueError(f"{flag(option)} needs at least one value")


def folder_or_missing(option: str, path: Path | None) -> None:
    """An output folder may be new, but never an existing file."""
    if path is not None and Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
        raise ConfigValueError(f"{flag(option)} {path} is an existing file; give a folder (new or existing)")


def validate_run_config(cfg: RunConfig) -> None:
    """Raise ConfigValueError for the first option out of range; checks only the values themselves
    (what needs the model or the data, such as batch size vs clip count, is checked by train)."""
    d, lora, o, t, s, m = cfg.data, cfg.lora, cfg.optim, cfg.train, cfg.sample, cfg.metrics
    folder_or_missing("output_dir", cfg.output_dir)
    folder_or_missing("data.cache_dir", d.cache_dir)
    if d.dataset is not None and d.path is not None:
        raise ConfigValueError("--data.dataset and --data.path are alternatives: pass only one of them")
    positive("data.window_seconds", d.window_seconds)
    within("data.val_fraction", d.val_fraction, 0, 1, high_open=True)  # 1 would leave nothing to train on
    try:
        check_group_by(d.group_by)
    except ValueError as error:
        raise ConfigValueError(str(error)) from None
    within("data.condition_dropout", d.condition_dropout, 0, 1)
    within("data.chroma_dropout", d.chroma_dropout, 0, 1)
    at_least("data.num_workers", d.num_workers, 0)
    at_least("data.encode_batch_size", d.encode_batch_size, 1)
    at_least("data.demo_loops_per_style", d.demo_loops_per_style, 1)

    at_least("lora.r", lora.r, 1)
    positive("lora.alpha", lora.alpha)
    within("lora.dropout", lora.dropout, 0, 1, high_open=True)  # 1 zeroes the LoRA input: nothing is learned
    not_empty("lora.targets", lora.targets)

    positive("optim.lr", o.lr)
    at_least("optim.weight_decay", o.weight_decay, 0)
    for beta in o.betas:
        within("optim.betas", beta, 0, 1, high_open=True)
    at_least("optim.warmup_steps", o.warmup_steps, 0)
    within("optim.min_lr_ratio", o.min_lr_ratio, 0, 1)
    at_least("optim.max_grad_norm", o.max_grad_norm, 0)

    for name in ("max_steps", "grad_accum_steps", "log_every", "keep_checkpoints", "max_bad_steps", "eval_max_windows"):
        at_least(f"train.{name}", getattr(t, name), 1)
    if t.batch_size != "auto":
        at_least("train.batch_size", t.batch_size, 1)
    at_least("train.eval_every", t.eval_every, 0)  # 0: only at the end
    at_least("train.checkpoint_every", t.checkpoint_every, 0)  # 0: never

    positive("sample.seconds", s.seconds)
    positive("sample.guidance", s.guidance)
    for scale in s.extra_guidance:
        positive("sample.extra_guidance", scale)
    at_least("sample.top_k", s.top_k, 0)  # 0 turns top-k filtering off
    positive("sample.temperature", s.temperature)

    not_empty("metrics.seeds", m.seeds)
    if m.seconds is not None:
        positive("metrics.seconds", m.seconds)
    at_least("metrics.reference_clips", m.reference_clips, 1)
    positive("metrics.reference_seconds", m.reference_seconds)


# ---- generation length ---------------------------------------------------------------------------


def check_generation_seconds(option: str, seconds: float, *, maximum: float, model: str) -> None:
    if not (0 < seconds <= maximum):
        raise ConfigValueError(
            f"{option} must be in (0, {maximum:g}] for {model} (its decoder's max_position_embeddings at its "
            f"frame rate; for longer audio generate several clips and join them) (got {seconds!r})"
        )
