"""Load, configure, freeze and LoRA-wrap MusicGen and MusicGen-Melody (the class: `families`; the
tiny offline models of the tests: `tiny`, re-exported here).

Everything here takes plain arguments; `musicgen_lora.training.builders` turns config sections into calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from musicgen_lora.modeling.families import ModelLoadError as ModelLoadError
from musicgen_lora.modeling.families import (
    cast_keeping_codec_fp32,
    family_of,
    load_checked,
    read_family,
)
from musicgen_lora.modeling.families import configure_special_tokens as configure_special_tokens
from musicgen_lora.modeling.known_warnings import musicgen_warnings_silenced
from musicgen_lora.modeling.tiny import RANDOM_ARCHITECTURES as RANDOM_ARCHITECTURES
from musicgen_lora.modeling.tiny import TINY_MODEL as TINY_MODEL
from musicgen_lora.modeling.tiny import TINY_MODELS as TINY_MODELS
from musicgen_lora.modeling.tiny import build_random_musicgen as build_random_musicgen
from musicgen_lora.modeling.tiny import build_tiny_musicgen as build_tiny_musicgen
from musicgen_lora.modeling.tiny import is_tiny as is_tiny
from musicgen_lora.modeling.tiny import small_musicgen_config as small_musicgen_config
from musicgen_lora.modeling.tiny import tiny_musicgen_config as tiny_musicgen_config
from musicgen_lora.modeling.tiny import tiny_tokenizer as tiny_tokenizer


class LoraTargetError(ValueError):
    """A LoRA target matches no module of the decoder."""


@dataclass(frozen=True)
class AudioFormat:
    """What the model's codec expects and produces; derived from the model config, never set by hand."""

    sample_rate: int
    channels: int
    frame_rate: int
    hop_length: int
    num_codebooks: int
    codebook_size: int
    bandwidth: float

    @property
    def pad_token_id(self) -> int:
        # MusicGen uses the first id past the codebook for pad, bos and decoder start alike.
        return self.codebook_size


