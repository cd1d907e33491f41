"""The entry point every experiment script shares: presets, variants, CLI, then `train`.

An experiment file holds only its hypothesis (docstring), its base CONFIG and its VARIANTS (dicts of
dotted overrides); this module turns `--smoke`, `--variant V` and `--section.field value` flags into
one frozen RunConfig, so a local run and an Azure job of the same file run the very same code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import tyro

from musicgen_lora.config import SMOKE_OVERRIDES, RunConfig, apply_overrides
from musicgen_lora.model import ModelLoadError

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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    experiment = Path(script).stem
    cfg = resolve_config(base, variants, list(sys.argv[1:] if argv is None else argv), experiment, description)
    from musicgen_lora.train import train

    try:
        result = train(cfg)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"run directory: {result.run_dir}")
    return 0
