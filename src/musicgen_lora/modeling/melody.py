"""MusicGen-Melody's conditioning prefix, built as transformers builds it.

A melody model has no cross-attention: the decoder input is [projected chroma (repeated or cut to
`chroma_length` frames), projected text states (zero where the text is masked), audio tokens].
`condition_states` reproduces `MusicgenMelodyForConditionalGeneration.forward` (training) and the
null condition of `generate()` (classifier-free guidance: text states zero, chroma one-hot on bin 0),
so dropout in training teaches exactly the unconditional branch generation asks for.
"""

from __future__ import annotations

import math

import torch

from musicgen_lora.modeling.families import is_melody


def null_chroma(batch: int, frames: int, num_chroma: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """transformers' null melody condition: every frame one-hot on bin 0 (also the chroma of silence)."""
    chroma = torch.zeros(batch, frames, num_chroma, device=device, dtype=dtype)
    chroma[:, :, 0] = 1
    return chroma


def one_hot_chroma(bins, num_chroma: int) -> torch.Tensor:
    """Chroma bin indices (..., frames) -> the feature extractor's one-hot features (..., frames, num_chroma)."""
    return torch.nn.functional.one_hot(torch.as_tensor(bins).long(), num_chroma).float()


def prefix_positions(model) -> int:
    """Decoder positions a melody model spends on the chroma before the text and audio (0 otherwise)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(base.config.chroma_length) if is_melody(base) else 0


def condition_states(
    model, text: torch.Tensor, text_mask: torch.Tensor, chroma: torch.Tensor | None, keep_chroma: torch.Tensor | None = None
) -> torch.Tensor:
    """The decoder's prefix (B, chroma_length + S, hidden) of a melody model.

    text: T5 states (B, S, d_text); text_mask: (B, S), zero where a token is padding or the caption
    is dropped; chroma: (B, F, num_chroma) one-hot features, or None for the null melody;
    keep_chroma: (B,), 0 where the melody is dropped (replaced by the null chroma).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    projection = getattr(base, "enc_to_dec_proj", None)
    text = projection(text) if projection is not None else text
    text = text * text_mask[..., None].to(text.dtype)
    config = base.config
    null = null_chroma(text.shape[0], 1 if chroma is None else chroma.shape[1], config.num_chroma, text.device)
    if chroma is None:
        chroma = null
    elif keep_chroma is not None:
        chroma = torch.where(keep_chroma.bool()[:, None, None], chroma.float(), null)
    audio_projection = getattr(base, "audio_enc_to_dec_proj", None)
    chroma = chroma.to(device=text.device, dtype=text.dtype)
    audio = audio_projection(chroma) if audio_projection is not None else chroma
    if audio.shape[1] < config.chroma_length:  # repeated, then cut, as transformers does
        audio = audio.repeat(1, math.ceil(config.chroma_length / audio.shape[1]), 1)
    return torch.cat([audio[:, : config.chroma_length], text], dim=1)
