"""`generate --continue FILE`: the output is the prompt followed by --seconds of new audio, the
prompt's EnCodec codes start the generation (and condition what follows), the same seed gives the
same audio, and unusable files or prompts too long for the model fail before generating."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from musicgen_lora.modeling.generate import generate_audio
from musicgen_lora.modeling.model import audio_format, load_musicgen
from musicgen_lora.tools.generate import main

RATE = 32000


def write_prompt(path, kind: str, seconds: float = 1.0, rate: int = 44100, channels: int = 2):
    """A prompt file at another rate and channel count than the model's (resampled, down-mixed)."""
    t = np.arange(round(seconds * rate)) / rate
    if kind == "tone":
        mono = 0.5 * np.sin(2 * np.pi * 220 * t)
    else:  # noise bursts, four per second
        mono = np.random.default_rng(0).normal(0, 0.3, t.size) * (np.sin(2 * np.pi * 4 * t) > 0)
    soundfile.write(path, np.stack([mono] * channels, axis=1).astype(np.float32), rate)
    return path


@pytest.fixture(scope="module")
def context_sensitive_tiny():
    """The tiny MusicGen with its code embeddings scaled up 30x. At its random init (std 0.02 over
    64 dims) the decoder's next-code distribution hardly depends on the codes before it, so any
    prompt gives nearly the same continuation (1-2% of codes differ when sampling, none greedily);
    with larger embeddings the context matters, as in a trained model."""
    model, tokenizer = load_musicgen("tiny")
    with torch.no_grad():
        for embedding in model.decoder.model.decoder.embed_tokens:
            embedding.weight.mul_(30)
    return model, tokenizer


