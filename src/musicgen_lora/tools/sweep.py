"""`musicgen-lora sweep`: every variant x seed of an experiment, locally in sequence or on Azure ML.

Locally each run is its own process (`python experiments/NN_name.py --variant V --seed S
--output-dir ROOT/NN_name/...`), so no state leaks between runs and a crash ends only that run.
With `--azure`, the runs go to the Azure launcher (`musicgen-lora azure submit`) instead.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from musicgen_lora.helpers import load_experiment, require_folder
from musicgen_lora.tracking.trackers import run_name

PROG = "musicgen-lora sweep"


@dataclass(frozen=True)
class SweepArgs:
    """Run every variant x seed of an experiment, one process per run, one after the other.

    Flags after `--` go to every run verbatim, e.g. `musicgen-lora sweep experiments/02_lora_rank.py
    --seeds 0 1 --smoke -- --train.max-steps 20`. `--azure` submits the runs to Azure ML instead;
    the flags between `--azure` and `--` are the launcher's (see `musicgen-lora azure submit
    --help`), e.g. `--azure --compute gpu-a100 --data azureml:loops:1 --dry-run`.
    """

    experiment: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="EXPERIMENT")]
    """Experiment script, e.g. experiments/02_lora_rank.py."""
    variants: tuple[str, ...] = ()
    """Variants to run; none given: every variant of the experiment, in its order."""
    seeds: tuple[int, ...] = (0,)
    """Seeds to run for each variant."""
    smoke: bool = False
    """Pass --smoke to every run (tiny model, demo loops, CPU)."""
    root: Path = Path("runs")
    """Run directories are ROOT/<experiment>/<experiment>-<variant>-s<seed>-<time>."""
    dry_run: bool = False
    """Print the commands, run nothing."""
    stop_on_failure: bool = False
    """Stop at the first failed run (default: run the rest, report the failures at the end)."""


def select_variants(available: list[str], wanted: tuple[str, ...]) -> list[str]:
    unknown = [variant for variant in wanted if variant not in available]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from: {', '.join(available)}")
    return list(wanted) or list(available)


def run_command(args: SweepArgs, variant: str, seed: int, passthrough: list[str]) -> tuple[Path, list[str]]:
    """(run directory, command) of one run."""
    experiment = args.experiment.stem
    run_dir = args.root / experiment / run_name(experiment, variant, seed)
    command = [sys.executable, str(args.experiment), "--variant", variant, "--seed", str(seed), "--output-dir", str(run_dir)]
    return run_dir, command + ["--smoke"] * args.smoke + passthrough


def split_argv(argv: list[str]) -> tuple[list[str], list[str] | None, list[str]]:
    """(sweep flags, Azure launcher flags or None, experiment flags after `--`)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    own, passthrough = list(argv[:cut]), list(argv[cut + 1 :])
    if "--azure" not in own:
        return own, None, passthrough
    at = own.index("--azure")
    return own[:at], own[at + 1 :], passthrough


def main(argv: list[str]) -> int:
    own, azure, passthrough = split_argv(list(argv))
    args = tyro.cli(SweepArgs, args=own, prog=PROG)
    try:
        if not args.seeds:
            raise ValueError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
        require_folder("--root", args.root)
        variants = select_variants(list(load_experiment(args.experiment).VARIANTS), args.variants)
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    if azure is not None:
        return _submit_to_azure(args, variants, azure, passthrough)
    return _run_locally(args, variants, passthrough)


def _submit_to_azure(args: SweepArgs, variants: list[str], azure: list[str], passthrough: list[str]) -> int:
    from musicgen_lora.azure.commands import main as azure_main

    submit = ["submit", str(args.experiment), "--variant", *variants, "--seed", *map(str, args.seeds), *azure]
    return azure_main([*submit, "--", *(["--smoke"] * args.smoke), *passthrough])


def _run_locally(args: SweepArgs, variants: list[str], passthrough: list[str]) -> int:
    results = []
    runs = [(variant, seed) for variant in variants for seed in args.seeds]
    for index, (variant, seed) in enumerate(runs, 1):
        run_dir, command = run_command(args, variant, seed, passthrough)
        print(f"[{index}/{len(runs)}] {' '.join(command)}", flush=True)
        if args.dry_run:
            continue
        start = time.monotonic()
        code = subprocess.run(command, check=False).returncode
        results.append((variant, seed, run_dir, code, time.monotonic() - start))
        if code != 0 and args.stop_on_failure:
            break
    if args.dry_run:
        return 0
    print(f"\n{PROG}: {args.experiment.stem}")
    for variant, seed, run_dir, code, seconds in results:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"  {variant:<16} seed {seed:<3} {seconds:7.0f} s  {status:<18} {run_dir}")
    failed = sum(code != 0 for *_, code, _ in results)
    skipped = len(runs) - len(results)
    print(f"{len(results) - failed} succeeded, {failed} failed" + (f", {skipped} not run" if skipped else ""))
    print(f"compare them: uv run musicgen-lora report {args.experiment}")
    return 1 if failed or skipped else 0
