"""End to end: the main job's --smoke run, then `musicgen-lora generate` from its adapter."""

import json
import re
import subprocess
import sys

import soundfile


def test_baseline_smoke_then_generate(repo_root, tmp_path):
    run_dir = tmp_path / "run"
    env_cmd = [sys.executable, str(repo_root / "experiments" / "01_baseline.py"), "--smoke", "--output-dir", str(run_dir)]
    done = subprocess.run(env_cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    samples = sorted(p.name for p in (run_dir / "samples").glob("*.wav"))
    assert "base_0.wav" in samples and "final_0.wav" in samples
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["name"] == "tiny" and config["smoke"] is True
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert records[-1]["step"] == config["train"]["max_steps"]
    assert train_losses[-1] < train_losses[0]
    assert any("val/loss" in r for r in records)
    # Issue 12.4 / 12.8: the group split is written down, and each evaluation says what it runs.
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["files"]) == sum(split["files_per_side"].values()) >= 2
    assert split["groups"]["val"] >= 1 and split["groups"]["train"] >= 1
    assert {row["side"] for row in split["files"]} == {"train", "val"}
    assert json.loads((run_dir / "manifest.json").read_text())["split"]["groups"] == split["groups"]
    steps = config["train"]["max_steps"]
    assert re.search(rf"evaluating at step {steps}: validation loss \(\d+ windows\), \d+ samples", done.stderr)

    out = tmp_path / "gen.wav"
    gen = subprocess.run(
        [sys.executable, "-m", "musicgen_lora.cli", "generate", "--adapter", str(run_dir / "adapter"),
         "--prompt", "techno drum loop, 128 bpm", "--seconds", "1.5", "--seed", "3", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    audio, rate = soundfile.read(out)
    assert rate == 32000 and len(audio) == 48000
