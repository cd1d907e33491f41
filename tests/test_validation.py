"""Issue 11.7: every option out of range fails at once, exit 2, one line naming the option as typed."""

from __future__ import annotations

import json

import pytest

from conftest import BASELINE, REPO_ROOT, child_env, run_baseline
from musicgen_lora import cli
from musicgen_lora.modeling.generate import max_generation_seconds
from musicgen_lora.training.config import SMOKE_OVERRIDES, RunConfig, apply_overrides
from musicgen_lora.training.validation import ConfigValueError, validate_run_config


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train.max-steps", "0"], "--train.max-steps must be >= 1 (got 0)"),
        (["--lora.r", "0"], "--lora.r must be >= 1 (got 0)"),
    ],
)
def test_baseline_script_rejects_the_option_before_creating_a_run(tmp_path, argv, message):
    """The user's command, in a child process, from a fresh folder: no traceback, no runs/."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(BASELINE), "--smoke", *argv], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"error: {message}\n"  # one line, and nothing else (no traceback)
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, no run directory


def test_output_dir_is_not_created_on_a_bad_option(tmp_path):
    result = run_baseline(["--smoke", "--output-dir", str(tmp_path / "run"), "--data.condition-dropout", "1.5"])
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip() == "error: --data.condition-dropout must be in [0, 1] (got 1.5)"


def smoke(**overrides) -> RunConfig:
    return apply_overrides(apply_overrides(RunConfig(), SMOKE_OVERRIDES), overrides)


def test_the_defaults_and_the_smoke_preset_are_valid():
    validate_run_config(RunConfig())
    validate_run_config(smoke())


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("train.max_steps", -1, "--train.max-steps must be >= 1"),
        ("train.batch_size", 0, "--train.batch-size must be >= 1"),
        ("train.grad_accum_steps", 0, "--train.grad-accum-steps must be >= 1"),
        ("train.log_every", 0, "--train.log-every must be >= 1"),
        ("train.eval_every", -1, "--train.eval-every must be >= 0"),
        ("train.checkpoint_every", -5, "--train.checkpoint-every must be >= 0"),
        ("train.keep_checkpoints", 0, "--train.keep-checkpoints must be >= 1"),
        ("train.eval_max_windows", 0, "--train.eval-max-windows must be >= 1"),
        ("train.max_bad_steps", 0, "--train.max-bad-steps must be >= 1"),
        ("data.window_seconds", 0.0, "--data.window-seconds must be a finite number > 0"),
        ("data.window_seconds", float("nan"), "--data.window-seconds must be a finite number > 0"),
        ("data.condition_dropout", -0.1, "--data.condition-dropout must be in [0, 1]"),
        ("data.val_fraction", 1.0, "--data.val-fraction must be in [0, 1)"),
        ("lora.dropout", 1.0, "--lora.dropout must be in [0, 1)"),
        ("lora.alpha", 0, "--lora.alpha must be a finite number > 0"),
        ("lora.targets", (), "--lora.targets needs at least one value"),
        ("optim.lr", 0.0, "--optim.lr must be a finite number > 0"),
        ("optim.betas", (0.9, 1.0), "--optim.betas must be in [0, 1)"),
        ("optim.min_lr_ratio", 2.0, "--optim.min-lr-ratio must be in [0, 1]"),
        ("sample.seconds", 0.0, "--sample.seconds must be a finite number > 0"),
        ("sample.temperature", 0.0, "--sample.temperature must be a finite number > 0"),
        ("sample.top_k", -1, "--sample.top-k must be >= 0"),
        ("metrics.seeds", (), "--metrics.seeds needs at least one value"),
        ("metrics.seconds", -1.0, "--metrics.seconds must be a finite number > 0"),
        ("metrics.reference_clips", 0, "--metrics.reference-clips must be >= 1"),
    ],
)
def test_each_option_names_itself_and_its_range(field, value, expected):
    with pytest.raises(ConfigValueError) as error:
        validate_run_config(smoke(**{field: value}))
    message = str(error.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "run"
    file.write_text("notes")
    with pytest.raises(ConfigValueError, match=r"--output-dir .* is an existing file"):
        validate_run_config(smoke(output_dir=file))


def test_generation_length_limit_follows_max_position_embeddings():
    # musicgen-small: 2048 positions at 50 Hz, start token + 3 delay steps -> 40.88 s of audio.
    assert max_generation_seconds(2048, 50, 3) == pytest.approx(40.88)


def test_generate_refuses_seconds_beyond_the_model(tmp_path, capsys):
    assert cli.main(["generate", "--model", "tiny", "--prompt", "x", "--seconds", "90", "--out", str(tmp_path / "a.wav")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after transformers' own config warnings
    assert last.startswith("error: --seconds must be in (0, 81.84] for tiny") and "max_position_embeddings" in last
    assert not (tmp_path / "a.wav").exists()
    assert cli.main(["generate", "--model", "tiny", "--prompt", "x", "--seconds", "0", "--out", str(tmp_path / "a.wav")]) == 2
    assert "--seconds must be > 0" in capsys.readouterr().err


def test_batch_line_beyond_the_model_is_reported_and_skipped(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "long", "seconds": 500}) + "\n" + json.dumps({"prompt": "short", "seconds": 0.04}) + "\n")
    assert cli.main(["generate", "--model", "tiny", "--batch", str(prompts), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "prompts.jsonl:1: 'seconds' must be at most 81.84 for tiny" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.jsonl", "line0002.wav"]


def test_sweep_without_seeds_is_refused(capsys):
    assert cli.main(["sweep", str(REPO_ROOT / "experiments" / "01_baseline.py"), "--seeds", "--dry-run"]) == 2
    assert "--seeds needs at least one seed" in capsys.readouterr().err
