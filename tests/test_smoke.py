"""End to end: the main job's --smoke run exactly as the README shows it (W&B offline, validation,
samples, generation metrics), then `musicgen-lora generate` from its adapter."""

import json
import os
import re
import subprocess
import sys

import soundfile

from musicgen_lora.training.builders import mixed_precision, precision_line


def test_baseline_smoke_then_generate(repo_root, tmp_path):
    run_dir = tmp_path / "run"
    env_cmd = [sys.executable, str(repo_root / "experiments" / "01_baseline.py"), "--smoke", "--output-dir", str(run_dir)]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # the user's environment: no W&B setting
    done = subprocess.run(env_cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    # Issue 16.5: no known-false warning (2048 is MusicGen's special token), no deprecation noise.
    assert "must be `None` or an integer within the vocabulary" not in output
    assert "FutureWarning" not in output and "WARNING" not in output, output[-3000:]
    # The run ends with a summary: losses against the base model, adapter, how to generate, W&B.
    summary = done.stdout[done.stdout.index("done: 30 steps"):]
    assert "(base model " in summary and "generate: uv run musicgen-lora generate --adapter" in summary
    assert "offline; upload with: uv run wandb sync" in summary
    # Issue 15: the precision `auto` picks for this machine is used and said (bf16 autocast on CPUs
    # with native bf16, fp32 on others), with the LoRA weights in fp32 either way.
    precision = json.loads((run_dir / "manifest.json").read_text())["precision"]
    assert precision["mixed_precision"] == mixed_precision("auto") and precision["lora_weights"] == ["float32"]
    assert f"  precision: {precision_line(precision)}" in summary
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # the smoke run tracks, offline
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
    # Issue 16.2: the base model's validation loss on the same windows, at step 0.
    assert records[0]["step"] == 0 and records[0]["val/loss"] == records[0]["val/loss_base"]
    final_val = [r["val/loss"] for r in records if "val/loss" in r and r["step"] == records[-1]["step"]]
    assert final_val[0] < records[0]["val/loss_base"]
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
