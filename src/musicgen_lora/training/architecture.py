"""What training memory depends on in a MusicGen architecture, read from its config alone: the
decoder's shape, parameter counts per part, and the decoder modules LoRA can wrap.

`load_architecture` takes a built-in architecture (tiny, small, medium, large), a local checkpoint
folder (config.json only) or a Hub id (config.json from the local cache when offline) and builds the
model on torch's meta device (no memory, no weights). torch and transformers load only when called.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BUILT_IN = ("tiny", "tiny-stereo", "tiny-melody", "tiny-stereo-melody", "small", "medium", "large")
"""Architectures built in code, no download: the test models and the published MusicGen sizes."""

# Published MusicGen decoders (facebook/musicgen-{medium,large}); T5-base and the 32 kHz EnCodec
# are the same as musicgen-small's.
_DECODER_SIZES = {
    "medium": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24, "ffn_dim": 6144},
    "large": {"hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32, "ffn_dim": 8192},
}


class ArchitectureError(ValueError):
    """The model named cannot be read as a MusicGen architecture; the message says what to pass."""


@dataclass(frozen=True)
class AdaptableModule:
    """A decoder module LoRA can wrap: its name in MusicgenForConditionalGeneration and its shape."""

    name: str
    kind: Literal["linear", "embedding"]
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Architecture:
    """What memory depends on, read from a MusicGen config (see `load_architecture`)."""

    name: str
    layers: int
    d_model: int
    ffn_dim: int
    heads: int
    codebooks: int
    vocab: int
    audio_channels: int
    frame_rate: float
    text_d_model: int
    hidden_dropout: float
    activation_dropout: float
    parameters: dict[str, int]
    """Parameter count per top-level part: text_encoder, audio_encoder, decoder, enc_to_dec_proj."""
    float_buffers: dict[str, int] = field(default_factory=dict)
    """Floating-point buffer elements per top-level part (position table, codebooks)."""
    other_buffer_bytes: int = 0
    """Integer buffers, in bytes."""
    adaptable: tuple[AdaptableModule, ...] = ()
    cross_attention: bool = True
    """MusicGen attends to the text states; MusicGen-Melody prepends them (and the chroma) instead."""
    prefix_frames: int = 0
    """MusicGen-Melody: chroma frames prepended to the decoder input (its chroma_length)."""
    stored_itemsize: int = 4
    """Bytes per weight in the checkpoint's files (its config's dtype; published MusicGen
    checkpoints are fp32)."""

    @property
    def max_delay(self) -> int:
        """Extra decoder steps of the delay pattern (codebook k delayed by k; stereo pairs share)."""
        return (self.codebooks // 2 if self.audio_channels == 2 else self.codebooks) - 1

    def positions(self, window_seconds: float) -> int:
        """Audio positions of a window (what the loss reads): its frames plus the delay pattern's tail."""
        return max(1, round(window_seconds * self.frame_rate)) + self.max_delay

    def prefix(self, text_tokens: int) -> int:
        """Decoder positions before the audio: MusicGen-Melody's chroma and text states, else none."""
        return 0 if self.cross_attention else self.prefix_frames + text_tokens



def lora_modules(arch: Architecture, targets: tuple[str, ...]) -> list[AdaptableModule]:
    """The decoder modules `targets` adapt, matched exactly as `model.find_lora_targets` matches them."""
    from musicgen_lora.modeling.model import LoraTargetError, lora_target_regex

    chosen: dict[str, AdaptableModule] = {}
    for target in targets:
        pattern = re.compile(lora_target_regex((target,)))
        hits = [module for module in arch.adaptable if pattern.match(module.name)]
        if not hits:
            raise LoraTargetError(f"LoRA target {target!r} matches no module under 'decoder' (set --lora-targets).")
        chosen.update({module.name: module for module in hits})
    return sorted(chosen.values(), key=lambda module: module.name)


def lora_parameter_count(modules: Iterable[AdaptableModule], r: int) -> int:
    """A (r x in) and B (out x r) per linear; A (r x num_embeddings) and B (dim x r) per embedding."""
    return sum(r * (module.in_features + module.out_features) for module in modules)



def load_architecture(name: str, revision: str | None = None) -> Architecture:
    """The architecture of `name`: a built-in one (BUILT_IN), a local checkpoint
    folder (its config.json only), or a Hub id whose config.json is in the local Hugging Face cache
    (or downloadable). No weights are read."""
    return architecture_from_config(musicgen_config(name, revision), name)


