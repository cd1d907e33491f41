"""Issue 15: our LoRA dropout draws each element's mask independently with the asked rate, from a
quarter of bernoulli_'s random draws, and for the masks it drew gives peft's values bit for bit (loss
and every LoRA gradient), in fp32 and under bf16 autocast with bf16 frozen weights; the recipe's
plain peft keeps nn.Dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention

from musicgen_lora.modeling.collate import codebook_delays, delay_pattern_labels
from musicgen_lora.modeling.lora_dropout import FastLoraDropout, install, keep_mask
from musicgen_lora.modeling.loss import codebook_cross_entropy
from musicgen_lora.modeling.model import apply_lora, build_tiny_musicgen

TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1")


class _Replay(torch.nn.Module):
    """peft's nn.Dropout on CPU (mask, divided by 1 - p, times x) with a mask given, not drawn."""

    def __init__(self, p: float, masks: list):
        super().__init__()
        self.p, self.masks = p, masks

    def forward(self, x):
        noise = self.masks.pop(0).to(x.dtype)
        return x * noise.div_(1 - self.p)


def _lora_model(dtype: torch.dtype, fast: bool, masks: dict | None = None):
    torch.manual_seed(0)  # the same LoRA init for both models
    model = build_tiny_musicgen().to(dtype)
    model.audio_encoder.float()
    if fast:
        peft_model = apply_lora(model, r=4, alpha=8, dropout=0.3, targets=TARGETS)
    else:  # what apply_lora did before: peft's own dropout and its cast of the input to fp32
        from peft import LoraConfig, get_peft_model

        from musicgen_lora.modeling.model import find_lora_targets

        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=find_lora_targets(model, TARGETS))
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.data = parameter.data.float()
        for name, module in list(peft_model.named_modules()):
            if name.endswith("lora_dropout"):
                module["default"] = _Replay(0.3, masks[name])
    with torch.no_grad():  # lora_B starts at zero: give it values so dropout reaches the loss
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    return peft_model.train()


def _record_masks(model) -> dict:
    """The masks every FastLoraDropout draws, by the name of its peft ModuleDict."""
    masks: dict[str, list] = {}
    for name, module in model.named_modules():
        if isinstance(module, FastLoraDropout):
            key = name.rsplit(".", 1)[0]
            module.register_forward_hook(lambda m, inputs, out, key=key: masks.setdefault(key, []).append(
                (out != 0) | (inputs[0] == 0)))
    return masks


def _loss_and_grads(model, autocast: bool, device: str = "cpu"):
    codes = torch.randint(0, 2048, (2, 4, 30), generator=torch.Generator().manual_seed(1))
    ids, labels = delay_pattern_labels(codes, torch.ones(2, 30, dtype=torch.bool), codebook_delays(4), 2048)
    text = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(2))
    model, ids, labels, text = model.to(device), ids.to(device), labels.to(device), text.to(device)
    torch.manual_seed(5)  # the same dropout masks, if drawn alike
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=text, attention_mask=torch.ones_like(text), decoder_input_ids=ids).logits
        loss, _ = codebook_cross_entropy(logits, labels)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("dtype", "autocast"), [(torch.float32, False), (torch.bfloat16, True)])
def test_fast_lora_dropout_equals_peft_bit_for_bit_for_its_masks(dtype, autocast):
    fast = _lora_model(dtype, fast=True)
    assert sum(isinstance(m, FastLoraDropout) for m in fast.modules()) == 2 * 2 * 4 + 2  # self + cross attn, fc1
    masks = _record_masks(fast)
    loss, grads = _loss_and_grads(fast, autocast)
    assert len(masks) == 18 and all(len(drawn) == 1 for drawn in masks.values())
    ref_loss, ref_grads = _loss_and_grads(_lora_model(dtype, fast=False, masks=masks), autocast)
    assert all(not drawn for drawn in masks.values())  # peft's layers used every mask, in order
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and all(torch.equal(grads[k], ref_grads[k]) for k in grads)
    assert any(float(g.abs().sum()) > 0 for name, g in grads.items() if "lora_A" in name)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_masks_drop_each_element_independently_at_the_asked_rate(p):
    torch.manual_seed(0)
    n = 4_000_000
    first, second = keep_mask(torch.Size([n]), p), keep_mask(torch.Size([n]), p)
    exact = round(p * 65536) / 65536  # p in 1/65536 steps
    assert abs(exact - p) <= 2**-17
    sigma = (exact * (1 - exact) / n) ** 0.5
    for mask in (first, second):
        assert mask.dtype == torch.bool and abs(float((~mask).float().mean()) - exact) < 5 * sigma
        # the four int16 lanes of a 64-bit word are alike
        lanes = (~mask).view(-1, 4).float().mean(0)
        assert float((lanes - exact).abs().max()) < 5 * sigma * 2
    # successive masks and neighbouring elements are independent: both dropped at rate p^2
    both = float((~first & ~second).float().mean())
    assert abs(both - exact**2) < 5 * (exact**2 / n) ** 0.5 + 1e-5
    neighbours = float((~first[:-1] & ~first[1:]).float().mean())
    assert abs(neighbours - exact**2) < 5 * (exact**2 / n) ** 0.5 + 1e-5


def test_masks_follow_the_seed_and_fit_any_shape():
    torch.manual_seed(3)
    a = keep_mask(torch.Size([3, 7, 5]), 0.2)
    torch.manual_seed(3)
    b = keep_mask(torch.Size([3, 7, 5]), 0.2)
    assert a.shape == (3, 7, 5) and torch.equal(a, b)  # 105 elements: not a multiple of four
    assert not torch.equal(a, keep_mask(torch.Size([3, 7, 5]), 0.2))


def test_backward_keeps_a_boolean_mask_only():
    x = torch.randn(4, 16, requires_grad=True)
    out = FastLoraDropout(0.5).train()(x)
    (saved,) = out.grad_fn.saved_tensors
    assert saved.dtype == torch.bool and saved.shape == x.shape
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, saved.float() * 2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_cuda_it_is_peft_exactly():
    """CUDA's fused dropout kernel is one pass already: there the module takes peft's own path.
    (The math attention kernel: the fused ones' backward may sum in a different order each run.)"""
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        fast, fast_grads = _loss_and_grads(_lora_model(torch.bfloat16, fast=True), True, "cuda")
        ref, ref_grads = _loss_and_grads(_lora_model(torch.bfloat16, fast=False), True, "cuda")
    assert torch.equal(fast, ref) and all(torch.equal(fast_grads[k], ref_grads[k]) for k in fast_grads)


def test_dropout_is_really_applied_and_only_in_training():
    layer = FastLoraDropout(0.5)
    x = torch.ones(4000)
    dropped = layer.train()(x)
    assert 0.4 < float((dropped == 0).float().mean()) < 0.6
    assert torch.equal(dropped[dropped != 0], torch.full_like(dropped[dropped != 0], 2.0))
    assert layer.eval()(x) is x


def test_without_autocast_a_bf16_input_is_cast_to_the_adapter_dtype():
    """As peft does for bf16 base weights outside autocast (generation): the adapter runs in fp32."""
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert FastLoraDropout(0.1).eval()(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts at the matmul: no copy here
        assert FastLoraDropout(0.1).eval()(x).dtype == torch.bfloat16


def test_install_skips_layers_that_are_not_plain_lora(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.1, use_dora=True))
    assert install(model) == 0  # DoRA reads the cast input itself
    assert not any(isinstance(m, FastLoraDropout) for m in model.modules())
