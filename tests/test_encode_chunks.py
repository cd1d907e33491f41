"""Issue 12: memory-bounded encoding (streamed decode + resampling, chunked encoding), codes that
are a pure function of the file, a read-only complete cache, per-file failures as skip entries."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch

from musicgen_lora.data import tokens
from musicgen_lora.data.audio import resample, resample_blocks, stream_audio
from musicgen_lora.data.encoding import encode_blocks
from musicgen_lora.data.tokens import load_codes, load_manifest


def _music(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(samples, channels) float32: gated tones and noise bursts, so frames differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (110 + 40 * seed) * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    hits = 0.2 * rng.standard_normal(t.shape) * (np.sin(2 * np.pi * 3 * t) > 0.5)
    return np.repeat((tone + hits)[:, None], channels, axis=1).astype(np.float32)


def test_streamed_resampling_has_no_seams():
    audio = _music(23.7, 44100, channels=2).T
    blocks = [audio[:, i : i + 97_003] for i in range(0, audio.shape[1], 97_003)]  # odd block size
    streamed = np.concatenate(list(resample_blocks(iter(blocks), 44100, 32000)), axis=-1)
    whole = resample(audio, 44100, 32000)
    assert streamed.shape == whole.shape == (2, round(audio.shape[1] * 32000 / 44100))
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_chunked_codes_agree_with_one_piece_encoding(tiny_codec):
    """30 s encoded in 10 s chunks with 1 s context vs in one piece. The tiny codec's random
    codebooks have near-ties, so float rounding alone flips a few codes anywhere (batching two
    files flips more, ~5%); chunking must stay near that floor and never shift frames."""
    audio = _music(30.0, 32000).T
    whole = tiny_codec.encoder(torch.from_numpy(audio)[None])[0].numpy()
    chunked = encode_blocks(iter([audio[:, :400_000], audio[:, 400_000:]]), tiny_codec.encoder, 640, 500, 50)
    assert chunked.shape == whole.shape == (4, 1500)
    agreement = (chunked == whole).mean(axis=1)
    print("identical codes per codebook:", agreement.round(4).tolist())
    assert agreement.min() > 0.95  # measured 0.989-0.991 on CPU


def test_codes_do_not_depend_on_other_files_or_batch_size(tiny_codec, tmp_path):
    alone, crowd = tmp_path / "alone", tmp_path / "crowd"
    alone.mkdir()
    crowd.mkdir()
    soundfile.write(alone / "a.wav", _music(3.0, 32000), 32000)
    for seed in range(4):  # files of exactly equal length: the old code batched them together
        soundfile.write(crowd / f"{seed}.wav", _music(3.0, 32000, seed=seed), 32000)
    codes = {}
    for name, folder, batch in [("alone", alone, 1), ("crowd1", crowd, 1), ("crowd8", crowd, 8)]:
        tiny_codec.prepare(folder, tmp_path / f"cache-{name}", batch_size=batch)
        entry = next(e for e in load_manifest(tmp_path / f"cache-{name}") if e.source in {"a.wav", "0.wav"})
        codes[name] = load_codes(tmp_path / f"cache-{name}", entry)
    assert np.array_equal(codes["alone"], codes["crowd1"]) and np.array_equal(codes["crowd1"], codes["crowd8"])


def _snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_complete_cache_is_read_without_lock_or_write(tiny_codec, demo_dir, demo_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    before = _snapshot(cache)
    for path in [cache, *cache.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        def no_lock(*_args, **_kwargs):
            raise AssertionError("a complete cache must not be locked")

        monkeypatch.setattr(tokens, "FileLock", no_lock)
        result = tiny_codec.prepare(demo_dir, cache)
    finally:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert result.encoded == 0 and len(result.entries) == 6
    assert _snapshot(cache) == before  # nothing created, nothing modified


def test_a_file_that_fails_to_encode_is_skipped_and_retried(tiny_codec, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for seed in range(3):
        soundfile.write(data / f"{seed}.wav", _music(1.0 + seed, 32000, seed=seed), 32000)

    def out_of_memory_on_long_audio(audio):
        if audio.shape[-1] > 80_000:  # only the 3 s file
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 11.00 GiB")
        return tiny_codec.encoder(audio)

    result = tokens.prepare_cache(
        data, tmp_path / "cache", encoder=out_of_memory_on_long_audio, fmt=tiny_codec.fmt, codec_id=tiny_codec.codec_id
    )
    assert [e.source for e in result.entries] == ["0.wav", "1.wav"]
    assert result.skipped == [{"source": "2.wav", "reason": "encoding failed: OutOfMemoryError: CUDA out of memory. "
                               "Tried to allocate 11.00 GiB"}]
    assert json.loads((tmp_path / "cache" / "skipped.json").read_text()) == result.skipped
    again = tiny_codec.prepare(data, tmp_path / "cache")  # a transient failure is retried
    assert again.encoded == 1 and len(again.entries) == 3 and not again.skipped


def test_stream_reports_bad_audio_like_load_audio(tmp_path):
    path = tmp_path / "nan.wav"
    audio = _music(2.0, 32000)
    audio[40_000] = np.nan
    soundfile.write(path, audio, 32000, subtype="FLOAT")
    with pytest.raises(tokens.AudioError, match="NaN"):
        list(stream_audio(path, 32000, 1, block_seconds=0.5))


# VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across exec, and this child is
# started from a pytest process that holds far more than the prepare under test.
MEASURE = textwrap.dedent("""
    import re, sys
    from pathlib import Path
    from musicgen_lora.training import prepare
    code = prepare.main(sys.argv[1:])
    print("MAXRSS_KB", re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
    sys.exit(code)
""")


def write_long_wav(path, minutes: float, rate: int = 44100, block_seconds: float = 30.0) -> None:
    """Stereo 44.1 kHz music streamed to disk block by block (the test never holds the file)."""
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as handle:
        for index in range(round(minutes * 60 / block_seconds)):
            handle.write(_music(block_seconds, rate, channels=2, seed=index % 5))


def test_prepare_of_ten_minutes_stays_under_1_5_gb(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_long_wav(data / "ten_minutes.wav", 10.0)
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, "--data", str(data), "--model", "tiny", "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
    print(f"prepare of 10 min stereo 44.1 kHz, tiny codec: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 1536
    (entry,) = load_manifest(tmp_path / "cache")
    assert entry.frames == 10 * 60 * 50
