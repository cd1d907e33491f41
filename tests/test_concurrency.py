"""Issue 6.7: two `prepare` processes on one cache neither corrupt it nor duplicate work (a file
lock serialises them; the second finds the work done), and cache entries are written atomically:
a prepare killed mid-write leaves only whole entries, and the next one finishes the job."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, child_env
from musicgen_lora.data.tokens import load_codes, load_manifest


def _prepare_command(data, cache) -> list[str]:
    return [sys.executable, "-m", "musicgen_lora.cli", "prepare", "--data", str(data), "--model", "tiny",
            "--cache", str(cache), "--device", "cpu"]


def _assert_cache_whole(cache, sources: int, distinct: int) -> None:
    entries = load_manifest(cache)
    assert len(entries) == sources and len({e.key for e in entries}) == distinct
    assert sorted(p.name for p in (cache / "codes").iterdir()) == sorted(f"{k}.npz" for k in {e.key for e in entries})
    for entry in entries:
        assert load_codes(cache, entry).dtype == np.int16
    assert not [p for p in cache.rglob("*.tmp")]


@pytest.fixture
def data(tmp_path, demo_dir):
    folder = tmp_path / "data"
    shutil.copytree(demo_dir, folder)
    shutil.copy(folder / "techno_128bpm_v0.wav", folder / "techno copy.wav")  # shares one encoding
    return folder


@pytest.mark.slow
def test_two_prepares_at_once_share_the_work(tmp_path, data):
    cache = tmp_path / "cache"
    processes = [subprocess.Popen(_prepare_command(data, cache), env=child_env(), cwd=REPO_ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [process.communicate(timeout=180) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    counts = [re.search(r"7 usable files \(6 distinct: (\d+) encoded, (\d+) reused\)", out) for out, _ in outputs]
    assert all(counts), [out for out, _ in outputs]
    assert sorted(int(m.group(1)) for m in counts) == [0, 6]  # one encoded everything, the other nothing
    _assert_cache_whole(cache, sources=7, distinct=6)


# Encodes `data` into `cache`, hanging between writing the third code file and renaming it into place.
HANGING = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from musicgen_lora import helpers
    from musicgen_lora.training.prepare import main

    renames, replace = [], os.replace
    def hanging_replace(src, dst):
        if str(dst).endswith(".npz"):
            renames.append(dst)
            if len(renames) == 3:
                Path(sys.argv[3]).touch()
                time.sleep(600)
        replace(src, dst)
    helpers.os.replace = hanging_replace  # the atomic writes live in helpers
    main(["--data", sys.argv[1], "--model", "tiny", "--cache", sys.argv[2], "--device", "cpu"])
""")


@pytest.mark.slow
def test_killed_prepare_leaves_only_whole_entries(tmp_path, data, tiny_codec):
    cache, ready = tmp_path / "cache", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", HANGING, str(data), str(cache), str(ready)],
                             env=child_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert child.poll() is None, child.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()

    codes = sorted((cache / "codes").iterdir())
    assert len([p for p in codes if p.suffix == ".npz"]) == 2 and len([p for p in codes if p.suffix == ".tmp"]) == 1
    for path in codes:
        if path.suffix == ".npz":
            np.load(path)["codes"]  # whole, readable
    assert not (cache / "manifest.json").exists()

    # the lock died with the process: no waiting (tile_seconds: the CLI's default, the same keys)
    result = tiny_codec.prepare(data, cache, tile_seconds=10.0)
    assert result.encoded == 4 and len(result.entries) == 7
    _assert_cache_whole(cache, sources=7, distinct=6)
    assert json.loads((cache / "skipped.json").read_text()) == []
