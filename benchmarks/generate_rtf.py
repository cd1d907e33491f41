"""Generation speed: real-time factor of `musicgen-lora generate` with a LoRA adapter, merged vs unmerged.

Random weights, built in code (no download): the tiny architecture (tests) or musicgen-small's. The
model is prepared exactly as `generate` prepares it (`prepare_for_inference`: the adapter loaded in
fp32, merged or not, then moved to the device and cast to the inference dtype: bf16 on GPUs that
support it, fp16 on older ones, fp32 on CPU) and generated from with `generate_audio`, with
classifier-free guidance 3 (which doubles the decoder batch) and top-k 250 sampling. For each mode
and batch size: one warm-up generation of 1 s, then --repeats timed generations of --seconds of
audio (seed = repeat). The adapter is rank 16 on the decoder attention (the baseline experiment's);
its B matrices are randomised so merging really changes the weights.

    uv run benchmarks/generate_rtf.py --arch small --device cpu --seconds 3 --batch-sizes 1 --repeats 2 \\
        --out reports/benchmarks/generate_rtf_cpu.json
    python benchmarks/generate_rtf.py --arch small --device cuda --seconds 4 --batch-sizes 1 4 --out rtf.json

RTF = wall seconds / audio seconds of one prompt (< 1: faster than real time); audio_s_per_s counts
every prompt of the batch. `--out X.json` also writes X.md (the table, the command, threads, load).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from musicgen_lora.modeling import model as model_lib
from musicgen_lora.modeling.generate import generate_audio, inference_dtype, prepare_for_inference
from musicgen_lora.tracking.manifest import cpu_name


def lora_musicgen(arch: str):
    """The architecture with random weights and a random rank-16 attention LoRA, fp32 on the CPU
    (as `generate` loads it before merging)."""
    model = model_lib.build_random_musicgen(arch)
    peft_model = model_lib.apply_lora(model, r=16, alpha=16, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "out_proj"))
    generator = torch.Generator().manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter): make it a real one
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    return peft_model.eval(), model_lib.tiny_tokenizer()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, tokenizer, device, batch: int, seconds: float, repeats: int) -> tuple[dict, np.ndarray]:
    prompts = [f"techno drum loop {i}, 128 bpm" for i in range(batch)]
    generate_audio(model, tokenizer, prompts, seconds=min(1.0, seconds))  # warm-up: kernels, allocator
    times, cpu_times, loads = [], [], []
    for repeat in range(repeats):
        loads.append(os.getloadavg()[0])
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        audio = generate_audio(model, tokenizer, prompts, seconds=seconds, seed=repeat)
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    wall, cpu = statistics.median(times), statistics.median(cpu_times)
    row = {
        "batch": batch, "seconds": seconds, "wall_s": wall, "wall_times_s": times, "rtf": wall / seconds,
        "audio_s_per_s": batch * seconds / wall, "cpu_s": cpu, "cpu_times_s": cpu_times, "rtf_cpu_time": cpu / seconds,
        "finite": bool(np.isfinite(audio).all()), "audio_shape": list(audio.shape), "load_average_1min": loads,
    }
    return row, audio



def run(args: argparse.Namespace, command: str) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = inference_dtype(device, args.dtype)
    load_before = os.getloadavg()
    lora, tokenizer = lora_musicgen(args.arch)
    rows, last_audio = [], {}
    for mode in [m for m in ("unmerged", "merged") if m in args.modes]:
        start = time.perf_counter()
        # What `generate` does (merge in fp32, then move and cast); a copy keeps the fp32 adapter for the next mode.
        model = prepare_for_inference(copy.deepcopy(lora), merge=mode == "merged", device=device, dtype=dtype)
        _sync(device)
        prepare_s = time.perf_counter() - start
        for batch in args.batch_sizes:
            row, audio = measure(model, tokenizer, device, batch, args.seconds, args.repeats)
            row = {"mode": mode, "prepare_s": prepare_s, **row}
            if mode == "merged" and batch in last_audio:  # same seeds, same prompts: how close is the audio?
                row["max_abs_diff_vs_unmerged"] = float(np.abs(audio - last_audio[batch]).max())
            last_audio[batch] = audio
            rows.append(row)
            print(f"{mode:9s} batch {batch}: {row['wall_s']:.2f} s for {args.seconds:g} s of audio, "
                  f"RTF {row['rtf']:.3f}, {row['audio_s_per_s']:.2f} audio s/s, finite={row['finite']}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    speedups, cpu_speedups = {}, {}
    for batch in args.batch_sizes:
        by_mode = {row["mode"]: row for row in rows if row["batch"] == batch}
        if {"merged", "unmerged"} <= set(by_mode):
            speedups[str(batch)] = by_mode["unmerged"]["wall_s"] / by_mode["merged"]["wall_s"]
            cpu_speedups[str(batch)] = by_mode["unmerged"]["cpu_s"] / by_mode["merged"]["cpu_s"]
    return {
        "arch": args.arch, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "device_type": device.type, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "guidance": 3.0, "top_k": 250,
        "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()), "merged_speedup_by_batch": speedups,
        "merged_speedup_by_batch_cpu_time": cpu_speedups, "rows": rows,
    }


def markdown(report: dict) -> str:
    loads = [load for row in report["rows"] for load in row["load_average_1min"]]
    lines = [
        f"# Generation real-time factor: {report['arch']} on {report['device_type']} ({report['device']})", "",
        f"`{report['command']}`, {report['date']}, torch {report['torch']}, {report['dtype']}, "
        f"{report['torch_threads']} torch threads ({report['cpu_count']} CPUs), load average (1 min) "
        f"{report['load_average_before'][0]:.2f} before, {report['load_average_after'][0]:.2f} after, "
        f"{min(loads):.2f} to {max(loads):.2f} at the timed runs' starts. Random weights (the architecture built in "
        f"code), a random rank-16 LoRA on the decoder attention, guidance {report['guidance']:g}, top-k "
        f"{report['top_k']} sampling; median of the timed runs after a 1 s warm-up.", "",
        "| adapter | batch | audio s | wall s (median) | runs | RTF | audio s/s | process CPU s | RTF by CPU time | "
        "prepare s | max abs diff vs unmerged |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        diff = row.get("max_abs_diff_vs_unmerged")
        lines.append(
            f"| {row['mode']} | {row['batch']} | {row['seconds']:g} | {row['wall_s']:.2f} | "
            f"{', '.join(f'{t:.2f}' for t in row['wall_times_s'])} | {row['rtf']:.3f} | {row['audio_s_per_s']:.3f} | "
            f"{row['cpu_s']:.2f} | {row['rtf_cpu_time']:.3f} | {row['prepare_s']:.2f} | "
            f"{'-' if diff is None else f'{diff:.2g}'} |")
    speedups = ", ".join(f"batch {b}: {s:.2f}x" for b, s in report["merged_speedup_by_batch"].items())
    by_cpu = ", ".join(f"batch {b}: {s:.2f}x" for b, s in report["merged_speedup_by_batch_cpu_time"].items())
    lines += ["", f"**Merged / unmerged speed-up: {speedups or 'n/a'}** (wall time of the same generation; by "
              f"process CPU time: {by_cpu or 'n/a'}).", "",
              "- RTF = wall seconds / seconds of audio per prompt (< 1 is faster than real time); audio s/s counts "
              "every prompt of the batch. Process CPU time (all threads of this process) moves less with the load "
              "of a shared machine than wall time does; on a GPU it counts only the host's work.",
              "- prepare s: loading the adapter into the model as `generate` does: the merge (merged) and the move "
              "and cast to the device and dtype; paid once per command, not per clip.",
              "- max abs diff: the merged model's audio against the unmerged model's at the same seeds (identical "
              "codes decode to identical audio; in fp32 the merge changes the logits by float rounding only)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["tiny", "small"], default="small")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="auto: as generate picks it (bf16 on GPUs that support it, else fp16; fp32 on CPU)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--modes", nargs="+", choices=["unmerged", "merged"], default=["unmerged", "merged"])
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results (and a .md next to it)")
    args = parser.parse_args(argv)
    command = "uv run benchmarks/generate_rtf.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = run(args, command)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
