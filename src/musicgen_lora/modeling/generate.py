"""Inference: a base MusicGen plus a LoRA adapter -> WAV files. Deterministic for a seed.

`prepare_for_inference` merges the adapter into the base weights (one matmul per projection instead
of three) and picks the dtype; `generate_audio` generates from text, optionally continuing an audio
prompt encoded with the model's own EnCodec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
import torch

from musicgen_lora.modeling.collate import codebook_delays
from musicgen_lora.modeling.families import cast_keeping_codec_fp32, family_of, is_melody
from musicgen_lora.modeling.hub import resolve_adapter
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
    audio_prompt: np.ndarray | None = None,
) -> np.ndarray:
    """Audio (batch, channels, samples) float32 for `prompts`; greedy ignores top_k/temperature.

    `melody` (melody models only): one-hot chroma features (frames, 12) for every prompt or
    (prompts, frames, 12) one per prompt; None: the null melody (text only). A text-only model
    refuses a melody rather than ignoring it.

    With `audio_prompt` ((channels, samples) at the model's sample rate, a whole number of codec
    frames), every prompt continues that audio: it is encoded with the model's EnCodec and its codes
    start the decoder (transformers lays them out in the delay pattern and forces them), and the
    result holds the prompt, as EnCodec decodes its codes, followed by `seconds` of new audio.

    The RNG is seeded locally (and restored afterwards), so a seed gives the same audio every time
    without disturbing the caller's random state (training resumes stay exact).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fmt = audio_format(base)
    _, max_new_tokens = generation_length(seconds, fmt.frame_rate, base.config.decoder.num_codebooks, fmt.channels)
    device = next(model.parameters()).device
    inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    if melody is not None:
        # in the projection's dtype: a bf16 model (GPU, or CPU with native bf16) samples outside autocast
        dtype = base.audio_enc_to_dec_proj.weight.dtype
        inputs["input_features"] = melody_features(base, melody, len(prompts)).to(device=device, dtype=dtype)
    prompt_samples = 0
    if audio_prompt is not None:
        prompt_samples = audio_prompt.shape[-1]
        inputs.update(audio_prompt_inputs(base, audio_prompt, len(prompts), device))
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
    samples = prompt_samples + round(seconds * fmt.sample_rate)
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


def audio_prompt_inputs(base, audio: np.ndarray, batch: int, device: torch.device) -> dict:
    """generate() inputs that start every one of `batch` rows with `audio` ((channels, samples) at
    the model's sample rate). The processor's feature extractor makes `input_values` and
    `padding_mask`, as MusicgenProcessor(audio=...) does; each copy has the same length, so the mask
    holds no padding. MusicGen's generate() encodes them itself; MusicGen-Melody's takes no audio,
    so for it the same codes are made here (`audio_prompt_codes`) and passed as decoder_input_ids."""
    from transformers import EncodecFeatureExtractor

    channels, samples = audio.shape
    extractor = EncodecFeatureExtractor(feature_size=channels, sampling_rate=audio_format(base).sample_rate)
    clip = np.asarray(audio[0] if channels == 1 else audio, dtype=np.float32)
    features = extractor([clip] * batch, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    assert features["input_values"].shape == (batch, channels, samples), features["input_values"].shape
    values, mask = features["input_values"].to(device), features["padding_mask"].to(device)
    if hasattr(base, "_prepare_audio_encoder_kwargs_for_generation"):
        return {"input_values": values, "padding_mask": mask}
    return {"decoder_input_ids": audio_prompt_codes(base, values, mask)}


@torch.no_grad()
def audio_prompt_codes(base, input_values: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """(batch * num_codebooks, frames) decoder_input_ids for an audio prompt, made as transformers'
    MusicGen generate() makes them from input_values: EnCodec codes at the codec's bandwidth, a
    stereo model's left and right codes interleaved (L0 R0 L1 R1 ...)."""
    codec, channels = base.audio_encoder, base.config.decoder.audio_channels
    halves = [input_values] if channels == 1 else [input_values[:, :1], input_values[:, 1:]]
    codes = [codec.encode(half, padding_mask).audio_codes[0] for half in halves]  # (batch, K, frames) each
    codes = torch.stack(codes, dim=2).flatten(1, 2)  # (batch, K * channels, frames), channels interleaved
    return codes.reshape(-1, codes.shape[-1])


def inference_dtype(device: torch.device | str, dtype: str = "auto") -> torch.dtype:
    """auto: bf16 on GPUs that support it, fp16 on older ones, fp32 on CPU; else the named dtype."""
    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def prepare_for_inference(model, *, merge: bool = True, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32):
    """The model ready to generate: the LoRA update merged into the base weights (in place, in the
    precision it was loaded in, before any cast; `merge=False` keeps the adapter separate), on
    `device` in `dtype`, with the codec kept in fp32 (its codes must not depend on the dtype)."""
    if merge and hasattr(model, "merge_and_unload"):
        with musicgen_warnings_silenced():
            model = model.merge_and_unload()
    model = model.to(device=device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cast_keeping_codec_fp32(base, dtype)  # a codec cast to bf16 and back would not be the codec
    return model.eval()


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


def load_with_adapter(adapter: Path | str, model_name: str | None = None, device: str | None = None,
                      revision: str | None = None):
    """Base model named in the adapter's config (or `model_name`), at the revision the adapter
    recorded (or `revision`), with the adapter applied (unmerged, fp32). `adapter` is a folder or a
    Hub repo id (see hub.resolve_adapter)."""
    from peft import PeftModel

    adapter = resolve_adapter(adapter)
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
