"""One teacher-forced MusicGen forward pass on a collated batch: text states (+ chroma for melody
models) -> decoder -> loss."""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutput

from musicgen_lora.modeling.families import is_melody
from musicgen_lora.modeling.loss import codebook_cross_entropy
from musicgen_lora.modeling.melody import condition_states


class TextStateCache:
    """Frozen T5 outputs per distinct caption.

    The text encoder is frozen and deterministic, so a caption's hidden states never change: computing
    them once per caption instead of once per step removes T5 from the training step entirely.
    """

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._states: dict[tuple[int, ...], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._states)

    def encode(self, text_encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Captions are right-padded, so a caption's key is its unpadded token ids.
        keys = [tuple(row[: int(n)].tolist()) for row, n in zip(input_ids, attention_mask.sum(1), strict=True)]
        fresh: dict[tuple[int, ...], torch.Tensor] = {}
        for key in dict.fromkeys(key for key in keys if key not in self._states):
            # One caption at a time, unpadded: its states must not depend on which batch first held
            # it (padding changes the float summation order), or a resumed run would drift.
            ids = torch.tensor([key], dtype=input_ids.dtype, device=input_ids.device)
            with torch.no_grad():
                fresh[key] = text_encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            if len(self._states) < self.max_entries:
                self._states[key] = fresh[key]
        rows = [self._states.get(key, fresh.get(key)) for key in keys]
        # Padding positions stay zero: MusicGen multiplies text states by the attention mask anyway.
        out = rows[0].new_zeros((len(rows), input_ids.shape[1], rows[0].shape[-1]))
        for i, row in enumerate(rows):
            out[i, : row.shape[0]] = row
        return out


def text_states(model, batch: dict[str, torch.Tensor], cache: TextStateCache | None) -> torch.Tensor:
    """T5 hidden states of the batch's captions. T5 is frozen: no gradient, and eval mode (no dropout)
    even while the decoder trains, so the states equal those `generate()` sees and a cached state is
    exactly what T5 would compute again (audiocraft also keeps its frozen T5 in eval mode)."""
    inner = getattr(model, "module", model)  # under DistributedDataParallel: T5 is frozen, call it directly
    text_encoder = inner.get_encoder() if hasattr(inner, "get_encoder") else inner.text_encoder
    training = text_encoder.training
    text_encoder.eval()
    try:
        if cache is not None:
            return cache.encode(text_encoder, batch["input_ids"], batch["attention_mask"])
        with torch.no_grad():
            return text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    finally:
        text_encoder.train(training)


def forward_loss(model, batch: dict[str, torch.Tensor], cache: TextStateCache | None = None):
    """Loss and per-codebook statistics for one batch.

    The condition mask zeroes dropped captions' text states (MusicGen multiplies them by the mask),
    giving the same null condition `generate()` uses for guidance. A melody model gets the chroma
    and text prefix instead of cross-attention (`melody.condition_states`; the batch's chroma_mask
    drops melodies), and the loss reads the logits of the audio positions only.
    """
    states = text_states(model, batch, cache)
    text_mask = batch["attention_mask"] * batch["condition_mask"][:, None]
    if is_melody(getattr(model, "module", model)):
        prefix = condition_states(getattr(model, "module", model), states, text_mask, batch.get("chroma"),
                                  batch.get("chroma_mask"))
        outputs = model(encoder_hidden_states=prefix, decoder_input_ids=batch["decoder_input_ids"], use_cache=False)
    else:
        outputs = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=states),
            attention_mask=text_mask,
            decoder_input_ids=batch["decoder_input_ids"],
            use_cache=False,
        )
    return codebook_cross_entropy(outputs.logits, batch["labels"])
