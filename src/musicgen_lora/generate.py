"""Inference: a base MusicGen plus a LoRA adapter -> WAV files. Deterministic for a seed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import tyro

from musicgen_lora.collate import codebook_delays
from musicgen_lora.model import audio_format, load_musicgen


def generation_length(seconds: float, frame_rate: int, num_codebooks: int, audio_channels: int) -> tuple[int, int]:
    """(frames, max_new_tokens) for `seconds` of audio: the delay pattern needs max_delay extra steps."""
    frames = max(1, round(seconds * frame_rate))
    return frames, frames + max(codebook_delays(num_codebooks, audio_channels))


@torch.no_grad()
def generate_audio(
    model,
    tokenizer,
    prompts: list[str],
    *,
    seconds: float,
    guidance: float = 3.0,
    top_k: int = 250,
    temperature: float = 1.0,
    seed: int = 0,
    greedy: bool = False,
) -> np.ndarray:
    """Audio (batch, channels, samples) float32 for `prompts`; greedy ignores top_k/temperature.

    The RNG is seeded locally (and restored afterwards), so a seed gives the same audio every time
    without disturbing the caller's random state (training resumes stay exact).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fmt = audio_format(base)
    _, max_new_tokens = generation_length(seconds, fmt.frame_rate, base.config.decoder.num_codebooks, fmt.channels)
    device = next(model.parameters()).device
    inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        audio = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            top_k=None if greedy else top_k,
            temperature=None if greedy else temperature,
            guidance_scale=guidance,
        )
    model.train(was_training)
    samples = round(seconds * fmt.sample_rate)
    return audio[..., :samples].float().cpu().numpy()


def load_with_adapter(adapter: Path, model_name: str | None = None, device: str | None = None):
    """Base model named in the adapter's config (or `model_name`) with the adapter applied."""
    from peft import PeftModel

    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    name = model_name or adapter_config.get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{adapter} does not name its base model; pass --model")
    model, tokenizer = load_musicgen(name)
    model = PeftModel.from_pretrained(model, adapter)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """(channels, samples) float audio -> 16-bit WAV, clipped to [-1, 1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.clip(audio.T, -1.0, 1.0), sample_rate, subtype="PCM_16")


def output_paths(out: Path, count: int) -> list[Path]:
    """One prompt -> `out` itself; several -> out_0.wav, out_1.wav, ... (or files in a folder)."""
    if count == 1 and out.suffix == ".wav":
        return [out]
    if out.suffix == ".wav":
        return [out.with_name(f"{out.stem}_{i}.wav") for i in range(count)]
    return [out / f"sample_{i}.wav" for i in range(count)]


@dataclass(frozen=True)
class GenerateArgs:
    """Generate audio from text prompts with a base MusicGen and a LoRA adapter."""

    prompt: tuple[str, ...]
    """One or more text prompts."""
    out: Path
    """Output WAV (one prompt), or a .wav stem / folder for several prompts."""
    adapter: Path | None = None
    """Adapter folder (a run's adapter/); None generates with the base model alone."""
    model: str | None = None
    """Base model; default: the one named in the adapter's config."""
    seconds: float = 8.0
    """Length of each clip in seconds."""
    guidance: float = 3.0
    """Classifier-free guidance scale (1: none)."""
    top_k: int = 250
    """Top-k sampling."""
    temperature: float = 1.0
    """Sampling temperature."""
    seed: int = 0
    """Random seed: the same seed gives the same audio."""
    greedy: bool = False
    """Greedy decoding instead of sampling."""
    device: str | None = None
    """cuda or cpu; default: cuda when available."""


def main(argv: list[str]) -> int:
    args = tyro.cli(GenerateArgs, args=argv, prog="musicgen-lora generate")
    if args.adapter is not None:
        model, tokenizer = load_with_adapter(args.adapter, args.model, args.device)
    else:
        model, tokenizer = load_musicgen(args.model or "facebook/musicgen-small")
        model = model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rate = audio_format(base).sample_rate
    audio = generate_audio(
        model,
        tokenizer,
        list(args.prompt),
        seconds=args.seconds,
        guidance=args.guidance,
        top_k=args.top_k,
        temperature=args.temperature,
        seed=args.seed,
        greedy=args.greedy,
    )
    for path, clip, prompt in zip(output_paths(args.out, len(args.prompt)), audio, args.prompt, strict=True):
        write_wav(path, clip, rate)
        print(f"{path}  {clip.shape[-1] / rate:.2f} s  {prompt!r}")
    return 0
