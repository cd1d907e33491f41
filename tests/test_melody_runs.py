"""End to end through the real entry points: MusicGen-Melody (the --smoke run as the README shows
it, a saved checkpoint folder, generate --melody) and stereo (tiny-stereo, tiny-stereo-melody)."""

import json
import sys

import numpy as np
import pytest
import soundfile
import torch

from conftest import REPO_ROOT, child_env, quick_args, run_baseline

RATE = 32000


def _cli(*args, cwd, timeout=300):
    import subprocess

    return subprocess.run([sys.executable, "-m", "musicgen_lora.cli", *args], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


def _tone_file(path, notes):
    freq = np.repeat(np.asarray(notes, dtype=np.float64), RATE // 2)
    soundfile.write(path, 0.5 * np.sin(2 * np.pi * np.cumsum(freq) / RATE), RATE)
    return path


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def save_melody_checkpoint(folder, audible_codec=False):
    """The tiny melody model saved as a checkpoint folder (config.json + safetensors + tokenizer).

    audible_codec: the random tiny codec decodes nearly every code sequence to the same signal (its
    biases dominate), so generated WAVs hardly show which codes were drawn; with larger decoder
    weights and no biases, different codes give audibly different audio."""
    from musicgen_lora.modeling.model import build_tiny_musicgen, tiny_tokenizer

    model = build_tiny_musicgen(name="tiny-melody")
    if audible_codec:
        with torch.no_grad():
            for name, parameter in model.audio_encoder.decoder.named_parameters():
                if name.endswith("original0"):  # weight-norm magnitudes
                    parameter.mul_(2.0)
                elif name.endswith("bias") and "lstm" not in name:
                    parameter.zero_()
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


def test_melody_smoke_as_the_readme_runs_it_then_generate_with_a_melody(tmp_path):
    """`uv run experiments/01_baseline.py --smoke --model.name tiny-melody` (README): trains on the
    demo loops conditioned on their own chroma, samples, and its adapter generates with --melody."""
    import subprocess

    assert "uv run experiments/01_baseline.py --smoke --model.name tiny-melody" in (REPO_ROOT / "README.md").read_text()
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "01_baseline.py"), "--smoke", "--model.name", "tiny-melody",
         "--output-dir", str(run_dir)],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model: MusicgenMelodyForConditionalGeneration (mono, 4 codebooks)" in done.stderr
    assert "WARNING" not in done.stdout + done.stderr and "MISSING" not in done.stderr, done.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["name"] == "tiny-melody" and config["data"]["chroma_dropout"] == 0.2
    caches = list((tmp_path / ".cache" / "musicgen-lora" / "tokens").glob("demo-*/cache.json"))
    assert len(caches) == 1 and json.loads(caches[0].read_text())["chroma"]["num_chroma"] == 12
    records = _records(run_dir)
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert records[-1]["step"] == 30 and train_losses[-1] < train_losses[0]
    final_val = [r["val/loss"] for r in records if "val/loss" in r][-1]
    assert final_val < records[0]["val/loss_base"]
    samples = sorted(p.name for p in (run_dir / "samples").glob("*.wav"))
    assert "base_0.wav" in samples and "final_0.wav" in samples
    assert soundfile.info(run_dir / "samples" / "final_0.wav").channels == 1

    melody = _tone_file(tmp_path / "melody.wav", [261.63, 329.63, 392.0])
    out = tmp_path / "gen.wav"
    gen = _cli("generate", "--adapter", str(run_dir / "adapter"), "--prompt", "techno drum loop", "--seconds", "1",
               "--melody", str(melody), "--out", str(out), cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    audio, rate = soundfile.read(out)
    assert rate == RATE and audio.shape == (RATE,)


def test_saved_melody_checkpoint_trains_and_its_adapter_loads_with_plain_peft(tmp_path, demo_dir):
    from peft import PeftModel
    from transformers import MusicgenMelodyForConditionalGeneration

    from musicgen_lora.modeling.generate import load_with_adapter
    from musicgen_lora.modeling.model import tiny_tokenizer

    folder = tmp_path / "musicgen-melody-tiny"
    save_melody_checkpoint(folder)
    run_dir = tmp_path / "run"
    done = run_baseline(quick_args(run_dir, tmp_path / "cache", demo_dir, "--model.name", str(folder),
                                   "--train.max-steps", "4"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for word in ("MISSING", "UNEXPECTED", "LOAD REPORT", "newly initialized"):
        assert word not in done.stdout + done.stderr, done.stderr[-3000:]
    assert "MusicgenMelodyForConditionalGeneration" in done.stderr
    adapter = run_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(folder)

    base, info = MusicgenMelodyForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    plain = PeftModel.from_pretrained(base, adapter).eval()
    trained = [p for n, p in plain.named_parameters() if "lora_B" in n]
    assert trained and all(p.abs().sum() > 0 for p in trained)  # the trained weights, not a fresh init
    ours, _ = load_with_adapter(adapter, device="cpu")
    inputs = tiny_tokenizer()(["techno drum loop"], return_tensors="pt")
    decoder_input_ids = torch.full((4, 3), 2048)
    chroma = torch.nn.functional.one_hot(torch.tensor([[0, 4, 7]]), 12).float()
    with torch.no_grad():
        expected = plain(**inputs, input_features=chroma, decoder_input_ids=decoder_input_ids).logits
        got = ours(**inputs, input_features=chroma, decoder_input_ids=decoder_input_ids).logits
        with plain.disable_adapter():  # peft wrapped `base` in place: the base model alone
            without = plain(**inputs, input_features=chroma, decoder_input_ids=decoder_input_ids).logits
    assert torch.allclose(expected, got, atol=1e-5) and not torch.allclose(expected, without, atol=1e-4)


def test_checkpoint_whose_weights_do_not_fit_its_class_is_refused(tmp_path, demo_dir):
    """The old silent failure: melody weights read into MusicgenForConditionalGeneration trained
    with exit 0 on random cross-attention. Now: exit 2 before any work, naming the keys."""
    from musicgen_lora.modeling.model import build_tiny_musicgen

    folder = tmp_path / "lying"
    save_melody_checkpoint(folder)
    build_tiny_musicgen(name="tiny").config.save_pretrained(folder)  # config.json says plain MusicGen
    run_dir = tmp_path / "run"
    done = run_baseline(quick_args(run_dir, tmp_path / "cache", demo_dir, "--model.name", str(folder)), timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "do not fit MusicgenForConditionalGeneration" in done.stderr
    assert "encoder_attn" in done.stderr and "audio_enc_to_dec_proj" in done.stderr
    assert not run_dir.exists() and not (tmp_path / "cache").exists()


def test_generate_follows_the_melody_file(tmp_path):
    """Regression (transformers once ignored melody conditioning in generate): two melodies, same
    seed and prompt, give different audio; the same melody gives the same audio."""
    folder = tmp_path / "melody-model"
    save_melody_checkpoint(folder, audible_codec=True)
    a = _tone_file(tmp_path / "a.wav", [261.63, 329.63, 392.0, 523.25])
    b = _tone_file(tmp_path / "b.wav", [293.66, 369.99, 440.0, 277.18])
    audio = {}
    for tag, melody in (("a", a), ("b", b), ("a_again", a)):
        out = tmp_path / f"{tag}_out.wav"
        gen = _cli("generate", "--model", str(folder), "--prompt", "techno drum loop", "--seconds", "1", "--seed", "5",
                   "--melody", str(melody), "--out", str(out), cwd=tmp_path)
        assert gen.returncode == 0, gen.stderr[-3000:]
        audio[tag], rate = soundfile.read(out, dtype="int16")
        assert rate == RATE and audio[tag].shape == (RATE,)
    assert np.array_equal(audio["a"], audio["a_again"])
    difference = np.abs(audio["a"].astype(np.int32) - audio["b"]).mean()
    # Ignoring the melody would give the very same samples (as a == a_again); measured: ~10 steps of
    # 16 bits on average, far from the at most 1 step a float rounding difference could cause.
    assert difference > 3, difference

    refused = _cli("generate", "--model", "tiny", "--prompt", "x", "--seconds", "1", "--melody", str(a),
                   "--out", str(tmp_path / "x.wav"), cwd=tmp_path)
    assert refused.returncode == 2 and "--melody needs a MusicGen-Melody model" in refused.stderr
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("name", ["tiny-stereo", "tiny-stereo-melody"])
def test_stereo_trains_writes_two_channel_samples_and_its_adapter_reloads(name, tmp_path, demo_dir):
    run_dir = tmp_path / "run"
    done = run_baseline(quick_args(run_dir, tmp_path / "cache", demo_dir, "--model.name", name, "--train.max-steps", "3",
                                   "--sample.seconds", "0.5"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(stereo, 8 codebooks)" in done.stderr
    codes = np.load(next((tmp_path / "cache" / "codes").glob("*.npz")))["codes"]
    assert codes.shape[0] == 8  # L and R interleaved
    info = soundfile.info(run_dir / "samples" / "final_0.wav")
    assert (info.channels, info.samplerate, info.frames) == (2, RATE, RATE // 2)
    out = tmp_path / "gen.wav"
    extra = ["--melody", str(_tone_file(tmp_path / "m.wav", [440.0, 523.25]))] if "melody" in name else []
    gen = _cli("generate", "--adapter", str(run_dir / "adapter"), "--prompt", "techno drum loop", "--seconds", "0.5",
               "--out", str(out), *extra, cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    audio, rate = soundfile.read(out)
    assert rate == RATE and audio.shape == (RATE // 2, 2)