def load_musicgen(
    name: str,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load a MusicGen or MusicGen-Melody checkpoint (hub id or local folder) and its text tokenizer.

    The class comes from the checkpoint's config.json, read before any weight (see `families`): an
    unsupported architecture is refused before any work, and a load that would leave any weight
    randomly initialised or unused fails. Fails with a message naming the offline alternatives when
    the weights cannot be reached.
    """
    if is_tiny(name):
        model = build_tiny_musicgen(name=name)
        cast_keeping_codec_fp32(model, dtype)  # as checkpoints load (codec_kept_fp32)
        model.set_attn_implementation(_decoder_attention(attn_implementation))
        return model, tiny_tokenizer()
    local = Path(name).expanduser()
    # Without a network, from_pretrained retries for most of a minute before failing: decide once,
    # quickly, and then read only the local Hugging Face cache.
    offline = not local.exists() and hub_unreachable()
    try:
        family = read_family(name, revision=revision, local_files_only=offline)
        with musicgen_warnings_silenced():
            model = load_checked(
                family, name, revision=revision, dtype=dtype, attn_implementation=_decoder_attention(attn_implementation),
                local_files_only=offline,
            )
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=offline)
    except (OSError, ValueError) as error:
        if local.exists():
            where = f"the local folder {local} holds no MusicGen checkpoint"
        elif offline:
            where = f"{name!r} is not in the local Hugging Face cache and the Hub cannot be reached (offline)"
        else:
            where = f"{name!r} could not be downloaded (no such model id, or no access)"
        raise ModelLoadError(
            f"Cannot load MusicGen model {name!r}: {where}.\n"
            "  - for the offline CPU demo, run with --smoke (tiny random model + demo loops);\n"
            "  - with weights on disk, pass --model.name /local/path/to/musicgen-small;\n"
            f"  - cause: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    # The codec stays fp32 even when the decoder runs in bf16 (loaded so: families.codec_kept_fp32).
    model.audio_encoder.float()
    configure_special_tokens(model)
    return model.eval(), tokenizer


def describe(model) -> str:
    """One line naming the family and the channels, for the log."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    channels = "stereo" if base.config.decoder.audio_channels == 2 else "mono"
    return f"{family_of(base).architecture} ({channels}, {base.config.decoder.num_codebooks} codebooks)"


def _decoder_attention(attn_implementation: str) -> dict[str, str]:
    # For the decoder only: a plain string also applies to EnCodec, which has no SDPA, and
    # transformers 5 then refuses to load any MusicGen checkpoint ("EncodecModel does not support").
    return {"decoder": attn_implementation}


def hub_unreachable(timeout: float = 3.0) -> bool:
    """True in offline mode (HF_HUB_OFFLINE=1) or when one short TCP connect to the Hub fails.
    Behind a proxy the direct connect proves nothing, so the Hub counts as reachable there."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return True
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout).close()
    except OSError:
        return True
    return False


def audio_format(model: torch.nn.Module) -> AudioFormat:
    codec = model.config.audio_encoder
    bandwidth = float(codec.target_bandwidths[0])
    num_codebooks = model.config.decoder.num_codebooks
    return AudioFormat(
        sample_rate=int(codec.sampling_rate),
        channels=int(model.config.decoder.audio_channels),
        frame_rate=int(codec.frame_rate),
        hop_length=int(codec.hop_length),
        num_codebooks=num_codebooks,
        codebook_size=int(model.config.decoder.vocab_size),
        bandwidth=bandwidth,
    )


def codec_identity(model: torch.nn.Module, name: str) -> str:
    """A stable id of the codec: cached codes are only valid for the codec that made them."""
    codec_config = model.config.audio_encoder.to_dict()
    codec_config.pop("transformers_version", None)
    # The codec always runs in fp32 (codec_kept_fp32), whatever dtype the run loads the rest in;
    # older caches recorded float32 here, so they keep their id.
    if "dtype" in codec_config:
        codec_config["dtype"] = "float32"
    blob = json.dumps({"model": name, "codec": codec_config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def freeze(model: torch.nn.Module) -> None:
    """Freeze every base weight: T5 and EnCodec stay frozen; LoRA adds the only trainable weights."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def lora_target_regex(targets: tuple[str, ...], scope: str = "decoder") -> str:
    """A peft `target_modules` regex matching `targets` as module-name suffixes under `scope`.

    A target also matches indexed children (`embed_tokens` matches `embed_tokens.0` .. `.3`),
    so one name covers all codebooks.
    """
    alternatives = "|".join(re.escape(target) for target in targets)
    return rf"^{re.escape(scope)}\.(?:.*\.)?(?:{alternatives})(?:\.\d+)?$"


def find_lora_targets(model: torch.nn.Module, targets: tuple[str, ...], scope: str = "decoder") -> list[str]:
    """Names of the modules LoRA will wrap; raises LoraTargetError for a target that matches none."""
    names = [name for name, module in model.named_modules() if _is_lora_capable(module)]
    matched: list[str] = []
    for target in targets:
        pattern = re.compile(lora_target_regex((target,), scope))
        hits = [name for name in names if pattern.match(name)]
        if not hits:
            available = sorted({_suffix(name) for name in names if name.startswith(f"{scope}.")})
            raise LoraTargetError(
                f"LoRA target {target!r} matches no module under {scope!r}. "
                f"Choose from: {', '.join(available)} (set --lora.targets)."
            )
        matched.extend(hits)
    return sorted(set(matched))


def _is_lora_capable(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear | torch.nn.Embedding)


def _suffix(name: str) -> str:
    parts = name.split(".")
    return parts[-2] if parts[-1].isdigit() else parts[-1]


def apply_lora(
    model: torch.nn.Module,
    *,
    r: int,
    alpha: int,
    dropout: float,
    targets: tuple[str, ...],
):
    """Freeze the base model and wrap the decoder's `targets` with peft LoRA (adapter in fp32)."""
    from peft import LoraConfig, get_peft_model

    # Exact module names: a name pattern alone would also match containers such as the
    # `lm_heads` ModuleList, which LoRA cannot wrap.
    modules = find_lora_targets(model, targets)
    freeze(model)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=modules,
        bias="none",
    )
    with musicgen_warnings_silenced():
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    # Adapter weights train in fp32 whatever the base dtype: bf16 updates lose small steps.
    for name, parameter in peft_model.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.float()
    # peft's dropout, in fewer passes and without the fp32 round trip under autocast; same values.
    from musicgen_lora.modeling.lora_dropout import install

    install(peft_model)
    return peft_model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    # Non-reentrant checkpointing works with frozen inputs (LoRA), no input-grad hook needed.
    model.decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.decoder.config.use_cache = False


def trainable_parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
