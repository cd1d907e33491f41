"""Issue 12.3: loops are tiled as audio before encoding (seam-exact codes); the zero-padding
ablation pads each codebook with its own silence codes and is validated like `pad`."""

from __future__ import annotations

import dataclasses

import numpy as np
import soundfile
import torch

from musicgen_lora.data.tokens import load_codes, load_manifest
from musicgen_lora.data.windows import Clip, EvalWindows, TrainWindows, window
from musicgen_lora.modeling.model import audio_format, build_tiny_musicgen
from musicgen_lora.training import data_setup, prepare
from musicgen_lora.training.config import RunConfig

LOOP_SAMPLES = 23_360  # 0.73 s at 32 kHz: 36.5 frames of 640 samples, not a whole number


def _loop() -> np.ndarray:
    rng = np.random.default_rng(1)
    t = np.arange(LOOP_SAMPLES)
    kick = np.sin(2 * np.pi * 60 * t / 32000) * np.exp(-t / 3000)
    hat = rng.standard_normal(LOOP_SAMPLES) * (t % 5840 < 400) * 0.3
    return (0.6 * kick + hat).astype(np.float32)


def _encode(model, audio: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.audio_encoder.encode(torch.from_numpy(audio)[None, None], bandwidth=2.2).audio_codes[0, 0].numpy()


def test_prepare_defaults_tile_loops_as_audio(tmp_path):
    data, cache = tmp_path / "drums", tmp_path / "cache"
    data.mkdir()
    soundfile.write(data / "loop.wav", _loop(), 32000, subtype="FLOAT")
    assert prepare.main(["--data", str(data), "--model", "tiny", "--cache", str(cache)]) == 0  # defaults
    (entry,) = load_manifest(cache)
    codes = load_codes(cache, entry)
    repeats = -(-10 * 32000 // LOOP_SAMPLES) + 1  # the 10 s default window plus one more loop
    truth = _encode(build_tiny_musicgen(), np.tile(_loop(), repeats))
    assert np.array_equal(codes, truth) and entry.frames == truth.shape[-1] >= 500 + 37

    # A training window (10 s = 500 frames, at any offset) holds the codes of the repeated audio.
    train = TrainWindows([Clip(codes, "drums", "loop.wav", entry.content_sha256)], frames=500, pad_mode="tile",
                         special_token_id=2048, seed=0, condition_dropout=0.0)
    for draw in range(5):
        example = train[draw]
        starts = [o for o in range(truth.shape[-1] - 499) if np.array_equal(truth[:, o : o + 500], example.codes)]
        assert starts and bool(example.valid.all())
    # What tiling the loop's own codes gives instead: frames slip at every seam.
    seamed, _ = window(_encode(build_tiny_musicgen(), _loop()), 500, 0, "tile", 2048)
    assert not np.array_equal(seamed.numpy(), truth[:, :500])


def test_training_tiles_for_its_window_and_only_in_tile_mode(tmp_path):
    data = tmp_path / "drums"
    data.mkdir()
    soundfile.write(data / "loop.wav", _loop(), 32000, subtype="FLOAT")
    model = build_tiny_musicgen()
    fmt = audio_format(model)
    frames = {}
    for mode in ("tile", "pad"):
        cfg = RunConfig()
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, path=data, cache_dir=tmp_path / f"cache-{mode}", window_seconds=2.0, pad_mode=mode))
        cache = data_setup.token_cache(cfg, model, fmt, torch.device("cpu"), log_summary=False)
        frames[mode] = load_manifest(cache)[0].frames
    repeats = int(np.ceil(2 * 32000 / LOOP_SAMPLES)) + 1  # 4 loops: 93440 samples = 146 frames
    assert frames == {"tile": int(np.ceil(repeats * LOOP_SAMPLES / 640)), "pad": 37}


def test_legacy_zero_padding_keeps_codebooks_apart_and_is_not_scored():
    silence = (100 * np.arange(4)[:, None] + np.arange(50)[None, :]).astype(np.int16)  # row k: 100k + t
    clip = Clip(np.zeros((4, 30), dtype=np.int16), "a loop", "a.wav", "a-sha")
    codes, valid = window(clip.codes, 130, 0, "zero_pad_legacy", 2048, silence)
    expected = 100 * np.arange(4)[:, None] + np.arange(100)[None, :] % 50
    assert np.array_equal(codes[:, 30:].numpy(), expected) and bool(valid.all())  # trained on
    (example,) = EvalWindows([clip], frames=130, pad_mode="zero_pad_legacy", special_token_id=2048,
                             silence_codes=silence).items
    assert example.valid.sum() == 30 and not example.valid[30:].any()  # validation scores the clip only


def test_silence_codes_tile_without_edge_frames(tiny_model):
    codes = data_setup.silence_codes(tiny_model, audio_format(tiny_model), torch.device("cpu"))
    assert codes.shape == (4, 50) and all(len(set(row.tolist())) == 1 for row in codes)
