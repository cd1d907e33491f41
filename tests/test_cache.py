"""Token cache: encode once, skip unchanged files, re-encode changed ones, refuse another codec."""

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch

from musicgen_lora.data.tokens import (
    CacheMismatchError,
    codec_encoder,
    load_codes,
    load_manifest,
    prepare_cache,
)
from musicgen_lora.modeling.model import audio_format, build_tiny_musicgen, codec_identity


def _prepare(data, cache, model=None, codec_id=None):
    model = model or build_tiny_musicgen()
    fmt = audio_format(model)
    calls = []
    encode = codec_encoder(model.audio_encoder, fmt, torch.device("cpu"))

    def counting(audio):
        calls.append(audio.shape[0])
        return encode(audio)

    result = prepare_cache(data, cache, encoder=counting, fmt=fmt, codec_id=codec_id or codec_identity(model, "tiny"))
    return result, calls


def test_second_prepare_skips_unchanged_and_reencodes_changed(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    cache = tmp_path / "cache"
    first, calls = _prepare(data, cache)
    assert first.encoded == 6 and sum(calls) == 6 and not first.skipped
    manifest = json.loads((cache / "manifest.json").read_text())
    assert len(manifest["entries"]) == 6
    entry = load_manifest(cache)[0]
    codes = load_codes(cache, entry)
    assert codes.dtype == np.int16 and codes.shape[0] == 4 and codes.shape[1] == entry.frames
    assert entry.caption.endswith("bpm")  # from metadata.csv, not a dummy prompt

    second, calls = _prepare(data, cache)
    assert second.encoded == 0 and calls == []
    assert [e.key for e in second.entries] == [e.key for e in first.entries]

    changed = data / first.entries[0].source
    audio, rate = soundfile.read(changed)
    soundfile.write(changed, audio[::-1].copy(), rate)
    third, calls = _prepare(data, cache)
    assert third.encoded == 1 and sum(calls) == 1
    assert third.entries[0].key != first.entries[0].key
    assert [e.key for e in third.entries[1:]] == [e.key for e in first.entries[1:]]


def test_codes_are_what_the_codec_makes(demo_dir, tmp_path):
    model = build_tiny_musicgen()
    _prepare(demo_dir, tmp_path / "cache", model)
    entry = load_manifest(tmp_path / "cache")[0]
    audio, _ = soundfile.read(demo_dir / entry.source, dtype="float32")
    with torch.no_grad():
        direct = model.audio_encoder.encode(torch.from_numpy(audio)[None, None], bandwidth=2.2).audio_codes[0, 0]
    assert np.array_equal(load_codes(tmp_path / "cache", entry), direct.numpy())


def test_cache_for_another_codec_is_refused(demo_dir, tmp_path):
    _prepare(demo_dir, tmp_path / "cache")
    with pytest.raises(CacheMismatchError, match="codec_id"):
        _prepare(demo_dir, tmp_path / "cache", codec_id="another-codec")