def recording_codes(model):
    """Record the codes each generate() hands to EnCodec's decoder (the generated sequence, prompt included)."""
    calls = []
    decode = model.audio_encoder.decode

    def recording(audio_codes, *args, **kwargs):
        calls.append(audio_codes.clone())
        return decode(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = recording
    return calls


def test_output_is_prompt_plus_requested_seconds_and_deterministic(tmp_path, capsys):
    prompt = write_prompt(tmp_path / "noise.wav", "noise", seconds=1.0)
    argv = ["--model", "tiny", "--prompt", "techno", "--continue", str(prompt), "--prompt-seconds", "0.5",
            "--seconds", "0.3", "--seed", "7", "--out"]
    assert main([*argv, str(tmp_path / "a.wav")]) == 0
    assert main([*argv, str(tmp_path / "b.wav")]) == 0
    audio, rate = soundfile.read(tmp_path / "a.wav")
    # 0.5 s of prompt (25 frames of 640 samples) + 0.3 s of continuation, at the model's 32 kHz, mono
    assert rate == RATE and audio.shape == (round(0.5 * RATE) + round(0.3 * RATE),)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert "0.80 s" in capsys.readouterr().out
    assert main([*argv[:-2], "8", "--out", str(tmp_path / "c.wav")]) == 0  # another seed, another continuation
    assert not np.array_equal(soundfile.read(tmp_path / "c.wav")[0], audio)


@pytest.mark.parametrize("greedy", [False, True], ids=["sampling", "greedy"])
def test_prompt_codes_start_the_sequence_and_condition_the_continuation(tmp_path, context_sensitive_tiny, greedy):
    from musicgen_lora.tools.audio_prompt import prompt_audio, read_source

    model, tokenizer = context_sensitive_tiny
    fmt = audio_format(model)
    calls = recording_codes(model)
    try:
        prompts = {}
        for kind in ("noise", "tone"):
            source = read_source(write_prompt(tmp_path / f"{kind}.wav", kind))
            prompts[kind] = prompt_audio(source, 0.4, fmt.sample_rate, fmt.channels, fmt.hop_length)
            generate_audio(model, tokenizer, ["techno", "house"], seconds=0.3, seed=3, greedy=greedy,
                           audio_prompt=prompts[kind])
        generate_audio(model, tokenizer, ["techno", "house"], seconds=0.3, seed=3, greedy=greedy,
                       audio_prompt=prompts["tone"])
    finally:
        del model.audio_encoder.decode
    assert torch.equal(calls[1], calls[2])  # same prompt, same seed: the same codes
    frames = 20  # 0.4 s at 50 frames/s
    for kind, codes in zip(prompts, calls, strict=False):
        assert codes.shape == (1, 2, 4, frames + 15)  # prompt frames + 0.3 s of new frames, per text prompt
        with torch.no_grad():
            own = model.audio_encoder.encode(torch.from_numpy(prompts[kind])[None], bandwidth=fmt.bandwidth).audio_codes
        for row in range(2):  # the prompt's own codes, every codebook, undelayed, for each text prompt
            assert torch.equal(codes[0, row, :, :frames], own[0, 0])
    noise, tone, _ = calls
    assert not torch.equal(noise[0, :, :, :frames], tone[0, :, :, :frames])
    # Same seed, same text: the new frames differ only because the prompts do.
    different = (noise[0, :, :, frames:] != tone[0, :, :, frames:]).float().mean().item()
    assert different > 0.5, different


def test_batch_lines_continue_the_file_too(tmp_path):
    prompt = write_prompt(tmp_path / "tone.wav", "tone", seconds=0.5, rate=32000, channels=1)
    lines = tmp_path / "prompts.jsonl"
    lines.write_text(json.dumps({"prompt": "techno", "seconds": 0.2, "name": "a"}) + "\n"
                     + json.dumps({"prompt": "house", "seconds": 81.5, "name": "too_long"}) + "\n")
    out = tmp_path / "out"
    assert main(["--model", "tiny", "--batch", str(lines), "--continue", str(prompt), "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert row["continue"] == str(prompt) and row["prompt_seconds"] == 0.5 and row["duration"] == 0.7
    assert soundfile.info(out / "a.wav").frames == round(0.7 * RATE)


@pytest.mark.parametrize(
    ("make", "flags", "message"),
    [
        (lambda d: d / "missing.wav", [], "missing.wav: no such file"),
        (lambda d: d, [], "not a file"),
        (lambda d: (d / "notes.wav").write_text("not audio") and d / "notes.wav", [], "cannot read it as audio"),
        # 82 s of prompt: longer than the tiny model's whole window (81.84 s), checked before encoding
        (lambda d: write_prompt(d / "long.wav", "tone", seconds=82, rate=8000, channels=1), [],
         "the prompt, the whole file (82.00 s), is longer than tiny can continue"),
        (lambda d: write_prompt(d / "long.wav", "tone", seconds=82, rate=8000, channels=1),
         ["--prompt-seconds", "81.84"], "the prompt, --prompt-seconds 81.84, is longer"),
        (lambda d: write_prompt(d / "p.wav", "tone", seconds=1, rate=8000, channels=1), ["--seconds", "81"],
         "--seconds 81 with a 1 s prompt needs 82 s"),
        (lambda d: write_prompt(d / "p.wav", "tone", seconds=1), ["--prompt-seconds", "0"], "--prompt-seconds must be > 0"),
        (lambda d: write_prompt(d / "p.wav", "tone", seconds=0.01), [], "shorter than one codec frame"),
    ],
    ids=["missing", "folder", "not-audio", "prompt-too-long", "prompt-seconds-too-long", "total-too-long",
         "zero-prompt", "under-one-frame"],
)
def test_unusable_prompts_fail_with_one_line(tmp_path, capsys, make, flags, message):
    path = make(tmp_path)
    out = tmp_path / "out.wav"
    assert main(["--model", "tiny", "--prompt", "x", "--continue", str(path), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: "), err
    assert not out.exists()


def test_prompt_seconds_needs_continue(tmp_path, capsys):
    assert main(["--model", "tiny", "--prompt", "x", "--prompt-seconds", "1", "--out", str(tmp_path / "o.wav")]) == 2
    assert "--prompt-seconds needs --continue" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny", "tiny-stereo"])
def test_prompt_codes_made_here_equal_transformers_own(tmp_path, name):
    """MusicGen-Melody's generate() takes no audio, so its prompt codes are made here: the same codes
    transformers' MusicGen generate() makes from input_values (stereo: L/R interleaved)."""
    from musicgen_lora.modeling.generate import audio_prompt_codes, audio_prompt_inputs
    from musicgen_lora.tools.audio_prompt import prompt_audio, read_source

    model, _ = load_musicgen(name)
    fmt = audio_format(model)
    audio = prompt_audio(read_source(write_prompt(tmp_path / "p.wav", "noise")), 0.3, fmt.sample_rate, fmt.channels,
                         fmt.hop_length)
    inputs = audio_prompt_inputs(model, audio, 2, torch.device("cpu"))
    with torch.no_grad():
        reference = model._prepare_audio_encoder_kwargs_for_generation(
            inputs["input_values"], {"padding_mask": inputs["padding_mask"]})["decoder_input_ids"]
    ours = audio_prompt_codes(model, inputs["input_values"], inputs["padding_mask"])
    assert reference.shape == (2 * fmt.num_codebooks, 15) and torch.equal(ours, reference)


@pytest.mark.parametrize("name", ["tiny-melody", "tiny-stereo-melody"])
def test_melody_models_continue_too(tmp_path, name):
    from musicgen_lora.modeling.generate import audio_prompt_codes, audio_prompt_inputs
    from musicgen_lora.tools.audio_prompt import prompt_audio, read_source

    model, tokenizer = load_musicgen(name)
    fmt = audio_format(model)
    audio = prompt_audio(read_source(write_prompt(tmp_path / "p.wav", "tone")), 0.4, fmt.sample_rate, fmt.channels,
                         fmt.hop_length)
    assert "decoder_input_ids" in audio_prompt_inputs(model, audio, 1, torch.device("cpu"))  # no input_values here
    calls = recording_codes(model)
    try:
        out = generate_audio(model, tokenizer, ["techno", "house"], seconds=0.2, seed=1, audio_prompt=audio)
    finally:
        del model.audio_encoder.decode
    assert out.shape == (2, fmt.channels, round(0.6 * RATE))
    values = torch.from_numpy(audio)[None].expand(2, -1, -1)
    own = audio_prompt_codes(model, values, torch.ones(2, audio.shape[-1], dtype=torch.long)).reshape(2, -1, 20)
    # transformers decodes a stereo model's left and right codebooks in two calls
    for channel, codes in enumerate(calls):
        assert torch.equal(codes[0, :, :, :20], own[:, channel :: fmt.channels])
    path = tmp_path / "out.wav"
    assert main(["--model", name, "--prompt", "x", "--continue", str(tmp_path / "p.wav"), "--prompt-seconds", "0.4",
                 "--seconds", "0.2", "--out", str(path)]) == 0
    assert soundfile.info(path).frames == round(0.6 * RATE) and soundfile.info(path).channels == fmt.channels
