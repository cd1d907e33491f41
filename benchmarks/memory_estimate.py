"""Predicted vs measured peak memory of LoRA training (issue 15.4): `musicgen-lora estimate`'s
model against real training steps of the tiny model and musicgen-small's architecture (random
weights, built in code, saved and loaded like a checkpoint), with and without gradient checkpointing.

Each point (model, batch, window, checkpointing) runs in a fresh process: the throughput benchmark's
`ours` arm (or `grad_ckpt`), i.e. the training defaults through the product's builders, forward_loss,
backward, clipping, AdamW; two steps by default, so the optimizer states exist. Measured is

  CPU   the process's own peak resident set (VmHWM) from start to end: nothing subtracted, so the
        Python + torch + training-stack baseline is in it, as in the estimate (which measures that
        baseline in a separate fresh process, as `musicgen-lora estimate` does: the stack imported and
        one step of the tiny model run);
  CUDA  torch.cuda.max_memory_allocated over the whole run (tensors only: no CUDA context, no
        allocator slack), against the estimate's CUDA figure (which has no process baseline).

On CPU the child sets glibc's mmap threshold as `train` does (host_memory.release_freed_activations);
`--glibc-default-points` adds rows without it, to show what the default allocator costs.

    uv run benchmarks/memory_estimate.py                       # the committed CPU numbers
    uv run benchmarks/memory_estimate.py --device cuda --tiny-points 8x10 \\
        --small-points 4x10 8x30 16x30 --glibc-default-points
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import tyro

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


@dataclass(frozen=True)
class Args:
    """Compare the memory estimate with measured peaks; write OUT.md and OUT.json."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    tiny_points: tuple[str, ...] = ("4x2", "32x10")
    """BATCHxSECONDS points of the tiny model."""
    small_points: tuple[str, ...] = ("1x10", "2x10", "1x30")
    """BATCHxSECONDS points of musicgen-small's architecture."""
    checkpointing: tuple[bool, ...] = (False, True)
    """Gradient checkpointing off / on at every point."""
    glibc_default_points: tuple[str, ...] = ("1x10",)
    """small points (no checkpointing) measured once more with glibc's default allocator (CPU only)."""
    steps: int = 2
    """Training steps per point."""
    threads: int = 2
    """CPU threads of each measurement."""
    cpu_precision: Literal["auto", "fp32"] = "auto"
    """On CPU: auto measures the training default (bf16 where the CPU has native bf16), fp32 forces
    --train.mixed-precision no."""
    tolerance: float = 0.15
    """The bar the small model's points are held to (|estimate - measured| / measured)."""
    model_cache: Path = REPO / ".cache" / "musicgen-lora" / "benchmark"
    """Where the random models are saved once, like checkpoint folders."""
    out: Path | None = None
    """Results: OUT.md and OUT.json; default reports/benchmarks/memory_estimate_<device>."""


def load_throughput_benchmark():
    """benchmarks/train_throughput.py as a module (its `ours` arm and `prepare`)."""
    if "train_throughput" in sys.modules:
        return sys.modules["train_throughput"]
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pickled Setup / Arm objects name this module
    spec.loader.exec_module(module)
    return module


def parse_point(point: str) -> tuple[int, float]:
    batch, _, seconds = point.partition("x")
    return int(batch), float(seconds)


# ---------------------------------------------------------------------------------------------
# In the child process


def child(job_file: Path) -> dict:
    """One point: the training stack imported as training imports it, then the arm's steps."""
    import torch

    import musicgen_lora.training.loop  # noqa: F401  (the baseline a training process pays)
    from musicgen_lora.training.host_memory import (
        peak_rss_bytes,
        release_freed_activations,
        rss_bytes,
    )

    bench = load_throughput_benchmark()  # before unpickling: the job's Arm and Setup are its classes
    job = pickle.loads(job_file.read_bytes())
    torch.set_num_threads(job["threads"])
    imported = rss_bytes()
    heap_setting = release_freed_activations() if job["heap"] == "train" and job["setup"].device == "cpu" else False
    raw = bench.measure_arm(job["arm"], job["setup"])
    cuda = job["setup"].device == "cuda"
    return {
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes(),
        "process_peak_rss_bytes": peak_rss_bytes(), "rss_after_imports_bytes": imported,
        "heap_setting_applied": heap_setting, "step_s": raw["step_s"],
    }


