"""Load, configure, freeze and LoRA-wrap MusicGen; build the tiny offline MusicGen for tests.

Everything here takes plain arguments; `musicgen_lora.builders` turns config sections into calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import torch
from transformers import (
    AutoTokenizer,
    ByT5Tokenizer,
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerBase,
    T5Config,
)

from musicgen_lora.known_warnings import musicgen_warnings_silenced

TINY_MODEL = "tiny"
"""Name of the random tiny MusicGen built in code: no download, runs every code path on CPU."""


class ModelLoadError(RuntimeError):
    """The base model could not be loaded; the message says what to change."""


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


def tiny_musicgen_config() -> MusicgenConfig:
    """The real MusicGen architecture at toy size: 32 kHz, 50 Hz frames, 4 codebooks.

    The codec is coherent with the decoder (codebook size == decoder vocab, 4 quantizers at the
    2.2 kbps bandwidth), so encode -> train -> generate -> decode runs exactly as on the real model.
    """
    text_encoder = T5Config(
        vocab_size=384,  # ByT5's byte vocabulary: the offline tokenizer needs no files
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
    )
    audio_encoder = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=4,
        hidden_size=16,
        codebook_dim=16,
        codebook_size=2048,
        upsampling_ratios=[8, 5, 4, 4],  # hop 640 -> 50 frames per second, as musicgen-small
        target_bandwidths=[2.2],  # 2.2 kbps / (50 Hz * 11 bits) = 4 quantizers
        num_residual_layers=1,
        num_lstm_layers=1,
        use_causal_conv=False,
        normalize=False,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=128,
        num_codebooks=4,
        max_position_embeddings=4096,
        dropout=0.0,
    )
    return MusicgenConfig(text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder)


def small_musicgen_config() -> MusicgenConfig:
    """facebook/musicgen-small's architecture (T5-base, EnCodec 32 kHz, 24-layer 1024-wide decoder),
    written out so speed and memory can be measured with random weights and no download."""
    text_encoder = T5Config(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        feed_forward_proj="relu", relative_attention_num_buckets=32, decoder_start_token_id=0,
    )
    audio_encoder = EncodecConfig(
        sampling_rate=32000, audio_channels=1, num_filters=64, hidden_size=128, codebook_dim=128,
        codebook_size=2048, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
        num_residual_layers=1, num_lstm_layers=2, use_causal_conv=False, normalize=False,
        compress=2, kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=2048, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
        num_codebooks=4, max_position_embeddings=2048, dropout=0.1, activation_function="gelu",
    )
    return MusicgenConfig(text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder)


RANDOM_ARCHITECTURES = {"tiny": tiny_musicgen_config, "small": small_musicgen_config}
"""Architectures `build_random_musicgen` builds in code: tiny for tests, small for benchmarks."""


def build_random_musicgen(architecture: Literal["tiny", "small"] = "tiny", seed: int = 0) -> MusicgenForConditionalGeneration:
    """A MusicGen with random weights (no download); weights depend only on `architecture` and `seed`."""
    config = RANDOM_ARCHITECTURES[architecture]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(config)
        _init_codebooks_from_audio(model)
    model.generation_config = GenerationConfig(
        max_length=256, do_sample=True, top_k=250, guidance_scale=3.0
    )
    configure_special_tokens(model)
    return model.eval()


def build_tiny_musicgen(seed: int = 0) -> MusicgenForConditionalGeneration:
    """The tiny random MusicGen of the tests and --smoke (see `tiny_musicgen_config`). Weights
    depend only on `seed`, so an adapter trained on it can be re-applied later."""
    with musicgen_warnings_silenced():
        return build_random_musicgen("tiny", seed)


def _init_codebooks_from_audio(model: MusicgenForConditionalGeneration, seconds: float = 8.0) -> None:
    """Initialise the tiny codec's RVQ codebooks from its own encoder's frames (k-means-style).

    EnCodec's codebooks start at zero (they are learned buffers), which maps all audio to code 0;
    entries drawn from the encoder's residuals on varied calibration audio make the codes depend on
    the content, as with a trained codec. Runs under the builder's fixed seed, so it is deterministic.
    """
    codec = model.audio_encoder
    rate = codec.config.sampling_rate
    samples = int(seconds * rate)
    # Noise bursts and tones with random envelopes: frames differ, like drum hits do.
    envelope = torch.rand(samples // 1600).repeat_interleave(1600) ** 4
    tone = torch.sin(torch.arange(samples) * torch.rand(samples // 3200).repeat_interleave(3200) * 0.2)
    audio = (torch.randn(samples) * envelope + tone * envelope.flip(0)).reshape(1, 1, -1)
    with torch.no_grad():
        residual = codec.encoder(audio)[0].T  # (frames, dim)
        for layer in codec.quantizer.layers:
            picks = torch.randint(0, residual.shape[0], (layer.codebook.embed.shape[0],))
            spread = residual.std(0, keepdim=True) * 0.1
            layer.codebook.embed.copy_(residual[picks] + torch.randn_like(residual[picks]) * spread)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            residual = residual - layer.codebook.decode(layer.codebook.encode(residual))


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """ByT5's byte tokenizer: needs no vocabulary file, so it works offline."""
    return ByT5Tokenizer()


def load_musicgen(
    name: str,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerBase]:
    """Load a MusicGen checkpoint (hub id or local folder) and its text tokenizer.

    Fails with a message naming the offline alternatives when the weights cannot be reached.
    """
    if name == TINY_MODEL:
        model = build_tiny_musicgen().to(dtype)
        model.set_attn_implementation(_decoder_attention(attn_implementation))
        model.audio_encoder.float()  # as for real checkpoints below: the codec's codes never depend on dtype
        return model, tiny_tokenizer()
    local = Path(name).expanduser()
    # Without a network, from_pretrained retries for most of a minute before failing: decide once,
    # quickly, and then read only the local Hugging Face cache.
    offline = not local.exists() and hub_unreachable()
    try:
        with musicgen_warnings_silenced():
            model = MusicgenForConditionalGeneration.from_pretrained(
                name, revision=revision, dtype=dtype, attn_implementation=_decoder_attention(attn_implementation),
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
    # The codec must stay in fp32 even when the decoder runs in bf16: it only encodes/decodes.
    model.audio_encoder.float()
    configure_special_tokens(model)
    return model.eval(), tokenizer


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


def configure_special_tokens(model: MusicgenForConditionalGeneration) -> None:
    """Set pad = bos = decoder_start = codebook size on every config that reads them.

    `MusicgenForConditionalGeneration` shifts labels right with `config.decoder.decoder_start_token_id`;
    setting only the top-level config (a classic bug) leaves training without a start token.
    """
    special = model.config.decoder.vocab_size
    for config in (model.config.decoder, model.config, model.generation_config):
        config.pad_token_id = special
        config.bos_token_id = special
        config.decoder_start_token_id = special


def audio_format(model: MusicgenForConditionalGeneration) -> AudioFormat:
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


def codec_identity(model: MusicgenForConditionalGeneration, name: str) -> str:
    """A stable id of the codec: cached codes are only valid for the codec that made them."""
    codec_config = model.config.audio_encoder.to_dict()
    codec_config.pop("transformers_version", None)
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
    model: MusicgenForConditionalGeneration,
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
    from musicgen_lora.lora_dropout import install

    install(peft_model)
    return peft_model


def enable_gradient_checkpointing(model: MusicgenForConditionalGeneration) -> None:
    # Non-reentrant checkpointing works with frozen inputs (LoRA), no input-grad hook needed.
    model.decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.decoder.config.use_cache = False


def trainable_parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
