"""`musicgen-lora estimate`: predicted peak memory of LoRA training, with and without gradient
checkpointing, from the model's architecture alone (no weights are read, nothing is trained).

    musicgen-lora estimate --model small --batch-size 8 --window-seconds 10
    musicgen-lora estimate --model facebook/musicgen-medium --batch-size 4 --device cuda
    musicgen-lora estimate --model ~/checkpoints/musicgen-small --batch-size 2 --json

The model is `small`, `medium`, `large` or a tiny one (built in code), a local checkpoint folder (its
config.json only: MusicGen or MusicGen-Melody, mono or stereo) or a Hub id (its config.json, from the
local Hugging Face cache when offline).
On CPU the figure is the process's peak resident set, the Python + torch + training-stack baseline
included (measured in a fresh child process); on CUDA it is tensor memory as
torch.cuda.max_memory_allocated counts it (no CUDA context, no allocator slack). See
`training.memory_estimate` for what is counted and `benchmarks/memory_estimate.py` for how well it holds.

This module imports neither torch nor transformers at import time (`--help` answers at once).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from typing import Literal

import tyro

from musicgen_lora.training.architecture import Architecture
from musicgen_lora.training.memory_estimate import GIB, MemoryEstimate, Settings


@dataclass(frozen=True)
class EstimateArgs:
    """Predict the peak memory of LoRA training from the model architecture (with and without
    gradient checkpointing)."""

    model: str = "facebook/musicgen-small"
    """small, medium, large or tiny (tiny-stereo, tiny-melody, tiny-stereo-melody; built in code), a
    local checkpoint folder (config.json is read, no weights; MusicGen or MusicGen-Melody, mono or
    stereo), or a Hub id (config.json from the local cache when offline)."""
    batch_size: int = 8
    """Windows per micro-step on one device (--train.batch-size divided by the processes)."""
    window_seconds: float = 10.0
    """Training window in seconds (--data.window-seconds)."""
    lora_r: int = 16
    """LoRA rank (--lora.r)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    """Decoder modules LoRA adapts (--lora.targets)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input (--lora.dropout); it saves a mask and a dropped copy per module."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """As --train.mixed-precision. auto: as training picks it: bf16 on CUDA (fp16 on a GPU here without
    bf16); on CPU bf16 where this CPU has native bf16, else none."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Frozen weights, as --model.dtype. auto: bfloat16 under bf16 autocast, else float32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where training runs. auto: cuda when torch sees a GPU here, else cpu."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """As --model.attn-implementation (eager keeps every B x heads x L x L attention matrix)."""
    text_tokens: int = 64
    """Tokens of the longest caption in a batch (ByT5, the tiny model's tokenizer, counts bytes)."""
    captions: int = 64
    """Distinct captions whose T5 states the text-state cache holds (--train.cache-text-states)."""
    revision: str | None = None
    """Hub revision of the config."""
    json: bool = False
    """Print the estimate as JSON instead of a table."""


def resolve(args: EstimateArgs) -> tuple[str, str, str]:
    """(device, precision, base dtype) as training would choose them."""
    import torch

    from musicgen_lora.training.builders import cpu_bf16_native

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.mixed_precision
    if precision == "auto":  # training's rule (builders.mixed_precision) for the device named
        if device == "cpu":
            precision = "bf16" if cpu_bf16_native() else "no"
        else:
            precision = "bf16" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "fp16"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if precision == "bf16" else "float32")
    return device, precision, dtype


def estimates(arch: Architecture, settings: Settings) -> dict[str, MemoryEstimate]:
    from musicgen_lora.training.architecture import lora_modules
    from musicgen_lora.training.memory_estimate import estimate

    modules = lora_modules(arch, settings.lora_targets)
    return {
        "no checkpointing": estimate(arch, replace(settings, gradient_checkpointing=False), modules),
        "gradient checkpointing": estimate(arch, replace(settings, gradient_checkpointing=True), modules),
    }


