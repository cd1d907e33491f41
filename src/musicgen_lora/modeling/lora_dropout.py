"""LoRA dropout in fewer passes over memory, with the same result as peft's, bit for bit.

peft computes a LoRA layer as `result + lora_B(lora_A(dropout(x))) * scaling`, where `x` is first
cast to the adapter's dtype (fp32) and `dropout` is `nn.Dropout`. On CPU `nn.Dropout` draws a 0/1
mask, divides it by 1 - p, and multiplies: three passes over a full (batch, time, width) tensor
forward and one backward, for every adapted projection (144 per step for musicgen-small's attention).
Under bf16 autocast the cast to fp32 adds two more copies, only for autocast to cast back to bf16 for
the matmul. That was up to a fifth of a CPU training step.

`FastLoraDropout` draws the same mask from the same random stream (`bernoulli_` samples do not
depend on the tensor's dtype) and applies mask and scale in one pass (`addcmul`), saving only the
mask for backward. `x * (1 / (1 - p))` rounded once is what `x * (mask / (1 - p))` gives where the
mask is 1, and the scale is computed by the same fp32 division, so outputs and gradients equal
peft's: `tests/test_lora_dropout.py` checks it in fp32 and under bf16 autocast. On other devices
(CUDA) the module does exactly what peft does.
"""

from __future__ import annotations

import torch


def _scale(p: float) -> float:
    # Exactly the factor nn.Dropout multiplies kept elements by: 1 / (1 - p) as an fp32 division.
    return torch.ones(1).div_(1 - p).item()


class _MaskScale(torch.autograd.Function):
    """x * keep * scale, forward and backward in one pass each; keeps only the mask for backward."""

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
        keep = torch.empty_like(x).bernoulli_(1 - self.p)
        return _MaskScale.apply(x, keep, self.scale)

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
