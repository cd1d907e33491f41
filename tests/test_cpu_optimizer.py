"""Issue 15: on CPU the optimizer takes torch's foreach path, which gives the values of its default
per-tensor loop bit for bit (the loop is only slower)."""

from __future__ import annotations

import torch

from musicgen_lora.training.builders import optimizer_and_schedule
from musicgen_lora.training.config import OptimConfig


def _trained(foreach_builder: bool) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.ModuleList(torch.nn.Linear(64, 8, bias=False) for _ in range(6))
    for parameter in model.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.02
    if foreach_builder:
        optimizer, scheduler = optimizer_and_schedule(OptimConfig(warmup_steps=2, weight_decay=0.01), 10, model,
                                                      torch.device("cpu"))
        assert optimizer.param_groups[0]["foreach"] is True
    else:  # torch's default on CPU: a Python loop over the tensors
        cfg = OptimConfig(warmup_steps=2, weight_decay=0.01)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        _, reference = optimizer_and_schedule(cfg, 10, torch.nn.Linear(1, 1), torch.device("cpu"))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, reference.lr_lambdas[0])
    for _ in range(5):
        for parameter in model.parameters():
            parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-2
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return [parameter.detach().clone() for parameter in model.parameters()]


def test_cpu_adamw_foreach_equals_the_default_loop_bit_for_bit():
    fast, default = _trained(True), _trained(False)
    assert all(torch.equal(a, b) for a, b in zip(fast, default, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(fast, _initial(), strict=True))  # it did train


def _initial() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(8, 64, generator=generator) * 0.02 for _ in range(6)]