def musicgen_config(name: str, revision: str | None = None):
    """The config of a built-in architecture, a local folder or a Hub id (config.json only)."""
    from musicgen_lora.modeling import model as model_lib

    if name in model_lib.RANDOM_ARCHITECTURES:
        return model_lib.RANDOM_ARCHITECTURES[name]()
    if name in _DECODER_SIZES:
        config = model_lib.small_musicgen_config()
        for key, value in _DECODER_SIZES[name].items():
            setattr(config.decoder, key, value)
        return config
    local = Path(name).expanduser()
    if local.exists():
        path = local / "config.json" if local.is_dir() else local
        if not path.is_file():
            raise ArchitectureError(f"{local} holds no config.json: pass a MusicGen checkpoint folder, or one of {', '.join(BUILT_IN)}")
        return _config_from_dict(json.loads(path.read_text()), str(local))
    return _config_from_dict(json.loads(Path(_hub_config(name, revision)).read_text()), name)


def _hub_config(name: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    from musicgen_lora.modeling.model import hub_unreachable

    offline = hub_unreachable()
    try:
        return hf_hub_download(name, "config.json", revision=revision, local_files_only=offline)
    except Exception as error:  # any hub failure: say what to pass instead
        where = ("is not in the local Hugging Face cache and the Hub cannot be reached (offline)" if offline
                 else "could not be downloaded (no such model id, or no access)")
        raise ArchitectureError(
            f"{name!r}: its config.json {where}. Pass a built-in architecture ({', '.join(BUILT_IN)}) or a local "
            f"checkpoint folder; cause: {type(error).__name__}"
        ) from error


def _config_from_dict(config: dict, name: str):
    from musicgen_lora.modeling.families import UnsupportedModelError, family_of_config

    try:
        family = family_of_config(config, name)
    except UnsupportedModelError as error:
        raise ArchitectureError(str(error)) from None
    return family.config_class().from_dict(config)


def architecture_from_config(config, name: str = "") -> Architecture:
    """Counts from a MusicGen or MusicGen-Melody config: the model is built on torch's meta device
    (no memory, no weights)."""
    import torch

    from musicgen_lora.modeling.families import FAMILIES
    from musicgen_lora.modeling.known_warnings import musicgen_warnings_silenced

    with torch.device("meta"), musicgen_warnings_silenced():
        model = FAMILIES[config.model_type].model_class()(config)
    return architecture_of(model, name)


def architecture_of(model, name: str = "") -> Architecture:
    """Counts from a built MusicGen or MusicGen-Melody model (meta, CPU or GPU; LoRA-wrapped or not):
    parameters and buffers per top-level part, and the decoder modules LoRA can wrap."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters: dict[str, int] = {}
    float_buffers: dict[str, int] = {}
    other_buffers = 0
    for part, module in inner.named_children():
        parameters[part] = sum(p.numel() for n, p in module.named_parameters() if "lora_" not in n)
        for buffer in module.buffers():
            if buffer.is_floating_point():
                float_buffers[part] = float_buffers.get(part, 0) + buffer.numel()
            else:
                other_buffers += buffer.numel() * buffer.element_size()
    adaptable = []
    for module_name, module in inner.named_modules():
        # A LoRA-wrapped module stands for itself; its base_layer and adapter children do not.
        if not module_name.startswith("decoder.") or "lora_" in module_name or module_name.endswith(".base_layer"):
            continue
        base = getattr(module, "base_layer", module)  # a LoRA-wrapped module reports its base shape
        if isinstance(base, torch.nn.Linear):
            adaptable.append(AdaptableModule(module_name, "linear", base.in_features, base.out_features))
        elif isinstance(base, torch.nn.Embedding):
            adaptable.append(AdaptableModule(module_name, "embedding", base.num_embeddings, base.embedding_dim))
    config = inner.config
    decoder = config.decoder
    codec = config.audio_encoder
    melody = config.model_type == "musicgen_melody"
    return Architecture(
        name=name or getattr(config, "_name_or_path", "") or "musicgen",
        layers=decoder.num_hidden_layers, d_model=decoder.hidden_size, ffn_dim=decoder.ffn_dim,
        heads=decoder.num_attention_heads, codebooks=decoder.num_codebooks, vocab=decoder.vocab_size,
        audio_channels=decoder.audio_channels, frame_rate=float(codec.frame_rate),
        text_d_model=config.text_encoder.hidden_size if hasattr(config.text_encoder, "hidden_size") else config.text_encoder.d_model,
        hidden_dropout=float(decoder.dropout), activation_dropout=float(decoder.activation_dropout),
        parameters=parameters, float_buffers=float_buffers, other_buffer_bytes=other_buffers, adaptable=tuple(adaptable),
        cross_attention=not melody, prefix_frames=int(config.chroma_length) if melody else 0,
        stored_itemsize=_itemsize(getattr(config, "dtype", None)),
    )


def _itemsize(dtype) -> int:
    """2 for a config saying bfloat16 / float16, else 4 (float32, or no dtype recorded)."""
    return 2 if str(dtype).removeprefix("torch.") in ("bfloat16", "float16") else 4


