"""Issue 12.5: metadata that people and spreadsheets write. A BOM, malformed CSV, rows that are not
objects, non-string names or captions, NUL bytes, over-long names, duplicates: each row is reported
with its line (log + skipped.json) and skipped; nothing crashes, and the good rows keep their captions."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import soundfile

from musicgen_lora.data.captions import read_metadata
from musicgen_lora.data.tokens import load_manifest
from musicgen_lora.training import prepare

NAMES = ("kick.wav", "snare.wav", "hats.wav", "toms.wav")


def _folder(root, names=NAMES):
    root.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        noise = np.random.default_rng(seed).standard_normal(16000).astype(np.float32) * 0.3
        soundfile.write(root / name, noise, 32000)
    return root


def _prepare(data, cache) -> int:
    return prepare.main(["--data", str(data), "--model", "tiny", "--cache", str(cache)])


def test_bom_prefixed_csv_gives_every_file_its_caption(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark: the header must still read `file_name`."""
    data = _folder(tmp_path / "data")
    with open(data / "metadata.csv", "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows([name, f"{name[:-4]}, dry, 120 bpm"] for name in NAMES)
    assert (data / "metadata.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert _prepare(data, tmp_path / "cache") == 0
    captions = {entry.source: entry.caption for entry in load_manifest(tmp_path / "cache")}
    assert captions == {name: f"{name[:-4]}, dry, 120 bpm" for name in NAMES}
    assert json.loads((tmp_path / "cache" / "skipped.json").read_text()) == []


def test_bom_prefixed_jsonl_is_read(tmp_path):
    data = _folder(tmp_path / "data")
    rows = "".join(json.dumps({"file_name": name, "text": name[:-4]}) + "\n" for name in NAMES)
    (data / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    captions, problems = read_metadata(data)
    assert sorted(captions.values()) == sorted(name[:-4] for name in NAMES) and problems == []


def test_malformed_csv_is_reported_with_line_numbers(tmp_path):
    data = _folder(tmp_path / "data")
    (data / "metadata.csv").write_text(
        "file_name,text\n"
        "kick.wav,kick\n"                # 2: good
        "snare.wav,snare, tight\n"       # 3: an unquoted comma: three columns
        'hats.wav,"open hats\n'          # 4: a quote never closed, swallowing the rest
        "toms.wav,toms\n"                # 5
    )
    captions, problems = read_metadata(data)
    assert {path.name: text for path, text in captions.items()} == {"kick.wav": "kick"}
    assert [(p.line, p.reason.split(",")[0]) for p in problems] == [
        (3, "3 columns"), (4, "a quote opened on line 4 is never closed: lines 4-5 (the rest of the file) are ignored"),
    ]


def test_wrong_header_is_one_problem(tmp_path):
    data = _folder(tmp_path / "data")
    (data / "metadata.csv").write_text("name;caption\nkick.wav;kick\n")
    captions, problems = read_metadata(data)
    assert captions == {} and len(problems) == 1 and problems[0].line == 1 and "lacks 'file_name'" in problems[0].reason


JSONL_ROWS = [
    '{"file_name": "kick.wav", "text": "kick"}',           # 1: good
    "null",                                                 # 2
    '["snare.wav", "snare"]',                               # 3
    "42",                                                   # 4
    '{"file_name": 7, "text": "seven"}',                    # 5
    '{"file_name": "snare.wav", "text": 3.5}',              # 6
    '{"file_name": "snare.wav", "text": ["a", "b"]}',       # 7
    '{"file_name": "hats\\u0000.wav", "text": "nul"}',      # 8
    json.dumps({"file_name": "x" * 300 + ".wav", "text": "long"}),  # 9
    '{"file_name": "kick.wav", "text": "kick again"}',      # 10: a duplicate
    '{"file_name": "hats.wav", "text": "hats"',             # 11: cut short
    '{"file_name": "toms.wav", "text": "toms"}',            # 12: good
]


def test_bad_jsonl_rows_are_warned_with_their_line_and_skipped(tmp_path, caplog):
    data = _folder(tmp_path / "data")
    (data / "metadata.jsonl").write_text("\n".join(JSONL_ROWS) + "\n")
    with caplog.at_level(logging.WARNING):
        assert _prepare(data, tmp_path / "cache") == 0
    captions = {entry.source: entry.caption for entry in load_manifest(tmp_path / "cache")}
    assert captions["kick.wav"] == "kick" and captions["toms.wav"] == "toms"
    assert captions["snare.wav"] == captions["hats.wav"] == "data loop"  # the fallback, and said so
    skipped = json.loads((tmp_path / "cache" / "skipped.json").read_text())
    assert [row["line"] for row in skipped] == list(range(2, 12))
    assert all(row["source"] == "metadata.jsonl" for row in skipped)
    reasons = {row["line"]: row["reason"] for row in skipped}
    assert "got null" in reasons[2] and "got [" in reasons[3] and "got 42" in reasons[4]
    assert "'file_name' must be a string, got int" in reasons[5]
    assert "caption 'text' must be a string, got float" in reasons[6] and "got list" in reasons[7]
    assert "NUL byte" in reasons[8] and "too long" in reasons[9]
    assert "again (first at metadata.jsonl:1)" in reasons[10] and "not valid JSON" in reasons[11]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for line in range(2, 12):
        assert f"metadata.jsonl:{line}: " in logged


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8 \x00", b""])
def test_unreadable_or_empty_metadata_never_crashes(tmp_path, content):
    data = _folder(tmp_path / "data")
    (data / "metadata.csv").write_bytes(content)
    captions, problems = read_metadata(data)
    assert captions == {}
    assert len(problems) == (1 if content else 0)
