"""Batch generation: one WAV per good line, index.jsonl, bad lines reported by number and skipped."""

from __future__ import annotations

import json

import soundfile

from musicgen_lora.tools.generate import main, parse_batch

LINES = [
    '{"prompt": "techno drum loop", "seconds": 0.2, "seed": 1, "name": "techno"}',
    '{"prompt": "house drum loop", "seconds": 0.3, "guidance": 1.0}',
    '{"prompt": "broken", "seconds": 0.2',
    "",
    '{"seconds": 0.2}',
    '{"prompt": "negative", "seconds": -1}',
    '{"prompt": "typo", "second": 2}',
    '{"prompt": "bad seed", "seed": 1.5}',
    '{"prompt": "again", "name": "techno"}',
    '["not", "an", "object"]',
]


def test_parse_batch_reports_each_bad_line_with_its_number():
    jobs, errors = parse_batch(LINES, seconds=8.0, seed=0, guidance=3.0)
    assert [(job.line, job.name, job.seconds, job.seed, job.guidance) for job in jobs] == [
        (1, "techno", 0.2, 1, 3.0),
        (2, "line0002", 0.3, 0, 1.0),
    ]
    reasons = dict(errors)
    assert sorted(reasons) == [3, 5, 6, 7, 8, 9, 10]
    assert "invalid JSON" in reasons[3] and "prompt" in reasons[5] and "seconds" in reasons[6]
    assert "second" in reasons[7] and "integer" in reasons[8] and "duplicate" in reasons[9]


def test_batch_writes_the_good_lines_and_reports_the_bad(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "out"
    code = main(["--batch", str(prompts), "--out", str(out), "--model", "tiny", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"{prompts}:3: invalid JSON" in captured.err and f"{prompts}:6:" in captured.err
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [row["file"] for row in index] == ["techno.wav", "line0002.wav"]
    assert index[0] | {"duration": None} == {
        "file": "techno.wav", "prompt": "techno drum loop", "seconds": 0.2, "seed": 1, "guidance": 3.0,
        "duration": None, "line": 1,
    }
    for row in index:
        audio, rate = soundfile.read(out / row["file"])
        assert rate == 32000 and len(audio) == round(row["seconds"] * rate)
        assert row["duration"] == round(len(audio) / rate, 4)
    assert sorted(p.name for p in out.glob("*.wav")) == ["line0002.wav", "techno.wav"]


def test_batch_with_nothing_usable_fails_and_prompt_or_batch_is_required(tmp_path, capsys):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text("not json\n")
    assert main(["--batch", str(prompts), "--out", str(tmp_path / "out"), "--model", "tiny"]) == 1
    assert main(["--out", str(tmp_path / "x.wav"), "--model", "tiny"]) == 2
    assert main(["--batch", str(prompts), "--prompt", "a", "--out", str(tmp_path / "x"), "--model", "tiny"]) == 2
    assert "either --prompt" in capsys.readouterr().err
