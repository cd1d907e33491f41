"""Masked per-codebook cross-entropy for MusicGen, and its metrics.

The loss is the mean over codebooks of each codebook's mean cross-entropy over its labelled
positions (the audiocraft / transformers definition), so codebooks weigh equally.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from musicgen_lora.modeling.collate import IGNORE_INDEX


def codebook_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Loss and per-codebook statistics.

    logits: (B*K, L, V) as MusicGen returns them, or (B, K, L, V); labels: (B, L, K) with
    IGNORE_INDEX where there is nothing to learn. Returns the scalar loss (differentiable) and a
    dict of detached per-codebook tensors: cross-entropy sums, correct-token counts, token counts,
    so metrics can be summed across batches and processes before dividing.
    """
    batch, length, num_codebooks = labels.shape
    logits = logits.reshape(batch, num_codebooks, -1, logits.shape[-1])
    if logits.shape[2] != length:
        # Only a melody model's logits carry prefix positions. A no-op slice would still cost its
        # backward a zero-filled logits-sized gradient and a copy into it.
        logits = logits[:, :, -length:]
    targets = labels.transpose(1, 2)  # (B, K, L)
    token_ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).reshape(batch, num_codebooks, -1)
    mask = targets != IGNORE_INDEX
    counts = mask.sum(dim=(0, 2))
    ce_sums = (token_ce * mask).sum(dim=(0, 2))
    per_codebook = ce_sums / counts.clamp(min=1)
    loss = per_codebook.mean()
    correct = ((logits.argmax(-1) == targets) & mask).sum(dim=(0, 2))
    stats = {"ce_sum": ce_sums.detach(), "correct": correct.detach(), "count": counts.detach()}
    return loss, stats


def codebook_metrics(stats: dict, prefix: str) -> dict[str, float]:
    """Per-codebook cross-entropy, perplexity and accuracy from (summed) statistics."""
    ce = (stats["ce_sum"] / stats["count"].clamp(min=1)).tolist()
    accuracy = (stats["correct"].float() / stats["count"].clamp(min=1)).tolist()
    metrics = {f"{prefix}/loss": sum(ce) / len(ce)}
    for k, (ce_k, acc_k) in enumerate(zip(ce, accuracy, strict=True)):
        metrics[f"{prefix}/ce_cb{k}"] = ce_k
        metrics[f"{prefix}/ppl_cb{k}"] = math.exp(min(ce_k, 50.0))
        metrics[f"{prefix}/acc_cb{k}"] = acc_k
    metrics[f"{prefix}/tokens"] = int(stats["count"].sum())
    return metrics


def add_stats(total: dict | None, stats: dict) -> dict:
    if total is None:
        return {key: value.clone() for key, value in stats.items()}
    return {key: total[key] + stats[key] for key in total}
