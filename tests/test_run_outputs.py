"""Issue 11.6, 11.10, 11.12 on a real tiny run: --out never clobbers a run, the pinned revision
travels with the adapter, and files follow the umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import quick_args, run_baseline
from musicgen_lora import cli
from musicgen_lora.helpers import atomic_write_json
from musicgen_lora.modeling import generate
from musicgen_lora.modeling.model import load_musicgen

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_dir):
    """A finished run of the baseline script (child process, umask 022, a pinned revision)."""
    root = tmp_path_factory.mktemp("real_run")
    args = quick_args(root / "run", root / "cache", demo_dir, "--train.max-steps", "2", "--model.revision", REVISION)
    previous = os.umask(0o022)  # the child inherits it
    try:
        result = run_baseline(args)
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- 11.6: nothing of the user's is deleted or overwritten by surprise ------------------------------


def test_export_overwrite_into_the_run_directory_is_refused_and_the_run_is_intact(run, capsys):
    run_dir = run / "run"
    before = snapshot(run_dir)
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and (run_dir / "config.json").is_file()
    for out in (run_dir, run_dir / "adapter", run_dir / "exports" / "x", run):  # is, inside, contains
        code = cli.main(["export", "--adapter", str(run_dir / "adapter"), "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: --out {out} is, contains or lies inside the ")
        assert err.count("\n") == 1
    assert snapshot(run_dir) == before


def test_export_overwrite_replaces_only_a_previous_export(run, tmp_path, capsys):
    adapter, out = run / "run" / "adapter", tmp_path / "export"
    assert cli.main(["export", "--adapter", str(adapter), "--out", str(out)]) == 0
    assert cli.main(["export", "--adapter", str(adapter), "--out", str(out)]) == 2  # no --overwrite
    assert cli.main(["export", "--adapter", str(adapter), "--out", str(out), "--overwrite"]) == 0
    (out / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    assert cli.main(["export", "--adapter", str(adapter), "--out", str(out), "--overwrite"]) == 2
    assert "my_notes.txt" in capsys.readouterr().err and (out / "my_notes.txt").read_text() == "mine"
    assert (out / "adapter_model.safetensors").is_file()  # the previous export is untouched too

    someone_elses = tmp_path / "photos"
    someone_elses.mkdir()
    (someone_elses / "cat.jpg").write_bytes(b"\xff\xd8")
    assert cli.main(["export", "--adapter", str(adapter), "--out", str(someone_elses), "--overwrite"]) == 2
    assert "not written by musicgen-lora export" in capsys.readouterr().err
    assert (someone_elses / "cat.jpg").read_bytes() == b"\xff\xd8"


def an_existing_file(tmp_path: Path) -> Path:
    path = tmp_path / "existing"
    path.write_text("keep me")
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--adapter", "{adapter}", "--out", "{file}"],
        ["generate", "--model", "tiny", "--batch", "{prompts}", "--out", "{file}"],
        ["generate", "--model", "tiny", "--prompt", "a", "b", "--out", "{file}"],
        ["loops", "--in", "{tmp}", "--out", "{file}"],
        ["demo-data", "--out", "{file}"],
        ["report", "{run}", "--out", "{file}"],
        ["prepare", "--data", "{tmp}", "--model", "tiny", "--cache", "{file}"],
        ["sweep", "experiments/01_baseline.py", "--root", "{file}", "--dry-run"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_every_out_that_is_an_existing_file_is_refused(run, tmp_path, capsys, command):
    file = an_existing_file(tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n')
    values = {"adapter": str(run / "run" / "adapter"), "file": str(file), "prompts": str(prompts),
              "tmp": str(tmp_path), "run": str(run / "run")}
    assert cli.main([part.format(**values) for part in command]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{file} is an existing file" in last
    assert file.read_text() == "keep me"


def test_experiment_output_dir_that_is_a_file_exits_2(tmp_path):
    file = an_existing_file(tmp_path)
    result = run_baseline(["--smoke", "--output-dir", str(file)])
    assert result.returncode == 2 and result.stderr.strip().endswith("is an existing file; give a folder (new or existing)")
    assert file.read_text() == "keep me"


def test_demo_data_never_replaces_the_users_metadata(tmp_path, capsys):
    (tmp_path / "kick.wav").write_bytes(b"RIFF")
    (tmp_path / "metadata.csv").write_text("file_name,text\nkick.wav,my kick\n")
    assert cli.main(["demo-data", "--out", str(tmp_path)]) == 2
    assert "metadata.csv" in capsys.readouterr().err
    assert (tmp_path / "metadata.csv").read_text() == "file_name,text\nkick.wav,my kick\n"
    again = tmp_path / "demo"
    assert cli.main(["demo-data", "--out", str(again), "--loops-per-style", "1"]) == 0
    assert cli.main(["demo-data", "--out", str(again), "--loops-per-style", "1"]) == 0  # its own folder: rewritten


# ---- 11.10: the pinned revision is written with the adapter and used to load its base -----------


@pytest.fixture
def loads(monkeypatch):
    """Record (name, revision) of every base model generate/export load; the tiny model ignores revision."""
    calls = []

    def recording(name, *, revision=None, **kwargs):
        calls.append((name, revision))
        return load_musicgen(name, revision=revision, **kwargs)

    monkeypatch.setattr(generate, "load_musicgen", recording)
    return calls


def test_revision_is_recorded_in_the_adapter(run):
    config = json.loads((run / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["revision"] == REVISION


def test_generate_loads_the_recorded_revision(run, tmp_path, loads):
    out = tmp_path / "clip.wav"
    argv = ["generate", "--adapter", str(run / "run" / "adapter"), "--prompt", "x", "--seconds", "0.04", "--out", str(out)]
    assert cli.main(argv) == 0 and out.is_file()
    assert loads == [("tiny", REVISION)]
    assert cli.main([*argv, "--revision", "other"]) == 0 and loads[-1] == ("tiny", "other")


def test_merged_export_loads_the_recorded_revision_and_the_card_says_it(run, tmp_path, loads):
    out = tmp_path / "merged"
    assert cli.main(["export", "--adapter", str(run / "run" / "adapter"), "--out", str(out), "--merge"]) == 0
    assert loads == [("tiny", REVISION)]
    assert f"at revision `{REVISION}`" in (out / "README.md").read_text()


# ---- 11.12: files follow the umask ------------------------------------------------------------


def test_run_and_cache_files_follow_umask_022(run):
    run_dir, cache = run / "run", run / "cache"
    files = [run_dir / "config.json", run_dir / "manifest.json", run_dir / "adapter" / "adapter_config.json",
             run_dir / "adapter" / "adapter_model.safetensors", cache / "cache.json", cache / "manifest.json",
             *sorted((cache / "codes").glob("*.npz"))]
    assert len(files) > 8
    assert {path.relative_to(run).as_posix(): oct(mode(path)) for path in files} == {
        path.relative_to(run).as_posix(): oct(0o644) for path in files
    }


def test_atomic_writes_follow_a_stricter_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "group.json", {"a": 1})
    finally:
        os.umask(previous)
    assert mode(tmp_path / "group.json") == 0o640
    assert json.loads((tmp_path / "group.json").read_text()) == {"a": 1}


def test_exported_files_follow_the_umask(run, tmp_path):
    previous = os.umask(0o022)
    try:
        assert cli.main(["export", "--adapter", str(run / "run" / "adapter"), "--out", str(tmp_path / "export")]) == 0
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "export").iterdir()]
    assert "adapter_model.safetensors" in {p.name for p in files}
    assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(0o644) for p in files}
