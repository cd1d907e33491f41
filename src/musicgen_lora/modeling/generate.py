"""Inference: a base MusicGen plus a LoRA adapter -> WAV files. Deterministic for a seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
import torch

from musicgen_lora.modeling.collate import codebook_delays
from musicgen_lora.modeling.families import family_of, is_melody
from musicgen_lora.modeling.known_warnings import musicgen_warnings_silenced
from musicgen_lora.modeling.melody import prefix_positions
from musicgen_lora.modeling.model import audio_format, load_musicgen


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
    melody=None,
) -> np.ndarray:
    """Audio (batch, channels, samples) float32 for `prompts`; greedy ignores top_k/temperature.

    `melody` (melody models only): one-hot chroma features (frames, 12) for every prompt or
    (prompts, frames, 12) one per prompt; None: the null melody (text only). A text-only model
    refuses a melody rather than ignoring it.

    The RNG is seeded locally (and restored afterwards), so a seed gives the same audio every time
    without disturbing the caller's random state (training resumes stay exact).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fmt = audio_format(base)
    _, max_new_tokens = generation_length(seconds, fmt.frame_rate, base.config.decoder.num_codebooks, fmt.channels)
    device = next(model.parameters()).device
    inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    if melody is not None:
        inputs["input_features"] = melody_features(base, melody, len(prompts)).to(device)
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


def melody_features(model, melody, count: int) -> torch.Tensor:
    """(count, frames, num_chroma) chroma for generate's `input_features`, checked against the model."""
    if not is_melody(model):
        raise ValueError(f"{family_of(model).architecture} has no melody input: a melody needs a MusicGen-Melody "
                         "model (model_type musicgen_melody, e.g. facebook/musicgen-melody)")
    features = torch.as_tensor(melody, dtype=torch.float32)
    features = features.expand(count, *features.shape) if features.dim() == 2 else features
    if features.shape[0] != count or features.shape[-1] != model.config.num_chroma:
        raise ValueError(f"melody of shape {tuple(features.shape)} for {count} prompts and {model.config.num_chroma} chroma bins")
    return features


def base_of(adapter: Path, model_name: str | None = None, revision: str | None = None) -> tuple[str, str | None]:
    """(base model, revision) for an adapter: the ones recorded in its adapter_config.json unless
    given. The recorded revision pins the recorded model only, never another --model."""
    adapter_config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    recorded = adapter_config.get("base_model_name_or_path")
    name = model_name or recorded
    if not name:
        raise ValueError(f"{adapter} does not name its base model; pass --model")
    if revision is None and name == recorded:
        revision = adapter_config.get("revision")
    return name, revision


def load_with_adapter(adapter: Path, model_name: str | None = None, device: str | None = None, revision: str | None = None):
    """Base model named in the adapter's config (or `model_name`), at the revision the adapter
    recorded (or `revision`), with the adapter applied."""
    from peft import PeftModel

    name, revision = base_of(adapter, model_name, revision)
    model, tokenizer = load_musicgen(name, revision=revision)
    with musicgen_warnings_silenced():
        model = PeftModel.from_pretrained(model, adapter)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """(channels, samples) float audio -> 16-bit WAV, clipped to [-1, 1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.clip(audio.T, -1.0, 1.0), sample_rate, subtype="PCM_16")


def max_seconds(model) -> float:
    """The longest clip this model generates in one go (see max_generation_seconds)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fmt = audio_format(base)
    delay = max(codebook_delays(base.config.decoder.num_codebooks, fmt.channels))
    # A melody model's decoder also holds the chroma prefix (the prompt's text tokens come on top).
    positions = base.config.decoder.max_position_embeddings - prefix_positions(base)
    return max_generation_seconds(positions, fmt.frame_rate, delay)


def max_generation_seconds(max_positions: int, frame_rate: int, max_delay: int) -> float:
    """Longest clip one generate() call can make: the decoder sees the start token, the frames and
    the delay pattern's extra steps, and has max_position_embeddings positions for all of them."""
    return (max_positions - 1 - max_delay) / frame_rate
