"""LoRA dropout in fewer passes over memory and a quarter of the random draws, on CPU.

peft computes a LoRA layer as `result + lora_B(lora_A(dropout(x))) * scaling`, where `x` is first
cast to the adapter's dtype (fp32) and `dropout` is `nn.Dropout`. On CPU `nn.Dropout` draws a 0/1
mask with `bernoulli_` (one 32-bit draw of the CPU generator per element), divides it by 1 - p, and
multiplies: three passes over a full (batch, time, width) tensor forward and one backward, for every
adapted projection (144 per step for musicgen-small's attention). Under bf16 autocast the cast to
fp32 adds two more copies, only for autocast to cast back to bf16 for the matmul. The draws alone
were 12% of an fp32 CPU step and 21% of a bf16 one (reports/benchmarks/step_profile_cpu_small.md).

`FastLoraDropout` draws its mask from 64-bit words of the same generator, four 16-bit uniforms per
word (`keep_mask`): each element is kept independently with probability 1 - p, p rounded to a
multiple of 1/65536 (0.05 -> 0.0500031). It applies mask and scale in one pass (`addcmul`) and keeps
only the boolean mask for backward (1 byte per element instead of 4). Kept elements are multiplied
by exactly the fp32 factor nn.Dropout uses, so for a given mask outputs and gradients equal peft's
bit for bit (`tests/test_lora_dropout.py` replays our masks through peft's own layers, in fp32 and
under bf16 autocast). The masks are not the ones `bernoulli_` would draw: runs are reproducible per
seed, but not mask for mask comparable with a run from before this change. On other devices (CUDA)
the module does exactly what peft does (its fused dropout is one pass already).
"""

from __future__ import annotations

import math

import torch


def _scale(p: float) -> float:
    # Exactly the factor nn.Dropout multiplies kept elements by: 1 / (1 - p) as an fp32 division.
    return torch.ones(1).div_(1 - p).item()


WORD_BITS = 16
"""Bits of uniform randomness per mask element: 16 keeps p exact to 1/65536."""


def drop_threshold(p: float) -> int:
    """An element is dropped where its int16 uniform is below this (probability round(p * 2^16) / 2^16)."""
    return -(2 ** (WORD_BITS - 1)) + round(p * 2**WORD_BITS)


def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean mask of `shape`, each element True with probability 1 - p (p in 1/65536 steps)."""
    numel = math.prod(shape)
    # Full-range int64 draws (random64 of the generator), each read as four independent int16s.
    words = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64, device=device)
    return (words.view(torch.int16)[:numel] >= drop_threshold(p)).view(shape)


class _MaskScale(torch.autograd.Function):
    """x * keep * scale, forward and backward in one pass each; keeps only the (bool) mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, keep, value=scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, keep, value=ctx.scale), None, None


class FastLoraDropout(torch.nn.Module):
    """Drop-in for peft's `lora_dropout` module, for a LoRA layer whose input cast is turned off:
    casts `x` to the adapter dtype itself, but only without autocast (under autocast the adapter's
    matmul casts anyway, and the cast's rounding is the same either way)."""

    def __init__(self, p: float, adapter_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.p = float(p)
        self.adapter_dtype = adapter_dtype
        self.scale = _scale(self.p) if 0 < self.p < 1 else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            # Elsewhere peft's own path: CUDA's fused dropout is one pass already, and draws its
            # mask from a stream of its own that a different kernel would not reproduce.
            x = x if x.dtype == self.adapter_dtype else x.to(self.adapter_dtype)
            return torch.nn.functional.dropout(x, self.p, self.training) if self.p else x
        if x.dtype != self.adapter_dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.adapter_dtype)
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        return _MaskScale.apply(x, keep_mask(x.shape, self.p), self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def install(peft_model, adapter: str = "default") -> int:
    """Replace the dropout of every LoRA layer of `peft_model` by `FastLoraDropout`; returns how many."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in peft_model.modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_dropout or adapter not in module.lora_A:
            continue
        if adapter in getattr(module, "lora_variant", {}):
            continue  # DoRA and other variants read the cast input themselves
        old = module.lora_dropout[adapter]
        p = old.p if isinstance(old, torch.nn.Dropout) else 0.0
        if not isinstance(old, torch.nn.Dropout | torch.nn.Identity):
            continue  # not peft's plain dropout: leave it
        module.lora_dropout[adapter] = FastLoraDropout(p, module.lora_A[adapter].weight.dtype)
        module.lora_dropout[adapter].train(old.training)
        module.cast_input_dtype_enabled = False  # FastLoraDropout casts where peft would have
        count += 1
    return count
