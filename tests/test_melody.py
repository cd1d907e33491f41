"""MusicGen-Melody training: the chroma + text prefix and its loss (exact against transformers), the
null condition of dropout (generate's), the chroma of a clip computed once and cut per window, and
the token cache that stores it (never mixed with a codes-only cache), with paired condition files."""

import shutil

import numpy as np
import pytest
import soundfile
import torch
from transformers import GenerationConfig

from musicgen_lora.data.audio import load_audio
from musicgen_lora.data.chroma import (
    ChromaSettings,
    ChromaStream,
    WindowChroma,
    chroma_bins,
    chroma_settings,
    window_chroma,
    window_frames,
)
from musicgen_lora.data.tokens import (
    CacheMismatchError,
    codec_encoder,
    load_chroma,
    load_manifest,
    prepare_cache,
)
from musicgen_lora.data.windows import Clip, TrainWindows
from musicgen_lora.modeling.collate import Example, MusicgenCollator, codebook_delays
from musicgen_lora.modeling.forward import TextStateCache, forward_loss, text_states
from musicgen_lora.modeling.melody import condition_states, one_hot_chroma
from musicgen_lora.modeling.model import (
    audio_format,
    build_tiny_musicgen,
    codec_identity,
    tiny_tokenizer,
)

RATE = 32000
SETTINGS = ChromaSettings()


def tones(notes_hz, seconds_each, rate=RATE, noise=0.0, seed=0):
    """A melody: one sine per note, `seconds_each` long, (n,) float32."""
    freq = np.repeat(np.asarray(notes_hz, dtype=np.float64), int(seconds_each * rate))
    wave = 0.5 * np.sin(2 * np.pi * np.cumsum(freq) / rate)
    return (wave + noise * np.random.default_rng(seed).standard_normal(len(wave))).astype(np.float32)


def _batch(model, captions=("techno drum loop, 128 bpm", "house"), frames=12, drop=False, drop_chroma=False):
    k, channels = model.config.decoder.num_codebooks, model.config.decoder.audio_channels
    collator = MusicgenCollator(tiny_tokenizer(), delays=codebook_delays(k, channels), special_token_id=2048)
    g = torch.Generator().manual_seed(0)
    examples = [
        Example(torch.randint(0, 2048, (k, frames), generator=g), torch.ones(frames, dtype=torch.bool), caption, drop,
                one_hot_chroma(torch.randint(0, 12, (5,), generator=g), 12), drop_chroma)
        for caption in captions
    ]
    return collator(examples)


@pytest.mark.parametrize("name", ["tiny-melody", "tiny-stereo-melody"])
def test_melody_loss_equals_transformers_loss_with_labels(name):
    """Our forward (cached T5 states, our prefix, logits of the audio positions) against
    MusicgenMelodyForConditionalGeneration's own loss with labels, on captions of unequal length."""
    model = build_tiny_musicgen(name=name)
    batch = _batch(model)
    assert batch["chroma"].shape == (2, 5, 12) and batch["chroma_mask"].tolist() == [1, 1]
    ours, stats = forward_loss(model, batch)
    cached, _ = forward_loss(model, batch, TextStateCache())
    builtin = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    input_features=batch["chroma"], labels=batch["labels"]).loss
    assert torch.allclose(ours, builtin, atol=1e-5) and torch.allclose(cached, builtin, atol=1e-5)
    k = model.config.decoder.num_codebooks
    assert stats["count"].tolist() == [2 * 12] * k  # every frame of every codebook is a target


def test_melody_changes_the_loss():
    model = build_tiny_musicgen(name="tiny-melody")
    batch = _batch(model)
    other = dict(batch, chroma=batch["chroma"].roll(3, dims=-1))
    assert abs(forward_loss(model, batch)[0].item() - forward_loss(model, other)[0].item()) > 1e-4


