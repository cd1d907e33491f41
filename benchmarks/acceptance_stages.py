"""Helpers of benchmarks/gpu_acceptance.sh: environment record, run checks, the summary.

    python benchmarks/acceptance_stages.py env OUT.json [--device cuda|cpu]
    python benchmarks/acceptance_stages.py check-run RUN_DIR OUT.json [--samples]
    python benchmarks/acceptance_stages.py summarize WORK_DIR OUT_DIR

Plain argparse and the standard library (plus torch for `env`), so the summary still comes out when
the project's own imports are what is broken.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
from pathlib import Path

LOG_BYTES_PER_STAGE = 400_000
"""Tail of each stage log kept in gpu_acceptance.log (the device returns files < 16 MiB; keep it small)."""

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "huggingface_hub", "tokenizers", "safetensors",
             "tyro", "soundfile", "librosa", "torchaudio", "numpy", "scipy")


def env(out: Path, device: str) -> int:
    import torch

    record: dict = {"python": sys.version.split()[0], "executable": sys.executable, "libraries": {}}
    for name in LIBRARIES:
        try:
            module = importlib.import_module(name)
            record["libraries"][name] = {"version": getattr(module, "__version__", "?"), "path": str(Path(module.__file__).parent)}
        except Exception as error:  # a missing library is a finding, not a crash
            record["libraries"][name] = {"error": f"{type(error).__name__}: {error}"}
    record["cuda_available"] = torch.cuda.is_available()
    record["torch_cuda"] = torch.version.cuda
    if device == "cuda":
        record["device"] = torch.cuda.get_device_name()
        record["capability"] = list(torch.cuda.get_device_capability())
        record["memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        record["bf16_supported"] = torch.cuda.is_bf16_supported()
    record["matmul"] = matmul_peak(torch.device(device))
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


def matmul_peak(device) -> dict:
    """Dense matmul TFLOP/s: bf16 8192^3 on GPU timed with CUDA events (median of 20 after 5 warm-up),
    fp32 1024^3 on CPU (a plumbing check only)."""
    import time

    import torch

    gpu = device.type == "cuda"
    n, dtype, warmup, iters = (8192, torch.bfloat16, 5, 20) if gpu else (1024, torch.float32, 1, 3)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    times = []
    for _ in range(iters):
        if gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            tick = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - tick)
    median = statistics.median(times)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "median_s": median,
            "tflops_median": 2 * n**3 / median / 1e12, "tflops_best": 2 * n**3 / min(times) / 1e12}


def check_run(run_dir: Path, out: Path, samples: bool) -> int:
    """A training run's outputs: adapter saved and finite, losses finite, samples written."""
    problems = []
    adapter = run_dir / "adapter"
    weights = sorted(adapter.glob("*.safetensors")) if adapter.is_dir() else []
    if not weights:
        problems.append(f"no adapter weights in {adapter}")
    finite_adapter = None
    if weights:
        import numpy as np
        from safetensors.numpy import load_file

        finite_adapter = all(bool(np.isfinite(t.astype(np.float32)).all()) for w in weights for t in load_file(w).values())
        if not finite_adapter:
            problems.append("adapter has non-finite weights")
    losses = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            losses += [v for k, v in record.items() if "loss" in k and isinstance(v, int | float)]
    if not losses:
        problems.append(f"no losses in {metrics}")
    elif not all(math.isfinite(v) for v in losses):
        problems.append("non-finite loss logged")
    wavs = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "samples").rglob("*.wav")) if (run_dir / "samples").is_dir() else []
    if samples and not wavs:
        problems.append(f"no samples in {run_dir / 'samples'}")
    channels = None
    if wavs:
        import soundfile

        channels = sorted({soundfile.info(run_dir / w).channels for w in wavs})
    manifest = run_dir / "manifest.json"
    result = {
        "run_dir": str(run_dir), "ok": not problems, "problems": problems, "adapter_files": [w.name for w in weights],
        "adapter_finite": finite_adapter, "losses_logged": len(losses), "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None, "samples": wavs[:20], "sample_count": len(wavs),
        "sample_channels": channels,
        "manifest_keys": sorted(json.loads(manifest.read_text())) if manifest.exists() else None,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if not problems else 1


# ---------------------------------------------------------------------------------------------
# Summary


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _bench_table(report: dict) -> list[str]:
    lines = ["| arm | step s | useful audio s/s | x reference | peak mem GB | MFU |", "|---|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['arm']} | failed: {row['error'][:160]} |||||")
            continue
        speedup = row.get("speedup_vs_reference")
        lines.append(f"| {row['arm']} | {row['step_time_s']:.3f} | {row['useful_audio_s_per_s']:.2f} | "
                     f"{_f(speedup)}{'x' if speedup else ''} | {row['peak_memory_gb']:.2f} | {_f(row.get('mfu') and 100 * row['mfu'], '.1f')}% |")
    ratios = [f"{key.replace('_', ' ')} = {_f(report.get(key))}x" for key in ("ours_over_reference", "ours_over_peer", "ours_over_peer_lean")]
    lines += ["", "; ".join(ratios) + f" (useful audio s/s; matmul peak {report['matmul_peak_tflops']:.1f} TFLOP/s "
              f"{report['matmul_peak_dtype']})"]
    return lines


def summarize(work: Path, out_dir: Path) -> int:
    stages = []
    for line in (work / "stages.tsv").read_text().splitlines() if (work / "stages.tsv").exists() else []:
        name, rc, seconds, limit, note = (line.split("\t") + [""] * 5)[:5]
        stages.append({"stage": name, "rc": int(rc), "seconds": float(seconds), "timeout_s": float(limit or 0), "note": note})
    results = {
        "stages": stages, "env": _load(work / "env.json"), "smoke": _load(work / "smoke_check.json"),
        "smoke_melody": _load(work / "smoke_melody_check.json"), "smoke_stereo": _load(work / "smoke_stereo_check.json"),
        "train_fixed": _load(work / "bench" / "train_fixed.json"), "memory": _load(work / "bench" / "memory.json"),
        "fp16": _load(work / "fp16_check.json"), "generation": _load(work / "rtf.json"),
        "train_loops": _load(work / "bench" / "train_loops.json"), "meta": _load(work / "meta.json"),
        "train_compile": _load(work / "bench" / "train_compile.json"),
    }
    md = ["# GPU acceptance", ""]
    meta, env_record = results["meta"] or {}, results["env"] or {}
    md.append(f"{env_record.get('device', meta.get('device', '?'))}; mode {meta.get('mode', '?')}; python {env_record.get('python', '?')}; "
              f"total {meta.get('total_s', '?')} s")
    md += ["", "| stage | exit | seconds | timeout | note |", "|---|---:|---:|---:|---|"]
    md += [f"| {s['stage']} | {s['rc']} | {s['seconds']:.0f} | {s['timeout_s']:.0f} | {s['note']} |" for s in stages]
    if env_record:
        libs = env_record.get("libraries", {})
        md += ["", "Versions: " + ", ".join(f"{k} {v.get('version', 'MISSING')}" for k, v in libs.items()),
               f"Matmul ({env_record['matmul']['dtype']} {env_record['matmul']['n']}^3, median): "
               f"{env_record['matmul']['tflops_median']:.1f} TFLOP/s"]
    for key, title in (("train_fixed", "Training, fixed clips"), ("memory", "Peak memory, ours vs gradient checkpointing"),
                       ("train_loops", "Training, loop folder"), ("train_compile", "Training, torch.compile of the decoder")):
        report = results[key]
        if report:
            args = report["meta"]["args"]
            if args.get("regime") == "loops":
                lengths = report["meta"]["clip_lengths_s"]
                title += f" ({len(lengths)} loops of {min(lengths):g}-{max(lengths):g} s; the peer pads to each batch's longest)"
            md += ["", f"## {title}: batch {args['batch_size']} x {args['window_seconds']} s, {args['arch']}, "
                   f"{args['steps']} steps after {args['warmup']} warm-up", "", *_bench_table(report)]
    for key, title in (("smoke", "--smoke on the device"), ("smoke_melody", "--smoke --model.name tiny-melody"),
                       ("smoke_stereo", "--smoke --model.name tiny-stereo"), ("fp16", f"{meta.get('fp16_precision', 'fp16')} through the entry point (fp16: autocast + grad scaler)")):
        check = results[key]
        if check:
            md += ["", f"## {title}: {'OK' if check['ok'] else 'FAILED ' + '; '.join(check['problems'])}",
                   f"losses {check['losses_logged']} logged, first {_f(check['first_loss'], '.4f')}, last {_f(check['last_loss'], '.4f')}; "
                   f"adapter finite {check['adapter_finite']}; {check['sample_count']} samples ({check.get('sample_channels')} channels)"]
    generation = results["generation"]
    if generation:
        md += ["", f"## Generation ({generation['arch']}, {generation['dtype']}, guidance {generation['guidance']})", "",
               "| adapter | batch | audio s | wall s | RTF | audio s/s | finite |", "|---|---:|---:|---:|---:|---:|---|"]
        md += [f"| {r['mode']} | {r['batch']} | {r['seconds']:g} | {r['wall_s']:.2f} | {r['rtf']:.3f} | {r['audio_s_per_s']:.2f} | {r['finite']} |"
               for r in generation["rows"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_acceptance.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "gpu_acceptance.md").write_text("\n".join(md) + "\n")
    with (out_dir / "gpu_acceptance.log").open("w") as log:
        for stage in stages:
            path = work / "logs" / f"{stage['stage']}.log"
            data = path.read_bytes() if path.exists() else b""
            cut = len(data) > LOG_BYTES_PER_STAGE
            log.write(f"\n===== {stage['stage']} (exit {stage['rc']}, {stage['seconds']:.0f} s)"
                      f"{' [tail only]' if cut else ''} =====\n")
            log.write(data[-LOG_BYTES_PER_STAGE:].decode("utf-8", "replace"))
    print("\n".join(md))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("env")
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="cuda")
    p = commands.add_parser("check-run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--samples", action="store_true")
    p = commands.add_parser("summarize")
    p.add_argument("work", type=Path)
    p.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    if args.command == "env":
        return env(args.out, args.device)
    if args.command == "check-run":
        return check_run(args.run_dir, args.out, args.samples)
    return summarize(args.work, args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
