"""Batches for MusicGen training: tokenized captions, condition dropout, delay-pattern labels.

MusicGen predicts K codebooks in parallel with codebook k delayed by k steps (the "delay pattern").
`generate()` builds that layout with `build_delay_pattern_mask`; the labels here use exactly the same
layout, so what training teaches is what inference asks for. Plain arguments only, no config objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
"""Label value for positions with nothing to learn (the loss skips them)."""


def codebook_delays(num_codebooks: int, audio_channels: int = 1) -> list[int]:
    """Delay of each codebook: k for mono; stereo interleaves L/R pairs that share a delay."""
    if audio_channels == 2:
        return [k // 2 for k in range(num_codebooks)]
    return list(range(num_codebooks))


def delay_pattern_sequence(
    codes: torch.Tensor, valid: torch.Tensor, delays: Sequence[int], special_token_id: int
) -> torch.Tensor:
    """Lay out codes (B, K, T) in the delay pattern: (B, K, T + max_delay + 1).

    Row k holds the start token at position `delays[k]` and frame t at `delays[k] + 1 + t`; every
    other position (before the start, after the last frame, and frames where `valid` is False)
    holds `special_token_id`, which is MusicGen's pad = bos = decoder start token.
    """
    batch, num_codebooks, frames = codes.shape
    length = frames + max(delays) + 1
    sequence = torch.full((batch, num_codebooks, length), special_token_id, dtype=torch.long)
    filled = torch.where(valid[:, None, :], codes.long(), special_token_id)
    for k, delay in enumerate(delays):
        sequence[:, k, delay + 1 : delay + 1 + frames] = filled[:, k]
    return sequence


def delay_pattern_labels(
    codes: torch.Tensor, valid: torch.Tensor, delays: Sequence[int], special_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs (B*K, L) and labels (B, L, K) for teacher forcing in the delay pattern.

    Inputs are the sequence without its last step, labels the sequence without its first step
    (next-token prediction); label positions holding the special token become IGNORE_INDEX.
    """
    sequence = delay_pattern_sequence(codes, valid, delays, special_token_id)
    decoder_input_ids = sequence[:, :, :-1].reshape(-1, sequence.shape[-1] - 1)
    targets = sequence[:, :, 1:]
    labels = targets.masked_fill(targets == special_token_id, IGNORE_INDEX).transpose(1, 2)
    return decoder_input_ids, labels.contiguous()


@dataclass(frozen=True)
class Example:
    """One training window, as the dataset yields it."""

    codes: torch.Tensor  # (K, T) int, the window's codes
    valid: torch.Tensor  # (T,) bool, False where the window is padding
    caption: str
    drop_condition: bool  # classifier-free-guidance dropout, decided by the dataset's seeded RNG
    chroma: torch.Tensor | None = None  # (F, num_chroma) one-hot melody of the window (melody models)
    drop_chroma: bool = False  # melody dropout (the null chroma), drawn apart from the caption's


class MusicgenCollator:
    """Turns Examples into model inputs.

    Condition dropout zeroes the caption's attention mask: MusicGen multiplies the (projected) text
    states by that mask, so a dropped row sees all-zero text states behind a fully masked cross
    attention, which is exactly the null condition `generate()` builds for guidance. The text encoder
    itself always runs on the real mask, so a fully masked row never reaches its softmax. Windows of
    a melody model carry their chroma, batched as `chroma` with `chroma_mask` (0: melody dropped).
    """

    def __init__(self, tokenizer, *, delays: Sequence[int], special_token_id: int, max_text_tokens: int = 256):
        self.tokenizer = tokenizer
        self.delays = list(delays)
        self.special_token_id = special_token_id
        self.max_text_tokens = max_text_tokens

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        text = self.tokenizer(
            [example.caption for example in examples],
            padding=True,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        codes = torch.stack([example.codes for example in examples])
        valid = torch.stack([example.valid for example in examples])
        decoder_input_ids, labels = delay_pattern_labels(codes, valid, self.delays, self.special_token_id)
        keep = torch.tensor([not example.drop_condition for example in examples])
        batch = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "condition_mask": keep.long(),
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
        }
        if examples[0].chroma is not None:  # a melody model's windows: (B, F, num_chroma) + its dropout
            batch["chroma"] = torch.stack([example.chroma for example in examples]).float()
            batch["chroma_mask"] = torch.tensor([not example.drop_chroma for example in examples]).long()
        return batch
