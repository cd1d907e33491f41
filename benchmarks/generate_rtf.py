"""Generation speed: real-time factor of MusicGen generation with a LoRA adapter, merged vs unmerged.

Random weights, built in code (no download): the tiny architecture (tests, CPU) or musicgen-small's.
For each batch size, one warm-up generation of 1 s, then --repeats timed generations of --seconds of
audio with classifier-free guidance (which doubles the decoder batch), through the repo's
`generate_audio`. The adapter is rank 16 on the decoder attention (the baseline experiment's); its B
matrices are randomised so merging really changes the weights.

    uv run benchmarks/generate_rtf.py --arch tiny --device cpu --seconds 1 --batch-sizes 1 2
    python benchmarks/generate_rtf.py --arch small --device cuda --seconds 10 --batch-sizes 1 4

RTF = wall seconds / audio seconds of one prompt (< 1: faster than real time); audio_s_per_s counts
every prompt of the batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from musicgen_lora.modeling import model as model_lib
from musicgen_lora.modeling.generate import generate_audio


def lora_musicgen(arch: str, dtype: torch.dtype, device: torch.device):
    model = model_lib.build_random_musicgen(arch)
    peft_model = model_lib.apply_lora(model, r=16, alpha=16, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "out_proj"))
    generator = torch.Generator().manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter): make it a real one
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    return peft_model.to(device=device, dtype=dtype).eval(), model_lib.tiny_tokenizer()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, tokenizer, device, batch: int, seconds: float, repeats: int) -> dict:
    prompts = [f"techno drum loop {i}, 128 bpm" for i in range(batch)]
    generate_audio(model, tokenizer, prompts, seconds=min(1.0, seconds))  # warm-up: kernels, allocator
    times = []
    for repeat in range(repeats):
        _sync(device)
        start = time.perf_counter()
        audio = generate_audio(model, tokenizer, prompts, seconds=seconds, seed=repeat)
        _sync(device)
        times.append(time.perf_counter() - start)
    wall = statistics.median(times)
    return {
        "batch": batch, "seconds": seconds, "wall_s": wall, "wall_times_s": times, "rtf": wall / seconds,
        "audio_s_per_s": batch * seconds / wall, "finite": bool(torch.isfinite(torch.from_numpy(audio)).all()),
        "audio_shape": list(audio.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["tiny", "small"], default="small")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=["unmerged", "merged"], default=["unmerged", "merged"])
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    model, tokenizer = lora_musicgen(args.arch, dtype, device)
    rows = []
    # Unmerged first: merging is in place (merge_and_unload folds the adapter into the base weights).
    for mode in [m for m in ("unmerged", "merged") if m in args.modes]:
        if mode == "merged":
            model = model.merge_and_unload().eval()
        for batch in args.batch_sizes:
            row = {"mode": mode, **measure(model, tokenizer, device, batch, args.seconds, args.repeats)}
            rows.append(row)
            print(f"{mode:9s} batch {batch}: {row['wall_s']:.2f} s for {args.seconds:g} s of audio, "
                  f"RTF {row['rtf']:.3f}, {row['audio_s_per_s']:.2f} audio s/s, finite={row['finite']}", flush=True)
    report = {
        "arch": args.arch, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__, "guidance": 3.0, "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
