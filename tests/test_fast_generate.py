"""Fast inference: `generate` merges the LoRA weights into the base (same audio as the unmerged
adapter), picks its dtype by device, and generates several --prompt values in one batch call."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import soundfile
import torch

from adapters import random_lora, save_random_adapter
from musicgen_lora.modeling import generate as generation
from musicgen_lora.modeling.generate import generate_audio, inference_dtype, prepare_for_inference
from musicgen_lora.modeling.model import build_tiny_musicgen, tiny_tokenizer
from musicgen_lora.tools.generate import main


def codes_and_audio(model, **kwargs):
    """(the codes generate() decoded, the audio) for two prompts."""
    calls = []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decode = base.audio_encoder.decode

    def recording(audio_codes, *args, **kw):
        calls.append(audio_codes.clone())
        return decode(audio_codes, *args, **kw)

    base.audio_encoder.decode = recording
    try:
        audio = generate_audio(model, tiny_tokenizer(), ["techno drum loop", "slow house"], seconds=0.5, **kwargs)
    finally:
        del base.audio_encoder.decode
    return calls[0], audio


@pytest.mark.parametrize("greedy", [False, True], ids=["sampling-seed-5", "greedy"])
def test_merged_and_unmerged_adapters_generate_the_same_audio(greedy):
    """Merging computes (W + s*B@A) x instead of W x + s*B@(A x): the logits agree to float32 rounding
    (checked below at 1e-5), far below any gap that would change a sampled code, so the codes must
    be identical; identical codes go through the same fp32 EnCodec decoder, so the audio agrees to
    1e-6 (a kernel's summation order at most; in practice bitwise)."""
    lora = random_lora()
    unmerged = prepare_for_inference(copy.deepcopy(lora), merge=False)
    merged = prepare_for_inference(copy.deepcopy(lora), merge=True)
    assert type(merged).__name__ == "MusicgenForConditionalGeneration"
    assert not any("lora_" in name for name, _ in merged.named_parameters())

    text = tiny_tokenizer()(["techno drum loop"], return_tensors="pt")
    decoder_ids = torch.randint(0, 2048, (4, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = unmerged(**text, decoder_input_ids=decoder_ids).logits
        torch.testing.assert_close(merged(**text, decoder_input_ids=decoder_ids).logits, expected, rtol=1e-5, atol=1e-5)
        base_logits = build_tiny_musicgen()(**text, decoder_input_ids=decoder_ids).logits
    assert (base_logits - expected).abs().max() > 1e-2  # the adapter really changes the model

    codes_unmerged, audio_unmerged = codes_and_audio(unmerged, seed=5, greedy=greedy)
    codes_merged, audio_merged = codes_and_audio(merged, seed=5, greedy=greedy)
    assert torch.equal(codes_merged, codes_unmerged)
    np.testing.assert_allclose(audio_merged, audio_unmerged, rtol=0, atol=1e-6)
    if not greedy:  # and the adapter changes what is sampled
        codes_base, _ = codes_and_audio(build_tiny_musicgen(), seed=5)
        assert not torch.equal(codes_base, codes_merged)


def test_generate_merges_by_default_and_no_merge_gives_the_same_file(tmp_path, monkeypatch):
    adapter = save_random_adapter(tmp_path / "adapter")
    seen = []
    real = generation.generate_audio

    def recording(model, *args, **kwargs):
        seen.append((type(model).__name__, next(model.parameters()).dtype))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_audio", recording)
    argv = ["--adapter", str(adapter), "--prompt", "techno", "house", "--seconds", "0.3", "--device", "cpu", "--seed", "2"]
    assert main([*argv, "--out", str(tmp_path / "merged.wav")]) == 0
    assert main([*argv, "--no-merge", "--out", str(tmp_path / "unmerged.wav")]) == 0
    # default: merged into a plain MusicGen, fp32 on CPU; --no-merge: the PeftModel
    assert seen == [("MusicgenForConditionalGeneration", torch.float32), ("PeftModel", torch.float32)]
    for i in range(2):  # both prompts came out of one call, one file each
        merged, rate = soundfile.read(tmp_path / f"merged_{i}.wav", dtype="int16")
        unmerged, _ = soundfile.read(tmp_path / f"unmerged_{i}.wav", dtype="int16")
        assert rate == 32000 and len(merged) == round(0.3 * rate)
        assert np.abs(merged.astype(int) - unmerged.astype(int)).max() <= 1  # 16-bit files: one step of rounding


def test_inference_dtype_by_device(monkeypatch):
    assert inference_dtype("cpu") == torch.float32
    assert inference_dtype("cpu", "bfloat16") == torch.bfloat16
    assert inference_dtype(torch.device("cuda", 0), "float32") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference_dtype("cuda") == torch.float16  # pre-Ampere GPUs


def test_bf16_generation_keeps_the_codec_in_fp32():
    lora = random_lora()
    codec = copy.deepcopy(lora.get_base_model().audio_encoder.state_dict())
    model = prepare_for_inference(lora, merge=True, dtype=torch.bfloat16)
    # exact, not rounded to bf16 and cast back: it decodes the audio
    assert all(torch.equal(codec[key], value) for key, value in model.audio_encoder.state_dict().items())
    assert model.decoder.model.decoder.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert model.text_encoder.shared.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.audio_encoder.parameters()} == {torch.float32}
    audio = generate_audio(model, tiny_tokenizer(), ["techno"], seconds=0.2, seed=0)
    assert audio.dtype == np.float32 and audio.shape == (1, 1, 6400) and np.isfinite(audio).all()
    again = generate_audio(model, tiny_tokenizer(), ["techno"], seconds=0.2, seed=0)
    assert np.array_equal(audio, again)


def test_rtf_benchmark_measures_both_modes_and_the_acceptance_summary_reads_it(repo_root, tmp_path, monkeypatch):
    """benchmarks/generate_rtf.py on the tiny model (values, not speeds), and the GPU acceptance
    summary's generation table built from its JSON."""
    import importlib.util
    import sys

    def load(name):
        spec = importlib.util.spec_from_file_location(name, repo_root / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    work = tmp_path / "work"
    report = load("generate_rtf").main(["--arch", "tiny", "--device", "cpu", "--seconds", "0.2", "--batch-sizes", "1", "2",
                                        "--out", str(work / "rtf.json")])
    assert [(row["mode"], row["batch"]) for row in report["rows"]] == [("unmerged", 1), ("unmerged", 2), ("merged", 1),
                                                                       ("merged", 2)]
    assert report["dtype"] == "float32" and report["torch_threads"] >= 1 and len(report["load_average_before"]) == 3
    for row in report["rows"]:
        assert row["finite"] and row["audio_shape"] == [row["batch"], 1, 6400]
        assert row["wall_s"] > 0 and row["rtf"] == pytest.approx(row["wall_s"] / 0.2)
        assert row["cpu_s"] > 0 and row["rtf_cpu_time"] == pytest.approx(row["cpu_s"] / 0.2)
    assert all(row["max_abs_diff_vs_unmerged"] <= 1e-6 for row in report["rows"] if row["mode"] == "merged")
    assert set(report["merged_speedup_by_batch"]) == set(report["merged_speedup_by_batch_cpu_time"]) == {"1", "2"}
    assert "| merged | 2 | 0.2 |" in (work / "rtf.md").read_text()
    assert load("acceptance_stages").summarize(work, tmp_path / "summary") == 0
    summary = (tmp_path / "summary" / "gpu_acceptance.md").read_text()
    assert "## Generation (tiny, float32, guidance 3.0)" in summary and "| merged | 2 | 0.2 |" in summary
