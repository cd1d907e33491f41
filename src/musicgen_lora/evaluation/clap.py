"""CLAP (transformers `ClapModel`): text-audio similarity (`gen/clap`) and the audio embedding of
the standard CLAP FAD (`gen/fad_clap`), computed as fadtk's clap-laion models do."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from musicgen_lora.data.audio import resample

log = logging.getLogger(__name__)

ClapMode = Literal["auto", "download", "off"]


class ClapScorer:
    """CLAP audio and text embeddings (unit norm) and their cosine similarity.

    Audio is mixed to mono, resampled to the feature extractor's rate (48 kHz for LAION CLAP) and,
    for non-fusion checkpoints, cut to the first `max_length_s` seconds so features are
    deterministic (the extractor would otherwise crop longer clips at random).
    """

    def __init__(self, model, processor, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)

    @classmethod
    def load(cls, model_id: str, mode: ClapMode, device) -> tuple[ClapScorer | None, str | None]:
        """(scorer, None), or (None, notice) when CLAP is off or its weights are unavailable.

        auto reads the local Hugging Face cache only (an offline run never waits on the network);
        download fetches the weights when they are missing.
        """
        if mode == "off":
            return None, "CLAP metrics off (--metrics.clap off)."
        from transformers import ClapModel, ClapProcessor

        try:
            local_only = mode == "auto"
            model = ClapModel.from_pretrained(model_id, local_files_only=local_only)
            processor = ClapProcessor.from_pretrained(model_id, local_files_only=local_only)
        except (OSError, ValueError) as error:
            hint = (
                f"download them once with `hf download {model_id}` or pass --metrics.clap download"
                if mode == "auto"
                else "check the network and the model id (--metrics.clap-model)"
            )
            reason = (
                "not in the local Hugging Face cache"
                if mode == "auto" and isinstance(error, OSError)
                else (str(error).strip().splitlines() or [type(error).__name__])[0]
            )
            return None, (
                f"CLAP weights {model_id!r} are not available ({reason}); CLAP metrics are skipped (gen/clap, and "
                f"gen/fad_clap: the FAD comparable with published numbers; gen/fad stays, in EnCodec latents): {hint}."
            )
        return cls(model, processor, device), None

    @torch.no_grad()
    def audio_embeddings(self, clips: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        extractor = self.processor.feature_extractor
        fusion = bool(getattr(self.model.config.audio_config, "enable_fusion", False))
        waves = []
        for clip in clips:
            mono = resample(np.asarray(clip, dtype=np.float32).mean(0, keepdims=True), sample_rate, extractor.sampling_rate)[0]
            waves.append(mono if fusion else mono[: extractor.nb_max_samples])
        features = extractor(
            waves, sampling_rate=extractor.sampling_rate, return_tensors="pt",
            truncation="fusion" if fusion else "rand_trunc",
        ).to(self.device)
        return _unit(self.model.get_audio_features(**features))

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.processor.tokenizer(list(texts), padding=True, return_tensors="pt").to(self.device)
        return _unit(self.model.get_text_features(**tokens))

    def similarity(self, clips: Sequence[np.ndarray], sample_rate: int, texts: Sequence[str]) -> float:
        """Mean cosine similarity of each clip with its own text (-1..1, higher is better)."""
        audio = self.audio_embeddings(clips, sample_rate)
        text = self.text_embeddings(texts)
        return float(np.mean(np.sum(audio * text, axis=1)))

    def fad_embeddings(self, clips: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """One embedding per clip, as fadtk's clap-laion models: audio rounded to 16-bit PCM first."""
        return self.audio_embeddings([as_pcm16(clip) for clip in clips], sample_rate)


def as_pcm16(clip: np.ndarray) -> np.ndarray:
    """Float audio as 16-bit PCM would store it (clipped to [-1, 1], rounded to 1/32767 steps)."""
    return (np.round(np.clip(np.asarray(clip, dtype=np.float32), -1.0, 1.0) * 32767.0) / 32767.0).astype(np.float32)


def _unit(output) -> np.ndarray:
    # transformers 5 returns an output whose pooler_output is the projected embedding; 4.x a tensor.
    tensor = output.pooler_output if hasattr(output, "pooler_output") else output
    return torch.nn.functional.normalize(tensor.float(), dim=-1).cpu().numpy()
