"""Generation metrics: Frechet audio distance (FAD) to held-out clips and CLAP text-audio similarity.

All are computed on a fixed prompt set with fixed seeds, so values compare across steps and runs.

Two FADs. `gen/fad_clap` is the standard one, comparable with published numbers: LAION CLAP audio
embeddings computed as fadtk's `clap-laion-*` models do (audio as 16-bit PCM, resampled to 48 kHz,
one embedding per clip from its first 10 s), logged whenever CLAP weights are available. fadtk and
frechet-audio-distance themselves do not fit the lock (together they pin transformers 4.x, numpy
1.x and huggingface-hub 0.x), so the embedding is computed here with transformers' ClapModel.
`gen/fad` is a latent FAD, comparable only across runs of this project:

its embedding, default `encodec`, is the model's own EnCodec *encoder* latents (the continuous
(B, D, frames) output before quantisation), needing no download. With `frames` pooling every
latent frame (50 per second) is one sample of the Gaussian, as the original FAD (Kilgour et al.)
used frame-level VGGish embeddings: a few short clips already give hundreds of samples in D = 128
dimensions. `clip` pooling gives one sample per clip (mean and std over its frames, 2D dims),
which needs many more clips than dimensions to mean anything. Stereo is mixed to mono first.

FAD with few samples is biased upwards and the covariance may be rank deficient: a ridge of
`ridge * mean variance` is added to both covariances (it cancels exactly for identical sets), and
the matrix square root is taken by symmetric eigendecompositions in float64, with negative
round-off eigenvalues clipped, instead of a general `sqrtm` of a non-symmetric product. Compare
FAD values only between runs with the same prompts, seeds, seconds and reference clips.

CLAP (transformers `ClapModel`) needs weights that are not bundled; without them the CLAP metrics
(gen/clap and the standard gen/fad_clap) are skipped with one notice per run, never an error.
A CLAP FAD from a few dozen clips in 512 dimensions is biased upwards (rank-deficient covariance):
compare it between runs with the same prompts, seeds and reference, and with published values only
at comparable set sizes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from musicgen_lora.audio import resample
from musicgen_lora.generate import generate_audio

log = logging.getLogger(__name__)

Pooling = Literal["frames", "clip"]
ClapMode = Literal["auto", "download", "off"]
Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]
"""Clips [(channels, samples) float32 at the model's rate] -> embeddings (samples, dims)."""


def frechet_distance(a: np.ndarray, b: np.ndarray, ridge: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to embeddings `a` (N, D) and `b` (M, D).

    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), in float64. A set with a
    single sample has zero covariance (only the means then count). The result is clipped at 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"need two non-empty (N, D) sets of equal D, got {a.shape} and {b.shape}")
    cov_a, cov_b = _covariance(a), _covariance(b)
    scale = (np.trace(cov_a) + np.trace(cov_b)) / (2 * a.shape[1])
    eye = np.eye(a.shape[1]) * ridge * max(scale, 1e-12)
    cov_a, cov_b = cov_a + eye, cov_b + eye
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    mean_term = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    return max(0.0, mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt))


def _covariance(x: np.ndarray) -> np.ndarray:
    if len(x) < 2:
        return np.zeros((x.shape[1], x.shape[1]))
    return np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def pool(latents: np.ndarray, pooling: Pooling) -> np.ndarray:
    """(D, frames) latents of one clip -> (frames, D) samples, or one (2D,) mean+std row."""
    if pooling == "frames":
        return latents.T
    return np.concatenate([latents.mean(1), latents.std(1)])[None]


def encodec_embedder(audio_encoder, pooling: Pooling = "frames") -> Embedder:
    """Embeddings from the codec's encoder latents (continuous, before quantisation)."""

    @torch.no_grad()
    def embed(clips: Sequence[np.ndarray]) -> np.ndarray:
        parameter = next(audio_encoder.parameters())
        rows = []
        for clip in clips:
            mono = torch.from_numpy(np.asarray(clip, dtype=np.float32).mean(0))[None, None]
            latents = audio_encoder.encoder(mono.to(parameter.device, parameter.dtype))[0]
            rows.append(pool(latents.float().cpu().numpy(), pooling))
        return np.concatenate(rows)

    return embed


@torch.no_grad()
def decode_codes(audio_encoder, codes: np.ndarray, channels: int = 1) -> np.ndarray:
    """Cached codes (K, T), stereo interleaved L0 R0 L1 R1 ..., -> audio (channels, samples)."""
    parameter = next(audio_encoder.parameters())
    tensor = torch.from_numpy(np.asarray(codes, dtype=np.int64))
    per_channel = tensor.reshape(-1, channels, tensor.shape[-1]).transpose(0, 1)  # (C, q, T)
    audio = audio_encoder.decode(per_channel[None].to(parameter.device), [None], return_dict=True).audio_values
    return audio[:, 0].float().cpu().numpy()


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


@dataclass
class GenerationEvaluator:
    """Generates `prompts` x `seeds` and scores them: gen/fad (vs `reference`), gen/fad_clap (vs
    `clap_reference`) and gen/clap."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    seconds: float
    sample_rate: int
    reference: np.ndarray | None
    """Embeddings of the held-out clips; None skips FAD."""
    embed: Embedder | None
    clap: ClapScorer | None = None
    guidance: float = 3.0
    top_k: int = 250
    temperature: float = 1.0
    clap_reference: np.ndarray | None = None
    """CLAP embeddings (ClapScorer.fad_embeddings) of the same held-out clips; None skips gen/fad_clap."""
    reference_clips: int = 0
    """How many clips the references hold (logged as gen/reference_clips when > 0)."""

    def generate(self, model, tokenizer) -> tuple[list[np.ndarray], list[str]]:
        clips, texts = [], []
        for seed in self.seeds:
            audio = generate_audio(
                model, tokenizer, list(self.prompts), seconds=self.seconds, guidance=self.guidance,
                top_k=self.top_k, temperature=self.temperature, seed=seed,
            )
            clips.extend(audio)
            texts.extend(self.prompts)
        return clips, texts

    def __call__(self, model, tokenizer, suffix: str = "") -> dict[str, float]:
        """Metrics of `model` as gen/fad{suffix}, gen/fad_clap{suffix}, gen/clap{suffix} (those that
        are available)."""
        clips, texts = self.generate(model, tokenizer)
        metrics = {}
        if self.reference is not None and self.embed is not None:
            metrics[f"gen/fad{suffix}"] = frechet_distance(self.embed(clips), self.reference)
        if self.clap is not None and self.clap_reference is not None:
            metrics[f"gen/fad_clap{suffix}"] = frechet_distance(self.clap.fad_embeddings(clips, self.sample_rate), self.clap_reference)
        if self.clap is not None:
            metrics[f"gen/clap{suffix}"] = self.clap.similarity(clips, self.sample_rate, texts)
        if metrics and self.reference_clips:
            metrics["gen/reference_clips"] = float(self.reference_clips)
        return metrics

    def base_metrics(self, model, tokenizer) -> dict[str, float]:
        """The same metrics with the LoRA adapter switched off: gen/fad_base, gen/clap_base."""
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return self(model, tokenizer, suffix="_base")
        return self(model, tokenizer, suffix="_base")
