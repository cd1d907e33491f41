"""Random MusicGen models built in code (no download): the tiny ones of the tests and --smoke, one
per family, and musicgen-small's architecture for benchmarks.

`tiny` (mono), `tiny-stereo` (8 codebooks, L/R interleaved), `tiny-melody` and `tiny-stereo-melody`
(MusicgenMelodyForConditionalGeneration: chroma + text prepended to the decoder input) share one
toy codec, text encoder and decoder size, so every code path runs on CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from transformers import (
    ByT5Tokenizer,
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    T5Config,
)

from musicgen_lora.modeling.families import FAMILIES, configure_special_tokens
from musicgen_lora.modeling.known_warnings import musicgen_warnings_silenced

TINY_MODEL = "tiny"
"""Name of the random tiny MusicGen built in code: no download, runs every code path on CPU."""
TINY_MODELS = ("tiny", "tiny-stereo", "tiny-melody", "tiny-stereo-melody")
"""Every tiny family: mono, stereo, melody, stereo melody (each usable as --model.name)."""
TINY_CHROMA_FRAMES = 32
"""The tiny melody models' chroma_length: about 4 s of chroma (musicgen-melody: 235, 30 s)."""


def is_tiny(name: str | None) -> bool:
    return name in TINY_MODELS


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
    decoder = MusicgenDecoderConfig(**_decoder_sizes(), num_codebooks=4)
    return MusicgenConfig(text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder)


def tiny_stereo_config() -> MusicgenConfig:
    """`tiny` in stereo: the same mono codec encodes L and R; 8 codebooks interleave them (L0 R0 L1
    R1 ...), delays [0, 0, 1, 1, 2, 2, 3, 3], as facebook/musicgen-stereo-*."""
    config = tiny_musicgen_config()
    return MusicgenConfig(
        text_encoder=config.text_encoder, audio_encoder=config.audio_encoder,
        decoder=MusicgenDecoderConfig(**{**_decoder_sizes(), "num_codebooks": 8, "audio_channels": 2}),
    )


def tiny_melody_config(audio_channels: int = 1) -> MusicgenMelodyConfig:
    """`tiny` as MusicGen-Melody: no cross-attention; 12-bin chroma and text states prepended."""
    config = tiny_musicgen_config()
    decoder = MusicgenMelodyDecoderConfig(
        **{**_decoder_sizes(), "num_codebooks": 4 * audio_channels, "audio_channels": audio_channels}
    )
    return MusicgenMelodyConfig(
        text_encoder=config.text_encoder, audio_encoder=config.audio_encoder, decoder=decoder,
        num_chroma=12, chroma_length=TINY_CHROMA_FRAMES,
    )


def _decoder_sizes() -> dict:
    return {"vocab_size": 2048, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
            "max_position_embeddings": 4096, "dropout": 0.0}


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


RANDOM_ARCHITECTURES: dict[str, Callable[[], PreTrainedConfig]] = {
    "tiny": tiny_musicgen_config,
    "tiny-stereo": tiny_stereo_config,
    "tiny-melody": tiny_melody_config,
    "tiny-stereo-melody": lambda: tiny_melody_config(audio_channels=2),
    "small": small_musicgen_config,
}
"""Architectures `build_random_musicgen` builds in code: the tiny families for tests, small for benchmarks."""


def build_random_musicgen(architecture: str = "tiny", seed: int = 0):
    """A MusicGen (or MusicGen-Melody) with random weights (no download); weights depend only on
    `architecture` and `seed`."""
    config = RANDOM_ARCHITECTURES[architecture]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FAMILIES[config.model_type].model_class()(config)
        _init_codebooks_from_audio(model)
        if hasattr(model, "audio_enc_to_dec_proj"):
            # A trained melody model follows its chroma; at the default init scale (0.02) the
            # projected chroma is lost next to the position embeddings and the melody changes nothing.
            torch.nn.init.normal_(model.audio_enc_to_dec_proj.weight, std=1.0)
    model.generation_config = GenerationConfig(
        max_length=256, do_sample=True, top_k=250, guidance_scale=3.0
    )
    configure_special_tokens(model)
    return model.eval()


def build_tiny_musicgen(seed: int = 0, name: Literal["tiny", "tiny-stereo", "tiny-melody", "tiny-stereo-melody"] = "tiny"):
    """A tiny random MusicGen of the tests and --smoke (see `tiny_musicgen_config`), of the family
    `name` names. Weights depend only on `name` and `seed`, so an adapter trained on it can be
    re-applied later."""
    with musicgen_warnings_silenced():
        return build_random_musicgen(name, seed)


def _init_codebooks_from_audio(model, seconds: float = 8.0) -> None:
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
