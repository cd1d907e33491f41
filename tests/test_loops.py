"""Loop extraction on synthetic drums with a known tempo and downbeat; percussive emphasis and its
place in the token cache key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from musicgen_lora.data.percussive import percussive_emphasis
from musicgen_lora.tools.beat_analysis import fix_tempo_octave
from musicgen_lora.tools.loops import LoopSettings, extract_loops, main

RATE = 32000
ALIGN_TOLERANCE = 0.030
"""Loop starts must be within 30 ms of a true downbeat."""


def drum_track(bpm: float, offset: float, bars: int, seed: int = 0, beats_per_bar: int = 4) -> np.ndarray:
    """Kicks on every beat (the downbeat accented), hi-hats on the off-beats, starting at `offset` s."""
    rng = np.random.default_rng(seed)
    beat = 60.0 / bpm
    y = rng.standard_normal(int((offset + bars * beats_per_bar * beat + 0.3) * RATE)) * 1e-3
    t = np.arange(int(0.15 * RATE)) / RATE
    kick = np.sin(2 * np.pi * np.cumsum(50 + 100 * np.exp(-t * 40)) / RATE) * np.exp(-t * 20)
    hat = np.diff(rng.standard_normal(int(0.03 * RATE) + 1)) * np.exp(-np.arange(int(0.03 * RATE)) / RATE * 150) * 0.3
    for i in range(bars * beats_per_bar):
        start = round((offset + i * beat) * RATE)
        y[start : start + kick.size] += (1.0 if i % beats_per_bar == 0 else 0.35) * kick
        off = round((offset + (i + 0.5) * beat) * RATE)
        y[off : off + hat.size] += hat
    return (0.8 * y / np.abs(y).max()).astype(np.float32)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("songs")
    (folder / "drums").mkdir()
    soundfile.write(folder / "drums" / "groove.wav", drum_track(120, 0.37, bars=7), RATE)
    quiet = np.random.default_rng(1).standard_normal(10 * RATE).astype(np.float32) * 3e-4  # about -70 dBFS
    soundfile.write(folder / "drums" / "hiss.wav", quiet, RATE)
    return folder


def test_loops_are_downbeat_aligned_with_the_expected_length_and_a_rerun_does_nothing(source_dir, tmp_path):
    out = tmp_path / "loops"
    result = extract_loops(source_dir, out, LoopSettings(bars=2))
    assert result.processed == ["drums/groove.wav", "drums/hiss.wav"]
    assert "drums/hiss.wav" in result.failed  # too quiet: no loop kept, and said why
    rows = [json.loads(line) for line in (out / "drums" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) >= 2  # 7 bars: three two-bar loops, or two if the tracker skips the first bar
    expected_seconds = 2 * 4 * 60 / 120
    bar = 4 * 60 / 120
    for row in rows:
        assert row["file_name"].startswith("groove_") and row["source"] == "drums/groove.wav"
        assert row["text"] == "drums loop, 120 bpm" and abs(row["bpm"] - 120) < 0.5
        audio, rate = soundfile.read(out / "drums" / row["file_name"], dtype="float32")
        assert rate == RATE and abs(len(audio) / rate - expected_seconds) < 0.01
        bars_in = (row["start"] - 0.37) / bar
        assert abs(bars_in - round(bars_in)) * bar < ALIGN_TOLERANCE, row
        # The file itself starts on the accented downbeat: its loudest hit is in the first 30 ms.
        head = np.abs(audio[: int(ALIGN_TOLERANCE * rate)]).max()
        assert head > 0.5 * np.abs(audio).max()
    assert len({row["start"] for row in rows}) == len(rows)

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "drums").iterdir()}
    assert main(["--in", str(source_dir), "--out", str(out), "--bars", "2"]) == 0
    again = extract_loops(source_dir, out, LoopSettings(bars=2))
    assert again.processed == [] and again.written == 0
    assert sorted(again.unchanged) == ["drums/groove.wav", "drums/hiss.wav"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "drums").iterdir()} == stamps

    # Changed settings re-cut the source and replace its loops (one-bar loops: twice as many).
    third = extract_loops(source_dir, out, LoopSettings(bars=1))
    assert third.processed == ["drums/groove.wav", "drums/hiss.wav"]
    rows_1 = [json.loads(line) for line in (out / "drums" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows_1) > len(rows) and all(abs(r["seconds"] - 2.0) < 0.01 for r in rows_1)
    assert sorted(p.name for p in (out / "drums").glob("*.wav")) == sorted(r["file_name"] for r in rows_1)


def test_demo_drum_patterns_are_cut_on_their_downbeats(tmp_path):
    """Realistic patterns without accents (kick on 1, snare on the backbeat, busy hats), tiled."""
    from musicgen_lora.data.demo import STYLES, drum_loop

    (tmp_path / "in").mkdir()
    styles = {s.name: s for s in STYLES if s.name in ("hip hop", "rock", "trap")}
    for style in styles.values():
        track = np.concatenate([np.zeros(round(0.23 * RATE), np.float32), np.tile(drum_loop(style, 1, RATE), 3)])
        soundfile.write(tmp_path / "in" / f"{style.name.replace(' ', '_')}.wav", track, RATE)
    result = extract_loops(tmp_path / "in", tmp_path / "out", LoopSettings(bars=1))
    assert result.written >= 3 * 3 and not result.failed
    for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        style = styles[row["source"].removesuffix(".wav").replace("_", " ")]
        assert abs(row["bpm"] - style.bpm) < 0.5 and f"{style.bpm} bpm" in row["text"]
        bar = 4 * 60 / style.bpm
        bars_in = (row["start"] - 0.23) / bar
        assert abs(bars_in - round(bars_in)) * bar < ALIGN_TOLERANCE, row


def test_tempo_octave_is_moved_into_range():
    onset = np.ones(2000)
    fast = np.arange(0, 10, 0.25)  # 240 bpm -> 120
    slow = np.arange(0, 10, 1.0)  # 60 bpm -> 120
    assert 60 / np.median(np.diff(fix_tempo_octave(fast, onset, 70, 180))) == pytest.approx(120)
    assert 60 / np.median(np.diff(fix_tempo_octave(slow, onset, 70, 180))) == pytest.approx(120)
    ok = np.arange(0, 10, 0.5)
    np.testing.assert_array_equal(fix_tempo_octave(ok, onset, 70, 180), ok)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        LoopSettings(bars=2, overlap=2)


def test_percussive_emphasis_keeps_hits_and_drops_tones():
    t = np.arange(2 * RATE) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    clicks = np.zeros_like(t)
    clicks[:: RATE // 4] = 1.0
    out = percussive_emphasis(np.stack([tone + clicks]).astype(np.float32))
    assert out.shape == (1, t.size)
    tone_power = np.dot(out[0], np.sin(2 * np.pi * 220 * t)) ** 2
    assert tone_power < 0.01 * np.dot(tone, np.sin(2 * np.pi * 220 * t)) ** 2  # the tone is > 20 dB down
    assert out[0, RATE // 2] > 0.3  # the hits remain


def test_percussive_preprocessing_is_part_of_the_cache_key(tiny_codec, demo_dir, tmp_path):
    from musicgen_lora.data.tokens import CacheMismatchError, cache_identity, entry_key
    from musicgen_lora.training.data_setup import percussive_encoder

    plain = cache_identity(tiny_codec.codec_id, tiny_codec.fmt)
    encoder, preprocessing = percussive_encoder(tiny_codec.encoder)
    emphasised = cache_identity(tiny_codec.codec_id, tiny_codec.fmt, preprocessing)
    assert "preprocessing" not in plain and emphasised["preprocessing"]["method"] == "hpss"
    assert entry_key("abc", plain) != entry_key("abc", emphasised)

    source = sorted(demo_dir.glob("*.wav"))[:1]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / source[0].name).write_bytes(source[0].read_bytes())
    first = tiny_codec.prepare(tmp_path / "data", tmp_path / "plain")
    with pytest.raises(CacheMismatchError, match="preprocessing"):  # one folder never mixes the two
        _prepare(tiny_codec, tmp_path / "data", tmp_path / "plain", encoder, preprocessing)
    second = _prepare(tiny_codec, tmp_path / "data", tmp_path / "percussive", encoder, preprocessing)
    assert second.encoded == 1 and first.entries[0].key != second.entries[0].key
    plain_codes = np.load(tmp_path / "plain" / "codes" / f"{first.entries[0].key}.npz")["codes"]
    perc_codes = np.load(tmp_path / "percussive" / "codes" / f"{second.entries[0].key}.npz")["codes"]
    assert not np.array_equal(plain_codes, perc_codes)


def _prepare(codec, data_dir, cache_dir, encoder, preprocessing):
    from musicgen_lora.data.tokens import prepare_cache

    return prepare_cache(data_dir, cache_dir, encoder=encoder, fmt=codec.fmt, codec_id=codec.codec_id,
                         preprocessing=preprocessing)


def test_percussive_encoder_applies_emphasis_before_encoding(tiny_codec):
    from musicgen_lora.training.data_setup import percussive_encoder

    encoder, _ = percussive_encoder(tiny_codec.encoder)
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 6400)).astype(np.float32) * 0.1)
    assert encoder(audio).shape == tiny_codec.encoder(audio).shape
