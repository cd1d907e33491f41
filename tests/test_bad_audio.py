"""Issue 6.1: a folder full of bad audio. Every good file is kept, every bad one is skipped with its
reason in skipped.json and a one-line summary; only a folder with nothing usable is an error."""

from __future__ import annotations

import json
import logging
import time

import pytest

from corpus import build_bad_only, build_corpus
from musicgen_lora.data.tokens import NoUsableAudioError, load_manifest
from musicgen_lora.training import prepare


@pytest.fixture(scope="module")
def prepared(tiny_codec, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_audio")
    corpus = build_corpus(root / "data")
    start = time.perf_counter()
    result = tiny_codec.prepare(corpus.root, root / "cache")
    return corpus, result, root / "cache", time.perf_counter() - start


def test_exactly_the_good_files_are_kept(prepared):
    corpus, result, cache, _ = prepared
    assert {entry.source for entry in result.entries} == corpus.good
    assert [entry.source for entry in load_manifest(cache)] == sorted(corpus.good)


def test_every_bad_file_is_skipped_with_its_reason(prepared):
    corpus, result, cache, _ = prepared
    report = json.loads((cache / "skipped.json").read_text())
    assert report == result.skipped + result.metadata_skipped
    reasons = {item["source"]: item["reason"] for item in result.skipped}
    assert set(reasons) == set(corpus.bad)
    for source, fragment in corpus.bad.items():
        assert fragment in reasons[source], (source, reasons[source])
    assert all(str(corpus.root) not in reason for reason in reasons.values())  # no long temp paths


def test_summary_is_one_line(prepared):
    corpus, result, _, _ = prepared
    summary = result.summary()
    assert "\n" not in summary
    distinct = len(corpus.good) - 1  # the two identical files share one encoding
    assert f"{len(corpus.good)} usable files ({distinct} distinct: {distinct} encoded" in summary
    assert f"{len(corpus.bad)} skipped (see skipped.json)" in summary


def test_bad_but_usable_files_are_converted(prepared, tiny_codec):
    _, result, _, _ = prepared
    by_source = {entry.source: entry for entry in result.entries}
    frame_rate = tiny_codec.fmt.frame_rate
    assert by_source["good/low_8k.wav"].frames == frame_rate  # 1 s at 8 kHz -> 1 s at 32 kHz
    assert by_source["good/high_192k.wav"].frames == frame_rate // 2  # 0.5 s at 192 kHz
    assert by_source["good/surround_6ch.wav"].frames == frame_rate  # 6 channels down-mixed


def test_identical_files_share_one_encoding(prepared):
    _, result, cache, _ = prepared
    a, b = (next(e for e in result.entries if e.source == f"dups/copy_{x}.wav") for x in "ab")
    assert a.key == b.key and a.content_sha256 == b.content_sha256
    assert len(list((cache / "codes").glob("*.npz"))) == len({e.key for e in result.entries})
    assert (a.caption, b.caption) == ("the same loop", "dups loop")  # each keeps its own caption


def test_metadata_problems_warn_and_use_the_fallback(prepared):
    corpus, result, _, _ = prepared
    captions = {entry.source: entry.caption for entry in result.entries}
    for source, caption in corpus.captioned.items():
        assert captions[source] == caption
    missing = [w for w in result.warnings if "names missing file" in w]
    assert len(missing) == 1 and corpus.missing_in_metadata in missing[0]
    line = len(corpus.captioned) + 2  # the header, the captioned rows, then the missing file's row
    assert missing[0].endswith(f"metadata.csv:{line}: names missing file {corpus.missing_in_metadata!r}")
    assert result.metadata_skipped == [
        {"source": "metadata.csv", "line": line, "reason": f"names missing file {corpus.missing_in_metadata!r}"}
    ]
    assert result.summary().endswith("; 1 metadata rows skipped")
    fallback = [w for w in result.warnings if "no caption in metadata" in w]
    uncaptioned = sorted(corpus.good - set(corpus.captioned))
    assert len(fallback) == 1 and fallback[0].startswith(f"{len(uncaptioned)} files have no caption")
    assert all(source in fallback[0] for source in uncaptioned)
    assert not any(source in fallback[0] for source in corpus.bad)  # skipped files are not listed twice
    assert captions["good/low_8k.wav"] == "good loop"


def test_no_decoder_hangs_or_prints(prepared, capfd):
    # The librosa fallback (audioread, ffmpeg where installed) ran on every undecodable file above
    # within the fixture's time; a second pass over the bad files must not print anything either.
    corpus, _, _, seconds = prepared
    assert seconds < 60
    from musicgen_lora.data.audio import AudioError, load_audio

    for source in corpus.bad:
        with pytest.raises((AudioError, OSError)):
            load_audio(corpus.root / source, 32000, 1, min_samples=640)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_second_prepare_reuses_everything(prepared, tiny_codec):
    corpus, first, cache, _ = prepared
    again = tiny_codec.prepare(corpus.root, cache)
    assert again.encoded == 0 and again.entries == first.entries and again.skipped == first.skipped


def test_nothing_usable_is_an_error(tiny_codec, tmp_path):
    corpus = build_bad_only(tmp_path / "data")
    with pytest.raises(NoUsableAudioError, match="No usable audio") as error:
        tiny_codec.prepare(corpus.root, tmp_path / "cache")
    assert "skipped.json" in str(error.value)
    reasons = {item["source"]: item["reason"] for item in json.loads((tmp_path / "cache" / "skipped.json").read_text())}
    assert set(reasons) == set(corpus.bad)


def test_cli_fails_only_when_nothing_is_usable(tmp_path, capsys, caplog):
    good = build_corpus(tmp_path / "good")
    caplog.set_level(logging.WARNING)
    assert prepare.main(["--data", str(good.root), "--model", "tiny", "--cache", str(tmp_path / "c1")]) == 0
    out = capsys.readouterr().out
    assert f"{len(good.good)} usable files" in out and f"{len(good.bad)} skipped" in out
    assert any("names missing file" in record.getMessage() for record in caplog.records)

    bad = build_bad_only(tmp_path / "bad")
    assert prepare.main(["--data", str(bad.root), "--model", "tiny", "--cache", str(tmp_path / "c2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No usable audio") and "skipped.json" in err
