"""Export: adapter alone or merged, reloaded, gives the outputs of base + adapter; the model card."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoProcessor, AutoTokenizer, MusicgenForConditionalGeneration

from musicgen_lora.modeling.model import apply_lora, build_tiny_musicgen, load_musicgen
from musicgen_lora.tools.export import ExportError, export, main, model_card
from musicgen_lora.training.config import SMOKE_OVERRIDES, RunConfig, apply_overrides, to_dict


@pytest.fixture
def trained(tmp_path, tokenizer):
    """A run folder with config.json and an adapter whose LoRA B weights are random (not a no-op)."""
    model = apply_lora(build_tiny_musicgen(), r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj", "out_proj", "fc1"))
    model.peft_config["default"].base_model_name_or_path = "tiny"
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    run_dir = tmp_path / "run"
    model.save_pretrained(run_dir / "adapter", save_embedding_layers=False)
    (run_dir / "config.json").write_text(json.dumps(to_dict(apply_overrides(RunConfig(), SMOKE_OVERRIDES))))
    return model.eval(), run_dir


def logits(model, tokenizer) -> torch.Tensor:
    """Decoder logits on a fixed batch: two captions, random codes of 4 codebooks x 12 steps."""
    text = tokenizer(["techno drum loop", "a slow house groove"], padding=True, return_tensors="pt")
    codes = torch.randint(0, 2049, (2 * 4, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(**text, decoder_input_ids=codes).logits


def test_adapter_export_reloads_exactly(trained, tokenizer, tmp_path, demo_cache):
    model, run_dir = trained
    out = export(run_dir / "adapter", tmp_path / "export", cache_dir=demo_cache)
    reloaded = PeftModel.from_pretrained(build_tiny_musicgen(), out).eval()
    assert torch.equal(logits(reloaded, tokenizer), logits(model, tokenizer))
    card = (out / "README.md").read_text()
    assert "base_model: tiny" in card and "library_name: peft" in card
    assert "6 audio files" in card and "drum loop" in card  # from the token cache's manifest
    assert "LoRA rank 16" in card and '"experiment": "01_baseline"' in card  # from the run's config.json


def test_merged_export_reloads_as_a_plain_musicgen(trained, tokenizer, tmp_path):
    model, run_dir = trained
    out = tmp_path / "merged"
    assert main(["--adapter", str(run_dir / "adapter"), "--out", str(out), "--merge"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    merged = MusicgenForConditionalGeneration.from_pretrained(out).eval()
    expected = logits(model, tokenizer)
    torch.testing.assert_close(logits(merged, tokenizer), expected, rtol=1e-4, atol=1e-5)
    base = logits(build_tiny_musicgen(), tokenizer)
    assert not torch.allclose(base, expected, atol=1e-3)  # the adapter really changes the outputs
    # The folder is self-contained: tokenizer, processor and our own loader all read it.
    assert AutoTokenizer.from_pretrained(out)("abc").input_ids == tokenizer("abc").input_ids
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "MusicgenProcessor"
    loaded, _ = load_musicgen(str(out))
    assert loaded.config.decoder.decoder_start_token_id == 2048
    assert "library_name: transformers" in (out / "README.md").read_text()


def test_export_refuses_to_overwrite(trained, tmp_path):
    _, run_dir = trained
    out = tmp_path / "export"
    export(run_dir / "adapter", out)
    with pytest.raises(ExportError, match="overwrite"):
        export(run_dir / "adapter", out)
    export(run_dir / "adapter", out, overwrite=True)
    with pytest.raises(ExportError, match=r"adapter_config\.json"):
        export(run_dir, tmp_path / "other")


def test_model_card_states_the_musicgen_license():
    card = model_card("facebook/musicgen-small", merged=True, run_config=None, data={})
    assert "license: cc-by-nc-4.0" in card
    assert "CC-BY-NC 4.0" in card and "non-commercial purposes only" in card
    tiny = model_card("tiny", merged=False, run_config=None, data={})
    assert "license: mit" in tiny and "CC-BY-NC 4.0" in tiny  # says what a real base would carry