def table(results: dict[str, MemoryEstimate]) -> str:
    """Markdown table: one row per component (values at the peak), one column per variant."""
    columns = list(results)
    labels = list(dict.fromkeys(row.label for result in results.values() for row in result.rows))
    lines = ["| component | " + " | ".join(f"{c} (GiB)" for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for label in labels:
        cells = []
        for column in columns:
            values = [row.bytes for row in results[column].rows if row.label == label]
            cells.append(f"{values[0] / GIB:.3f}" if values else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| **predicted peak** | " + " | ".join(f"**{results[c].total / GIB:.2f}**" for c in columns) + " |")
    lines.append("| peak falls in | " + " | ".join(results[c].peak_moment for c in columns) + " |")
    return "\n".join(lines)


def headline(arch: Architecture, settings: Settings, lora_params: int) -> str:
    total = sum(arch.parameters.values())
    return (
        f"{arch.name}: decoder {arch.layers} layers x {arch.d_model} (ffn {arch.ffn_dim}, {arch.heads} heads), "
        f"{arch.codebooks} codebooks x {arch.vocab}, {arch.frame_rate:g} Hz; {total / 1e6:.1f} M parameters\n"
        f"batch {settings.batch_size} x {settings.window_seconds:g} s ({arch.positions(settings.window_seconds)} "
        f"decoder positions{_prefix(arch, settings)}), {settings.text_tokens} text tokens; LoRA r {settings.lora_r} on "
        f"{' '.join(settings.lora_targets)} ({lora_params / 1e6:.2f} M parameters, dropout {settings.lora_dropout:g}); "
        f"{settings.device}, mixed precision {settings.precision}, weights {settings.base_dtype}, {settings.attention}"
    )


def _prefix(arch: Architecture, settings: Settings) -> str:
    prefix = arch.prefix(settings.text_tokens)
    return f" + a prefix of {prefix}: chroma and text" if prefix else ""


def main(argv: list[str]) -> int:
    args = tyro.cli(EstimateArgs, args=argv, prog="musicgen-lora estimate", description=__doc__)
    if args.batch_size < 1 or not args.window_seconds > 0 or args.lora_r < 1 or args.text_tokens < 1 or args.captions < 0:
        print("error: --batch-size, --lora-r and --text-tokens must be >= 1, --window-seconds > 0, --captions >= 0",
              file=sys.stderr)
        return 2
    from musicgen_lora.modeling.model import LoraTargetError
    from musicgen_lora.training.architecture import (
        ArchitectureError,
        load_architecture,
        lora_modules,
        lora_parameter_count,
    )

    try:
        arch = load_architecture(args.model, args.revision)
        modules = lora_modules(arch, args.lora_targets)
    except (ArchitectureError, LoraTargetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device, precision, dtype = resolve(args)
    baseline = 0
    if device == "cpu":
        from musicgen_lora.training.host_memory import measure_process_baseline

        baseline = measure_process_baseline() or 0
    settings = Settings(
        batch_size=args.batch_size, window_seconds=args.window_seconds, device=device, precision=precision,
        base_dtype=dtype, attention=args.attn_implementation, lora_r=args.lora_r, lora_dropout=args.lora_dropout,
        lora_targets=args.lora_targets, text_tokens=args.text_tokens, cached_captions=args.captions,
        process_baseline_bytes=baseline, count_loading=True,
    )
    results = estimates(arch, settings)
    if args.json:
        print(json.dumps({
            "model": args.model, "settings": asdict(settings),
            "lora_parameters": lora_parameter_count(modules, args.lora_r),
            "estimates": {name: {"total_bytes": r.total, "peak_moment": r.peak_moment,
                                 "rows": {row.label: row.bytes for row in r.rows}} for name, r in results.items()},
        }, indent=2))
        return 0
    print(headline(arch, settings, lora_parameter_count(modules, args.lora_r)))
    print()
    print(table(results))
    where = ("peak resident set of the training process, baseline included" if device == "cpu"
             else "tensor memory (torch.cuda.max_memory_allocated): add the CUDA context and allocator slack")
    print(f"\nGiB = 2^30 bytes; {where}.")
    return 0