def test_dropped_caption_and_melody_are_generates_null_condition():
    """Row 1 with text and melody dropped gets exactly the prefix generate() builds for the
    unconditional half of classifier-free guidance; row 0 gets the conditional one."""
    model = build_tiny_musicgen(name="tiny-melody")
    batch = _batch(model)
    states = text_states(model, batch, None)
    keep = torch.tensor([1, 0])
    ours = condition_states(model, states, batch["attention_mask"] * keep[:, None], batch["chroma"], keep)
    with torch.no_grad():
        kwargs = model._prepare_encoder_hidden_states_kwargs_for_generation(
            batch["input_ids"], {"attention_mask": batch["attention_mask"], "input_features": batch["chroma"]},
            "input_ids", GenerationConfig(guidance_scale=3.0),
        )
    generate_states = kwargs["encoder_hidden_states"]  # (2B, ...): conditional rows, then null rows
    assert generate_states.shape == (4, *ours.shape[1:])
    assert torch.allclose(ours[0], generate_states[0], atol=1e-5)
    assert torch.allclose(ours[1], generate_states[3], atol=1e-5)
    assert not torch.allclose(ours[1], generate_states[1], atol=1e-3)


def test_chroma_orientation_and_rate():
    """C4 -> bin 0, A4 -> bin 9 (the extractor starts at C); one frame per 4096 samples, plus one."""
    audio = tones([261.63, 440.0], 1.0)
    bins = chroma_bins(audio, SETTINGS)
    assert len(bins) == 1 + len(audio) // 4096
    assert np.bincount(bins[:6], minlength=12).argmax() == 0 and np.bincount(bins[-6:], minlength=12).argmax() == 9


@pytest.mark.parametrize("chunk_frames", [3, 64])
def test_streamed_chroma_equals_one_piece_extraction(chunk_frames):
    audio = tones(220 * 2 ** (np.arange(40) % 13 / 12), 0.43, noise=0.05)[None]  # 17 s, changing notes
    whole = chroma_bins(audio, SETTINGS)
    for block in (1000, 32000, 300000):
        stream = ChromaStream(SETTINGS, chunk_frames=chunk_frames)
        for start in range(0, audio.shape[-1], block):
            stream.feed(audio[:, start : start + block])
        assert np.array_equal(stream.finish(), whole)


def test_window_chroma_takes_the_frames_of_the_windows_audio():
    bins = (np.arange(40) % 11 + 1).astype(np.uint8)  # never 0, so padding (0) shows
    hop = 640  # 50 Hz codes; a chroma frame every 4096 samples = 6.4 code frames
    window = window_chroma(bins, window_frames(300, 128, 64, "tile"), hop, SETTINGS)
    assert len(window) == 20  # ceil(128 * 640 / 4096)
    assert window.tolist() == bins[10:30].tolist()  # 64 code frames = 40960 samples = 10 chroma frames
    wrapped = window_chroma(bins[:11], window_frames(64, 128, 0, "tile"), hop, SETTINGS)
    assert wrapped.tolist() == bins[:10].tolist() + bins[:10].tolist()  # a loop of 10 chroma frames, tiled
    padded = window_chroma(bins[:11], window_frames(64, 128, 0, "pad"), hop, SETTINGS)
    assert padded.tolist() == bins[:10].tolist() + [0] * 10  # padding: bin 0, the null melody


