"""The entry point every experiment script shares: presets, variants, CLI, then `train`.

An experiment file holds only its hypothesis (docstring), its base CONFIG and its VARIANTS (dicts of
dotted overrides); this module turns `--smoke`, `--variant V` and `--section.field value` flags into
one frozen RunConfig, so a local run and an Azure job of the same file run the very same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import tyro

from musicgen_lora.tracking.manifest import Launch, now_iso
from musicgen_lora.tracking.redact import install_log_redaction, redact
from musicgen_lora.training.config import SMOKE_OVERRIDES, RunConfig, apply_overrides

Variants = dict[str, dict[str, Any]]


def resolve_config(base: RunConfig, variants: Variants, argv: list[str], experiment: str, description: str = "") -> RunConfig:
    """Preset (--smoke) -> variant -> explicit flags, in that order of precedence."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--variant", default=base.variant)
    pre.add_argument("--smoke", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.variant not in variants:
        raise SystemExit(f"unknown variant {known.variant!r}; choose from: {', '.join(variants)}")
    default = apply_overrides(base, {"experiment": experiment, "variant": known.variant})
    if known.smoke:
        default = apply_overrides(default, SMOKE_OVERRIDES)
    default = apply_overrides(default, variants[known.variant])
    return tyro.cli(RunConfig, default=default, args=argv, description=description, prog=f"{experiment}.py")


def main(base: RunConfig, variants: Variants, *, script: str, description: str = "", argv: list[str] | None = None) -> int:
    """Parse the command line for the experiment in `script` and train; returns the exit code."""
    launch = Launch(Path(script), tuple(sys.argv[1:] if argv is None else argv), start_time=now_iso())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    cfg = resolve_config(base, variants, list(launch.argv), Path(script).stem, description)
    sys.argv[:] = redact(sys.argv)  # parsed: nothing that reads it later (W&B metadata) can copy a secret
    code = preflight(cfg)
    if code:
        return code
    if cfg.output_dir is not None and cfg.tracking.wandb != "disabled":
        # Inside an Azure ML job (which always passes --output-dir): the W&B key from Key Vault, or
        # offline W&B in the run directory. Outside Azure ML this changes nothing.
        from musicgen_lora.azure.secrets import configure_wandb_for_job

        configure_wandb_for_job(cfg.output_dir)
    try:
        from musicgen_lora.training.loop import (
            CONFIG_ERRORS,
            NonFiniteTrainingError,
            RunInterrupted,
            train,
        )

        try:
            result = train(cfg, launch=launch)
        except CONFIG_ERRORS as error:  # the message says what to change; a traceback would bury it
            print(f"error: {redact(str(error))}", file=sys.stderr)
            return 2
        except NonFiniteTrainingError as error:
            print(f"error: {redact(str(error))}", file=sys.stderr)
            return 1
        except RunInterrupted as stop:
            where = f"last checkpoint {stop.checkpoint}" if stop.checkpoint else "no checkpoint yet"
            print(f"interrupted ({where}); resume with: {resume_command(launch, stop.run_dir)}", file=sys.stderr)
            return 130
    except KeyboardInterrupt:  # before training started: nothing to resume
        print("interrupted before training started", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun / accelerate launch, one process speaks for the run
    if result.already_finished:
        print(f"{result.run_dir} is finished ({result.steps} steps); pass a larger --train.max-steps to train "
              "it further, or another --output-dir for a new run")
        return 0
    print(run_summary(result))
    return 0


def run_summary(result) -> str:
    """What a researcher wants to read when a run ends: losses against the base model, where the
    adapter and samples are, how to generate with it, where its W&B run is."""
    run_dir = result.run_dir
    lines = [f"done: {result.steps} steps" + (f", {result.skipped_steps} skipped (non-finite)" if result.skipped_steps else "")]
    if result.final_val_loss is not None:
        base = f" (base model {result.base_val_loss:.4f})" if result.base_val_loss is not None else ""
        lines.append(f"  val loss: final {result.final_val_loss:.4f}, best {result.best_val_loss:.4f} at step "
                     f"{result.best_step}{base}")
    from musicgen_lora.tracking.manifest import read_manifest
    from musicgen_lora.training.builders import precision_line

    precision = (read_manifest(run_dir) or {}).get("precision")
    if precision:
        lines.append(f"  precision: {precision_line(precision)}")
    lines.append(f"  adapter:  {run_dir / 'adapter'}" + (f" (best: {run_dir / 'adapter_best'})" if result.best_step else ""))
    samples = run_dir / "samples"
    if samples.is_dir():
        lines.append(f"  samples:  {samples} ({len(list(samples.glob('*.wav')))} WAV files)")
    lines.append(f"  generate: uv run musicgen-lora generate --adapter {shlex.quote(str(run_dir / 'adapter'))} "
                 "--prompt \"...\" --out outputs/sample.wav")
    wandb = _wandb_record(run_dir)
    if wandb.get("url"):
        lines.append(f"  W&B:      {wandb['url']}")
    elif wandb:
        lines.append(f"  W&B:      offline; upload with: uv run wandb sync {shlex.quote(str(run_dir / 'wandb'))}/offline-run-*")
    lines.append(f"run directory: {run_dir}")
    return "\n".join(lines)


def _wandb_record(run_dir: Path) -> dict:
    from musicgen_lora.tracking.trackers import WANDB_RUN_FILE

    path = run_dir / WANDB_RUN_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def resume_command(launch: Launch, run_dir: Path) -> str:
    """The command that continues `run_dir`: the same script and flags, with its --output-dir."""
    argv = list(redact(list(launch.argv)))
    if "--output-dir" not in argv and not any(arg.startswith("--output-dir=") for arg in argv):
        argv += ["--output-dir", str(run_dir)]
    script = str(launch.experiment_file) if launch.experiment_file else "experiments/01_baseline.py"
    return shlex.join(["uv", "run", script, *argv])


def preflight(cfg: RunConfig) -> int:
    """Option ranges, then the GPU; 0 when training may start. Runs before train() so a bad option
    or an unusable GPU leaves no run directory behind."""
    from musicgen_lora.tracking.gpu import GpuUnusableError, require_usable_gpu
    from musicgen_lora.training.validation import ConfigValueError, validate_run_config

    try:
        validate_run_config(cfg)
        require_usable_gpu(cfg.train.allow_cpu)
    except (ConfigValueError, GpuUnusableError) as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    return 0
