"""`musicgen-lora caption`: tempo, key, CLAP tags into metadata.jsonl, never over a user's captions."""

import json

import numpy as np
import pytest
import soundfile

from conftest import tiny_clap
from musicgen_lora.cli import main as cli
from musicgen_lora.tools.music_tags import estimate_bpm, estimate_key, render

RATE = 22050


def clicks(bpm: float, seconds: float = 8.0) -> np.ndarray:
    """Short decaying noise bursts every beat, accented on beat 1."""
    y = np.zeros(int(seconds * RATE), np.float32)
    burst = np.random.default_rng(0).standard_normal(int(0.02 * RATE)) * np.exp(-np.linspace(0, 8, int(0.02 * RATE)))
    for i, start in enumerate(np.arange(0, seconds, 60 / bpm)):
        at = int(start * RATE)
        y[at : at + len(burst)] += (0.9 if i % 4 == 0 else 0.5) * burst[: len(y) - at]
    return y


def tone(freqs, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    y = sum(np.sin(2 * np.pi * f * h * t) / h for f in freqs for h in (1, 2, 3))
    return (0.2 * y / len(freqs)).astype(np.float32)


def a_major() -> np.ndarray:
    """I-IV-V-I in A major (A, D, E, A triads) then the A major scale."""
    a4 = 440.0

    def hz(semitones):
        return a4 * 2 ** (semitones / 12)

    chords = [[0, 4, 7], [5, 9, 12], [7, 11, 14], [0, 4, 7]]
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    parts = [tone([hz(s - 12) for s in chord], 1.0) for chord in chords]
    parts += [tone([hz(s)], 0.4) for s in scale]
    return np.concatenate(parts)


@pytest.mark.parametrize("bpm", [120.0, 95.0])
def test_tempo_of_clicks(bpm):
    assert estimate_bpm(clicks(bpm), RATE) == pytest.approx(bpm, rel=0.03)


def test_key_of_an_a_major_progression():
    key, strength = estimate_key(a_major(), RATE)
    assert key == "A major" and strength > 0.5
    minor_key, _ = estimate_key(tone([220.0 * 2 ** (s / 12) for s in (0, 3, 7)], 3.0), RATE)  # A C E
    assert minor_key == "A minor"


def test_template_leaves_out_parts_without_values():
    values = {"genre": None, "instruments": "drums, bass", "bpm": "120", "key": "A major", "mood": ""}
    assert render("{genre}, {mood}, {instruments}, {bpm} bpm, {key}", values) == "drums, bass, 120 bpm, A major"
    assert render("{genre} drum loop, {bpm} bpm", {"genre": "techno", "bpm": "128"}) == "techno drum loop, 128 bpm"


def _folder(tmp_path):
    data = tmp_path / "loops"
    (data / "sub").mkdir(parents=True)
    soundfile.write(data / "clicks.wav", clicks(120.0), RATE)
    soundfile.write(data / "chords.wav", a_major(), RATE)
    soundfile.write(data / "mine.wav", clicks(100.0), RATE)
    soundfile.write(data / "sub" / "csv_captioned.wav", clicks(90.0), RATE)
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "mine.wav", "text": "my own words", "extra": 1}) + "\n")
    (data / "sub" / "metadata.csv").write_text("file_name,text\ncsv_captioned.wav,a csv caption\n")
    return data


def _rows(data):
    return {r["file_name"]: r for r in map(json.loads, (data / "metadata.jsonl").read_text().splitlines())}


def test_caption_keeps_user_captions_and_adds_tempo_and_key(tmp_path, capsys):
    data = _folder(tmp_path)
    assert cli(["caption", "--data", str(data), "--no-tags"]) == 0
    rows = _rows(data)
    assert rows["mine.wav"] == {"file_name": "mine.wav", "text": "my own words", "extra": 1}  # untouched
    assert "sub/csv_captioned.wav" not in rows  # captioned by the user's csv
    assert rows["clicks.wav"]["bpm"] == pytest.approx(120, rel=0.03)
    assert rows["clicks.wav"]["text"].endswith(" bpm, " + rows["clicks.wav"]["key"])
    assert rows["chords.wav"]["key"] == "A major" and "A major" in rows["chords.wav"]["text"]
    assert "tags" not in rows["clicks.wav"]

    before = (data / "metadata.jsonl").read_text()
    assert cli(["caption", "--data", str(data), "--no-tags"]) == 0  # nothing left to caption
    assert (data / "metadata.jsonl").read_text() == before and "nothing to do" in capsys.readouterr().out

    assert cli(["caption", "--data", str(data), "--no-tags", "--overwrite", "--template", "{folder} loop, {bpm} bpm"]) == 0
    rows = _rows(data)
    assert rows["mine.wav"]["text"] == "loops loop, 100 bpm" and next(iter(rows)) == "mine.wav"  # replaced in place
    assert rows["sub/csv_captioned.wav"]["text"] == "sub loop, 90 bpm"


def _save_tiny_clap(folder):
    model, processor = tiny_clap()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def test_random_clap_writes_tags_with_scores_above_the_threshold(tmp_path):
    data = _folder(tmp_path)
    _save_tiny_clap(tmp_path / "clap")
    base = ["caption", "--data", str(data), "--clap-model", str(tmp_path / "clap"), "--device", "cpu"]
    assert cli([*base, "--threshold", "0"]) == 0
    row = _rows(data)["clicks.wav"]
    assert set(row["tags"]) == {"genre", "instrument", "mood"}
    (genre, score), = row["tags"]["genre"].items()
    assert 0 < score <= 1 and len(row["tags"]["instrument"]) == 3
    assert row["text"].startswith(genre + ", ")

    assert cli([*base, "--overwrite", "--threshold", str(min(1.0, score + 1e-3))]) == 0
    row = _rows(data)["clicks.wav"]
    assert row["tags"]["genre"] == {} and not row["text"].startswith(genre)
    assert all(s >= score for tags in row["tags"].values() for s in tags.values())


def test_missing_clap_weights_exit_2_with_the_way_out(tmp_path, capsys):
    data = _folder(tmp_path)
    before = (data / "metadata.jsonl").read_text()
    assert cli(["caption", "--data", str(data), "--clap-model", "nobody/no-such-clap"]) == 2
    err = capsys.readouterr().err
    assert "not available offline" in err and "--no-tags" in err and "hf download nobody/no-such-clap" in err
    assert (data / "metadata.jsonl").read_text() == before