# ---------------------------------------------------------------------------------------------
# The parent


def measure(arm, setup, threads: int, heap: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / "job.pkl"
        job.write_bytes(pickle.dumps({"arm": arm, "setup": setup, "threads": threads, "heap": heap}))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        done = subprocess.run([sys.executable, __file__, "--child", str(job)], capture_output=True, text=True, env=env)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def text_tokens(setup) -> int:
    # The benchmark saves this tokenizer with each model.
    from musicgen_lora.modeling.model import tiny_tokenizer

    captions = [caption for _, _, caption in setup.clips]
    return int(tiny_tokenizer()(captions, padding=True, return_tensors="pt")["input_ids"].shape[1])


def run(args: Args) -> dict:
    import torch

    from musicgen_lora.training import memory_estimate as me
    from musicgen_lora.training.architecture import load_architecture
    from musicgen_lora.training.config import LoraSettings
    from musicgen_lora.training.host_memory import measure_process_baseline

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    bench = load_throughput_benchmark()
    cpu_bf16 = False if (device == "cpu" and args.cpu_precision == "fp32") else None
    by_name = {arm.name: arm for arm in bench.arms(device, 30.0, cpu_bf16)}
    ours = by_name["ours"]
    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[ours.precision]
    baseline = measure_process_baseline() if device == "cpu" else 0
    lora = LoraSettings()
    rows = []
    plan = [("tiny", p) for p in args.tiny_points] + [("small", p) for p in args.small_points]
    extra = [] if device == "cuda" else [("small", p) for p in args.glibc_default_points]
    windows = {}
    for arch_name, point in plan + extra:
        batch, seconds = parse_point(point)
        windows.setdefault((arch_name, seconds), 0)
        windows[(arch_name, seconds)] = max(windows[(arch_name, seconds)], batch)
    setups = {}
    for (arch_name, seconds), batch in windows.items():
        setup = bench.prepare(bench.Args(arch=arch_name, device=device, batch_size=batch, window_seconds=seconds,
                                         clips=batch, model_cache=args.model_cache), device)
        setups[(arch_name, seconds)] = replace(setup, warmup=args.steps - 1, steps=1, reset_peak=False, threads=args.threads)
    jobs = [(a, p, ckpt, "train") for a, p in plan for ckpt in args.checkpointing] + [(a, p, False, "glibc default") for a, p in extra]
    for arch_name, point, ckpt, heap in jobs:
        batch, seconds = parse_point(point)
        setup = replace(setups[(arch_name, seconds)], batch_size=batch)
        arch = load_architecture(setup.model_dir)  # config.json of the saved model, as the CLI reads it
        settings = me.Settings(
            batch_size=batch, window_seconds=seconds, device=device, precision=precision,
            base_dtype="bfloat16" if ours.precision == "bf16" else "float32", gradient_checkpointing=ckpt,
            attention=ours.attention, lora_r=lora.r, lora_dropout=lora.dropout, lora_targets=lora.targets,
            text_tokens=text_tokens(setup), cached_captions=len(setup.clips), process_baseline_bytes=baseline or 0,
            count_loading=True,
        )
        predicted = me.estimate(arch, settings)
        print(f"{arch_name} {point} checkpointing={ckpt} heap={heap}: predicted {predicted.total / GIB:.2f} GiB ...", flush=True)
        measured = measure(by_name["grad_ckpt" if ckpt else "ours"], setup, args.threads, heap)
        row = {"model": arch_name, "batch": batch, "window_s": seconds, "checkpointing": ckpt, "heap": heap,
               "estimate_bytes": predicted.total, "peak_moment": predicted.peak_moment,
               "components": {r.label: r.bytes for r in predicted.rows}, **measured}
        if "peak_bytes" in measured:
            row["error"] = (predicted.total - measured["peak_bytes"]) / measured["peak_bytes"]
            print(f"  measured {measured['peak_bytes'] / GIB:.2f} GiB, error {100 * row['error']:+.1f}%", flush=True)
        rows.append(row)
    return {
        "device": device, "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "precision": ours.precision, "threads": args.threads, "steps": args.steps, "tolerance": args.tolerance,
        "baseline_rss_bytes": baseline, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": json.loads(json.dumps(asdict(args), default=str)),
        "rows": rows,
    }


def table(report: dict) -> str:
    measured = "peak RSS (VmHWM)" if report["device"] == "cpu" else "max_memory_allocated"
    lines = [f"| model | batch | window s | grad ckpt | allocator | estimate GiB | measured {measured} GiB | error | peak falls in |",
             "|---|---:|---:|---|---|---:|---:|---:|---|"]
    for r in report["rows"]:
        head = f"| {r['model']} | {r['batch']} | {r['window_s']:g} | {'yes' if r['checkpointing'] else 'no'} | {r['heap']} | {r['estimate_bytes'] / GIB:.2f} |"
        if "error" not in r or isinstance(r["error"], str):
            lines.append(f"{head} failed: {r.get('error')} | | |")
        else:
            lines.append(f"{head} {r['peak_bytes'] / GIB:.2f} | {100 * r['error']:+.1f}% | {r['peak_moment']} |")
    return "\n".join(lines)


def write(report: dict, out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    held = [r for r in report["rows"] if r["model"] == "small" and r["heap"] == "train" and isinstance(r.get("error"), float)]
    worst = max((abs(r["error"]) for r in held), default=float("nan"))
    cpu = report["device"] == "cpu"
    notes = [
        f"`{command}`, {report['date']}, {report['device_name']}, torch {report['torch']}, training precision "
        f"{report.get('precision', '?')} (the `ours` arm: the training defaults), {report['threads']} threads, "
        f"{report['steps']} training steps per point, each point a fresh process.",
        "",
        table(report),
        "",
        f"**small, worst |estimate - measured| / measured: {100 * worst:.1f}%** (bar: {100 * report['tolerance']:.0f}%).",
        "",
    ]
    if cpu:
        notes += [
            f"- Measured: the child's own VmHWM from start to end, nothing subtracted. The estimate includes the process "
            f"baseline, measured in a separate fresh process that imports the training stack and runs one training "
            f"step of the tiny model (host_memory.measure_process_baseline, as `musicgen-lora estimate` does): "
            f"{report['baseline_rss_bytes'] / GIB:.2f} GiB (the children's own resident set after the same imports is "
            "in the JSON, `rss_after_imports_bytes`).",
            "- allocator `train`: glibc's mmap threshold fixed at 1 MiB, as `train` sets it on CPU "
            "(host_memory.release_freed_activations). `glibc default`: the sliding threshold, which keeps freed "
            "activations in the heap; the estimate does not model that waste.",
            "- The estimate counts every frozen weight; the benchmark's step never runs EnCodec and reads few rows of "
            "T5's embedding table, whose memory-mapped pages therefore stay out of the measured RSS (a real run "
            "decodes samples and FAD references with EnCodec).",
        ]
    else:
        notes += ["- Measured: torch.cuda.max_memory_allocated over the whole run (tensors only); the estimate's CUDA "
                  "figure has no process baseline. nvidia-smi shows more: the CUDA context and the caching allocator's slack."]
    out.with_suffix(".md").write_text(f"# Memory estimate vs measured peak ({report['device']})\n\n" + "\n".join(notes) + "\n")
    print(table(report))
    print(f"wrote {out}.md / .json")


def main(args: Args, command: str) -> None:
    report = run(args)
    suffix = f"_{report['precision']}" if report["device"] == "cpu" else ""
    out = args.out or REPO / "reports" / "benchmarks" / f"memory_estimate_{report['device']}{suffix}"
    write(report, out, command)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(Path(sys.argv[2]))))
    else:
        main(tyro.cli(Args, description=__doc__), "uv run benchmarks/memory_estimate.py " + shlex.join(sys.argv[1:]))
