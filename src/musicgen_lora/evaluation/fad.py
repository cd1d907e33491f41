"""Frechet audio distance: the distance, its numerically careful matrix square root, and the
EnCodec-latent embedding (`gen/fad`) with frame or clip pooling (see `evaluation.evaluator`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

Pooling = Literal["frames", "clip"]
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
