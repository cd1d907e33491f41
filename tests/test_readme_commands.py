"""Issue 16.6: the README's commands, run as a new user would in a fresh clone, leave `git status`
clean: everything they write lands under ignored paths (runs/, outputs/, .cache/, .azureml-dryrun/),
so `azure submit` never refuses the tree afterwards.

Substitutions: --smoke for real data, 1 s of generated audio instead of 8, the demo loops (in a
temporary folder) for ~/loops, this interpreter for `uv run`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, child_env

# (the command as the README writes it, the arguments run here); {run}, {tmp} are filled in.
COMMANDS = [
    ("uv run experiments/01_baseline.py --smoke", ["experiments/01_baseline.py", "--smoke", "--output-dir", "{run}"]),
    ("--seconds 8 --guidance 3 --seed 0 --out outputs/loop.wav",
     ["-m", "musicgen_lora.cli", "generate", "--adapter", "{run}/adapter", "--prompt", "techno drum loop, 128 bpm",
      "hip hop drum loop, 90 bpm", "--seconds", "1", "--guidance", "3", "--seed", "0", "--out", "outputs/loop.wav"]),
    ("--batch prompts.jsonl --out outputs/batch/",
     ["-m", "musicgen_lora.cli", "generate", "--adapter", "{run}/adapter", "--batch", "{tmp}/prompts.jsonl",
      "--out", "outputs/batch/"]),
    ("export --adapter runs/<run>/adapter --out outputs/exported/",
     ["-m", "musicgen_lora.cli", "export", "--adapter", "{run}/adapter", "--out", "outputs/exported/"]),
    ("uv run musicgen-lora demo-data --out ~/demo-loops", ["-m", "musicgen_lora.cli", "demo-data", "--out", "{tmp}/loops"]),
    ("uv run musicgen-lora doctor", ["-m", "musicgen_lora.cli", "doctor"]),
    ("uv run musicgen-lora azure submit experiments/02_lora_rank.py",
     ["-m", "musicgen_lora.cli", "azure", "submit", "experiments/02_lora_rank.py", "--variant", "r8", "--seed", "0",
      "--compute", "gpu-a100", "--data", "{tmp}/loops", "--dry-run"]),
]


@pytest.mark.slow
def test_readme_commands_leave_a_fresh_clone_clean(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    for shown, _ in COMMANDS:
        assert shown in readme, f"the README no longer shows {shown!r}: update this test with it"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True, timeout=120)
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "techno drum loop", "seconds": 0.5}) + "\n")
    run_dir = "runs/01_baseline-readme"
    for shown, args in COMMANDS:
        args = [a.replace("{run}", run_dir).replace("{tmp}", str(tmp_path)) for a in args]
        done = subprocess.run([sys.executable, *args], cwd=clone, env=child_env(), capture_output=True, text=True,
                              timeout=300)
        # doctor compares this venv with the clone's lock: the same file, so it passes too.
        assert done.returncode == 0, f"{shown}: {done.stderr[-3000:]}"
    assert (clone / run_dir / "adapter" / "adapter_config.json").is_file()
    assert (clone / "outputs" / "loop_1.wav").is_file() and (clone / "outputs" / "exported").is_dir()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status
