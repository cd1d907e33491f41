"""Issue 12.8: progress bars on prepare, loops and batch generate, drawn only on a terminal
(tqdm's disable=None), so logs and captured output stay clean."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from musicgen_lora.tools.generate import generate_batch, parse_batch
from musicgen_lora.tools.loops import extract_loops


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def noise_dir(tmp_path):
    for seed in range(3):
        noise = np.random.default_rng(seed).standard_normal(8000 * (seed + 1)).astype(np.float32) * 0.3
        soundfile.write(tmp_path / f"noise{seed}.wav", noise, 32000)
    return tmp_path


def test_prepare_draws_a_bar_on_a_terminal_only(noise_dir, tiny_codec, tmp_path_factory, monkeypatch, capfd):
    tiny_codec.prepare(noise_dir, tmp_path_factory.mktemp("plain"))
    assert capfd.readouterr().err == ""  # not a terminal: no bar in the log
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    tiny_codec.prepare(noise_dir, tmp_path_factory.mktemp("tty"))
    drawn = terminal.getvalue()
    assert "prepare: encode" in drawn and "3/3" in drawn  # decode and encode stream together, per file


def test_loops_draws_a_bar_per_source_file(noise_dir, tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    result = extract_loops(noise_dir, tmp_path / "loops")
    assert len(result.processed) == 3 and "loops" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_batch_generate_draws_a_bar_and_keeps_its_lines_on_stdout(tiny_model, tokenizer, tmp_path, monkeypatch, capsys):
    jobs, _ = parse_batch(['{"prompt": "a", "seconds": 0.05}', '{"prompt": "b", "seconds": 0.05}'], seconds=1, seed=0, guidance=1.0)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    rows, errors = generate_batch(tiny_model, tokenizer, jobs, tmp_path / "out")
    assert len(rows) == 2 and not errors
    assert "generate" in terminal.getvalue() and "2/2" in terminal.getvalue()
    assert capsys.readouterr().out.count(".wav") == 2  # one line per clip written, on stdout