def test_windows_carry_their_chroma_and_drop_it_apart_from_the_caption():
    frames, length = 50, 400  # 50 code frames = 32000 samples: ceil(7.8) = 8 chroma frames
    codes = np.tile(np.arange(length, dtype=np.int16), (4, 1))  # codes[0, t] = t: the window's offset shows
    bins = (np.arange(1 + length * 640 // 4096) % 12).astype(np.uint8)
    clip = Clip(codes, "caption", "a.wav", "sha", chroma=bins)
    common = dict(frames=frames, pad_mode="tile", special_token_id=2048, seed=3, condition_dropout=0.5)
    melody = TrainWindows([clip], chroma=WindowChroma(SETTINGS, 640), chroma_dropout=0.2, **common)
    plain = TrainWindows([Clip(codes, "caption", "a.wav", "sha")], **common)
    drops = []
    for draw in range(1500):
        example, reference = melody[draw], plain[draw]
        offset = int(example.codes[0, 0])
        assert torch.equal(example.codes, reference.codes) and example.drop_condition == reference.drop_condition
        expected = window_chroma(bins, window_frames(length, frames, offset, "tile"), 640, SETTINGS)
        assert example.chroma.shape == (8, 12) and example.chroma.argmax(-1).tolist() == expected.tolist()
        drops.append((example.drop_condition, example.drop_chroma))
    text, chroma = np.array(drops).T
    assert abs(text.mean() - 0.5) < 0.05 and abs(chroma.mean() - 0.2) < 0.04
    assert abs((text & chroma).mean() - 0.1) < 0.03  # drawn independently


def _melody_codec():
    model = build_tiny_musicgen(name="tiny-melody")
    fmt = audio_format(model)
    return model, fmt, codec_encoder(model.audio_encoder, fmt, torch.device("cpu"))


def test_melody_cache_stores_each_files_chroma_and_never_mixes_with_a_codes_only_cache(demo_dir, tmp_path):
    model, fmt, encoder = _melody_codec()
    settings = chroma_settings(model)
    assert settings == SETTINGS and chroma_settings(build_tiny_musicgen()) is None
    cache = tmp_path / "melody"
    result = prepare_cache(demo_dir, cache, encoder=encoder, fmt=fmt, codec_id=codec_identity(model, "tiny-melody"),
                           chroma=settings)
    assert result.encoded == 6
    for entry in load_manifest(cache):
        audio = load_audio(demo_dir / entry.source, fmt.sample_rate, 1)
        stored = load_chroma(cache, entry)
        assert stored.dtype == np.uint8 and np.array_equal(stored, chroma_bins(audio, settings))
        assert entry.condition is None
    with pytest.raises(CacheMismatchError, match="chroma"):  # the same folder for a text-only model
        prepare_cache(demo_dir, cache, encoder=encoder, fmt=fmt, codec_id=codec_identity(model, "tiny-melody"))
    plain = tmp_path / "plain"
    prepare_cache(demo_dir, plain, encoder=encoder, fmt=fmt, codec_id=codec_identity(model, "tiny-melody"))
    assert load_chroma(plain, load_manifest(plain)[0]) is None
    with pytest.raises(CacheMismatchError, match="chroma"):
        prepare_cache(demo_dir, plain, encoder=encoder, fmt=fmt, codec_id=codec_identity(model, "tiny-melody"),
                      chroma=settings)


def test_condition_file_gives_the_melody_and_is_not_a_clip(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    soundfile.write(data / "vocals.wav", tones([440.0], 2.0), RATE)  # A
    soundfile.write(data / "accompaniment.wav", tones([261.63, 329.63], 1.0), RATE)  # C then E
    soundfile.write(data / "solo.wav", tones([392.0], 2.0), RATE)  # G, conditions on itself
    soundfile.write(data / "orphan.wav", tones([349.23], 2.0), RATE)
    (data / "metadata.csv").write_text(
        "file_name,text,condition_file\n"
        "vocals.wav,vocals,accompaniment.wav\n"
        "solo.wav,solo,\n"
        "orphan.wav,orphan,missing.wav\n"
    )
    model, fmt, encoder = _melody_codec()
    cache = tmp_path / "cache"
    result = prepare_cache(data, cache, encoder=encoder, fmt=fmt, codec_id="c", chroma=chroma_settings(model))
    entries = {entry.source: entry for entry in result.entries}
    assert set(entries) == {"vocals.wav", "solo.wav"}  # accompaniment.wav is a condition only
    assert entries["vocals.wav"].condition == "accompaniment.wav" and entries["solo.wav"].condition is None
    assert [s["source"] for s in result.skipped] == ["orphan.wav"] and "missing.wav" in result.skipped[0]["reason"]
    vocals = load_chroma(cache, entries["vocals.wav"])
    accompaniment = chroma_bins(load_audio(data / "accompaniment.wav", RATE, 1), SETTINGS)
    assert np.array_equal(vocals, accompaniment) and set(vocals[2:6].tolist()) == {0}
    assert np.bincount(load_chroma(cache, entries["solo.wav"]), minlength=12).argmax() == 7  # G
    # the pairing is part of the key: the same vocals without it are another entry
    shutil.copy(data / "vocals.wav", data / "vocals_alone.wav")
    again = prepare_cache(data, cache, encoder=encoder, fmt=fmt, codec_id="c", chroma=chroma_settings(model))
    keys = {entry.source: entry.key for entry in again.entries}
    assert keys["vocals_alone.wav"] != keys["vocals.wav"] and again.encoded == 1


def test_chroma_dropout_is_checked():
    from musicgen_lora.training.config import RunConfig, apply_overrides
    from musicgen_lora.training.validation import ConfigValueError, validate_run_config

    assert RunConfig().data.chroma_dropout == 0.2
    with pytest.raises(ConfigValueError, match=r"--data\.chroma-dropout"):
        validate_run_config(apply_overrides(RunConfig(), {"data.chroma_dropout": 1.5}))
