"""Model setup: special tokens on every config, frozen base, LoRA targets, save/load."""

import pytest
import torch

from musicgen_lora.modeling.model import (
    LoraTargetError,
    ModelLoadError,
    apply_lora,
    audio_format,
    find_lora_targets,
    load_musicgen,
)


def test_special_tokens_set_on_decoder_and_top_level(tiny_model):
    for config in (tiny_model.config.decoder, tiny_model.config, tiny_model.generation_config):
        assert config.decoder_start_token_id == 2048
        assert config.pad_token_id == 2048
        assert config.bos_token_id == 2048
    fmt = audio_format(tiny_model)
    assert (fmt.sample_rate, fmt.frame_rate, fmt.num_codebooks, fmt.codebook_size) == (32000, 50, 4, 2048)
    assert tiny_model.config.audio_encoder.num_quantizers == fmt.num_codebooks


def test_default_targets_are_decoder_attention_only(tiny_model):
    names = find_lora_targets(tiny_model, ("q_proj", "k_proj", "v_proj", "out_proj"))
    assert len(names) == 2 * 2 * 4  # 2 layers x (self + cross attention) x 4 projections
    assert all(name.startswith("decoder.") and ("self_attn" in name or "encoder_attn" in name) for name in names)


def test_embedding_and_head_targets_match_every_codebook(tiny_model):
    names = find_lora_targets(tiny_model, ("embed_tokens", "lm_heads"))
    assert sorted(n.rsplit(".", 1)[0].split(".")[-1] for n in names) == ["embed_tokens"] * 4 + ["lm_heads"] * 4


def test_unknown_target_fails_with_choices(tiny_model):
    with pytest.raises(LoraTargetError, match=r"q_projection.*Choose from:.*q_proj"):
        apply_lora(tiny_model, r=4, alpha=4, dropout=0.0, targets=("q_projection",))


def test_only_lora_weights_train_and_adapter_is_fp32(tiny_model):
    model = apply_lora(tiny_model.to(torch.bfloat16), r=4, alpha=4, dropout=0.0, targets=("q_proj",))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert all(not p.requires_grad for n, p in model.named_parameters() if "text_encoder" in n or "audio_encoder" in n)


def test_unreachable_model_fails_fast_naming_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"--smoke.*\n.*--model.name /local/path"):
        load_musicgen("facebook/musicgen-small")
    with pytest.raises(ModelLoadError, match="holds no MusicGen checkpoint"):
        load_musicgen(str(tmp_path))


def test_adapter_save_and_load_gives_identical_outputs(tiny_model, tokenizer, tmp_path):
    from peft import PeftModel

    from musicgen_lora.modeling.model import build_tiny_musicgen

    model = apply_lora(tiny_model, r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-trivial adapter (B starts at zero)
    model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    reloaded = PeftModel.from_pretrained(build_tiny_musicgen(), tmp_path / "adapter").eval()
    text = tokenizer(["techno"], return_tensors="pt")
    decoder_input_ids = torch.randint(0, 2048, (4, 10))
    outputs = [
        m.eval()(**text, decoder_input_ids=decoder_input_ids).logits for m in (model, reloaded)
    ]
    base = build_tiny_musicgen()(**text, decoder_input_ids=decoder_input_ids).logits
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], base)  # the adapter does change the model


def test_saved_checkpoint_loads_with_either_attention(tmp_path):
    """A checkpoint folder (the Hub layout) loads with SDPA: the setting reaches only the decoder,
    since EnCodec has no SDPA and transformers 5 refuses a model-wide "sdpa" for it."""
    from musicgen_lora.modeling.model import build_tiny_musicgen, load_musicgen, tiny_tokenizer

    build_tiny_musicgen().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    for attention in ("sdpa", "eager"):
        model, _ = load_musicgen(str(tmp_path), attn_implementation=attention)
        assert model.config.decoder._attn_implementation == attention


def test_compiled_decoder_keeps_adapter_names(tiny_model):
    """--model.compile compiles in place: no `_orig_mod.` in parameter names, so adapters and
    checkpoints save and load as without it."""
    from musicgen_lora.training import builders
    from musicgen_lora.training.config import ModelConfig, RunConfig

    model = builders.lora_model(RunConfig(model=ModelConfig(name="tiny", compile=True)), tiny_model)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert names and not any("_orig_mod" in name for name in names)
