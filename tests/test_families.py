"""Model families: the checkpoint's config.json decides the class before any weight is read; a load
that would leave weights randomly initialised or unused is refused; the four tiny families."""

import json

import pytest
import torch

from musicgen_lora.modeling.collate import codebook_delays
from musicgen_lora.modeling.families import (
    MUSICGEN,
    MUSICGEN_MELODY,
    UnsupportedModelError,
    WeightMismatchError,
    family_of_config,
    load_checked,
)
from musicgen_lora.modeling.model import (
    ModelLoadError,
    audio_format,
    build_tiny_musicgen,
    find_lora_targets,
    load_musicgen,
    tiny_tokenizer,
)


def save_tiny(folder, name="tiny-melody"):
    model = build_tiny_musicgen(name=name)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


@pytest.mark.parametrize(
    ("name", "architecture", "channels", "codebooks", "delays"),
    [
        ("tiny", "MusicgenForConditionalGeneration", 1, 4, [0, 1, 2, 3]),
        ("tiny-stereo", "MusicgenForConditionalGeneration", 2, 8, [0, 0, 1, 1, 2, 2, 3, 3]),
        ("tiny-melody", "MusicgenMelodyForConditionalGeneration", 1, 4, [0, 1, 2, 3]),
        ("tiny-stereo-melody", "MusicgenMelodyForConditionalGeneration", 2, 8, [0, 0, 1, 1, 2, 2, 3, 3]),
    ],
)
def test_tiny_families(name, architecture, channels, codebooks, delays):
    model, _ = load_musicgen(name)
    fmt = audio_format(model)
    assert type(model).__name__ == architecture
    assert (fmt.channels, fmt.num_codebooks, fmt.sample_rate, fmt.frame_rate) == (channels, codebooks, 32000, 50)
    assert codebook_delays(fmt.num_codebooks, fmt.channels) == delays
    assert model.config.decoder.decoder_start_token_id == model.config.decoder.pad_token_id == 2048
    # the same weights every time: an adapter trained on a tiny model re-applies later
    again, _ = load_musicgen(name)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_family_from_config_and_unsupported_architectures():
    assert family_of_config({"model_type": "musicgen", "architectures": ["MusicgenForConditionalGeneration"]}, "x") is MUSICGEN
    assert family_of_config({"model_type": "musicgen_melody"}, "x") is MUSICGEN_MELODY
    with pytest.raises(UnsupportedModelError, match=r"'musicgen_decoder' checkpoint \(MusicgenForCausalLM\).*Supported:"):
        family_of_config({"model_type": "musicgen_decoder", "architectures": ["MusicgenForCausalLM"]}, "x")
    with pytest.raises(UnsupportedModelError, match="'t5' checkpoint"):
        family_of_config({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, "x")
    with pytest.raises(UnsupportedModelError, match="audio_channels=3"):
        family_of_config({"model_type": "musicgen", "decoder": {"audio_channels": 3}}, "x")


def test_unsupported_checkpoint_is_refused_before_its_weights_are_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "musicgen_decoder", "architectures": ["MusicgenForCausalLM"]}))
    (tmp_path / "model.safetensors").write_bytes(b"not weights at all")  # reading them would fail otherwise
    with pytest.raises(UnsupportedModelError, match="does not train"):
        load_musicgen(str(tmp_path))


def test_melody_checkpoint_loads_as_melody_and_never_into_the_plain_class(tmp_path):
    """The old bug: a MusicGen-Melody folder loaded into MusicgenForConditionalGeneration with
    encoder_attn.* randomly initialised and audio_enc_to_dec_proj unused, and trained on that."""
    saved = save_tiny(tmp_path)
    model, _ = load_musicgen(str(tmp_path))
    assert type(model).__name__ == "MusicgenMelodyForConditionalGeneration"
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), model.state_dict().values(), strict=True))
    with pytest.raises(WeightMismatchError) as refused:
        load_checked(MUSICGEN, str(tmp_path))
    message = str(refused.value)
    assert "missing (would be randomly initialised)" in message and "encoder_attn" in message
    assert "unexpected" in message and "audio_enc_to_dec_proj" in message
    assert isinstance(refused.value, ModelLoadError)  # training turns it into exit code 2


def test_config_that_lies_about_its_weights_is_refused(tmp_path):
    """config.json of a plain MusicGen over melody weights: the class follows the config, the
    weights do not fit it, and the load fails instead of training random cross-attention."""
    save_tiny(tmp_path)
    build_tiny_musicgen(name="tiny").config.save_pretrained(tmp_path)  # overwrites config.json only
    with pytest.raises(WeightMismatchError, match=r"do not fit MusicgenForConditionalGeneration:\n.*missing"):
        load_musicgen(str(tmp_path))


def test_lora_targets_resolve_for_the_melody_decoder():
    model = build_tiny_musicgen(name="tiny-melody")
    names = find_lora_targets(model, ("q_proj", "k_proj", "v_proj", "out_proj"))
    assert len(names) == 2 * 4 and all(".self_attn." in name for name in names)  # 2 layers, no cross-attention
    from musicgen_lora.modeling.model import LoraTargetError

    with pytest.raises(LoraTargetError, match=r"'encoder_attn' matches no module.*Choose from:.*q_proj"):
        find_lora_targets(model, ("encoder_attn",))


@pytest.mark.parametrize("name", ["tiny", "tiny-melody"])
def test_a_bf16_load_keeps_the_codec_exact_and_its_cache_id(tmp_path, name):
    """Rounding the codec to bf16 and casting it back is not the codec: a bf16 run (the default on
    GPUs and on CPUs with native bf16) changed most of a token cache's codes, and a saved
    checkpoint's cache id changed with the run's dtype. The codec loads in fp32 whatever the dtype."""
    from musicgen_lora.modeling.model import codec_identity

    saved = save_tiny(tmp_path, name)
    for source in (name, str(tmp_path)):
        full, _ = load_musicgen(source, dtype=torch.float32)
        half, _ = load_musicgen(source, dtype=torch.bfloat16)
        codec = dict(half.audio_encoder.state_dict())
        assert all(tensor.dtype == torch.float32 for tensor in codec.values() if tensor.is_floating_point())
        assert all(torch.equal(codec[key], value) for key, value in full.audio_encoder.state_dict().items())
        assert {p.dtype for p in half.decoder.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in half.text_encoder.parameters()} == {torch.bfloat16}
        assert codec_identity(half, source) == codec_identity(full, source)
    # the load is exact against the saved weights, not only self-consistent
    assert all(torch.equal(a, b) for a, b in zip(saved.audio_encoder.state_dict().values(), codec.values(), strict=True))
    # nothing leaks into the class for the next load
    assert "_keep_in_fp32_modules_strict" not in type(half).__dict__
