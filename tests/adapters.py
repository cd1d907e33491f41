"""A LoRA adapter on the tiny MusicGen that really changes it (random B matrices), saved as a run's
adapter/ folder would be: for generate (merged or not), export and the Hub round trip."""

from __future__ import annotations

from pathlib import Path

import torch

TARGETS = ("q_proj", "v_proj", "out_proj", "fc1")


def random_lora(seed: int = 0, scale: float = 0.05):
    """The tiny MusicGen with a rank-4 LoRA whose B weights are random (peft starts them at zero)."""
    from musicgen_lora.modeling.model import apply_lora, build_tiny_musicgen

    model = apply_lora(build_tiny_musicgen(), r=4, alpha=8, dropout=0.0, targets=TARGETS)
    model.peft_config["default"].base_model_name_or_path = "tiny"
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def save_random_adapter(folder: Path, seed: int = 0, scale: float = 0.05) -> Path:
    random_lora(seed, scale).save_pretrained(folder, save_embedding_layers=False)
    return folder
