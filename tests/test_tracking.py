"""Trackers: W&B offline run files, the auto mode, the JSONL clock on resume, redaction."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import wandb

from musicgen_lora.tracking.manifest import Launch, build_manifest
from musicgen_lora.tracking.redact import RedactingFilter, redact, secret_values
from musicgen_lora.tracking.trackers import JsonlTracker, WandbTracker, read_metrics, wandb_mode
from musicgen_lora.training import builders
from musicgen_lora.training.config import DataConfig, RunConfig, TrackingConfig
from wandb_file import history_rows, read_records

SECRET = "s3cr3t-value-1234567890"


def _wandb_file(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_offline_wandb_run_records_metrics_audio_adapter_and_keeps_secrets_out(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)
    run_dir = tmp_path / "02_lora_rank-r4-s3-20250101-000000"
    run_dir.mkdir()
    # A secret that slipped into a flag value and the command line must reach neither W&B nor the manifest.
    cfg = RunConfig(
        experiment="02_lora_rank", variant="r4", seed=3, smoke=True,
        data=DataConfig(caption_template=f"{SECRET} {{folder}}"), tracking=TrackingConfig(wandb="offline", tags=("mine",)),
    )
    manifest = build_manifest(cfg, Launch(None, ("--data.caption-template", SECRET)), world_size=1)
    tracker = builders.wandb_tracker(cfg, run_dir, manifest)
    assert isinstance(tracker, WandbTracker)
    tracker.log({"train/loss": 7.5, "perf/tokens_per_s": 1000.0}, step=2)
    tracker.log({"val/loss": 7.4, "val/ce_cb0": 7.3}, step=2)
    tracker.log_audio("samples/adapter", np.zeros((2, 1, 1600), np.float32), 32000, ["kick loop", "snare loop"], step=2)
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "adapter_config.json").write_text('{"r": 4}')
    tracker.log_adapter(run_dir / "adapter", f"adapter-{run_dir.name}")
    tracker.finish("completed")
    wandb.teardown()  # the W&B service writes the run file asynchronously; this waits for it

    [run_file] = _wandb_file(run_dir)
    rows = history_rows(run_file)
    keys = set().union(*rows)
    assert {"train/loss", "perf/tokens_per_s", "val/loss", "val/ce_cb0", "global_step"} <= keys
    assert any(row.get("global_step") == "2" and "val/loss" in row for row in rows), rows
    audio = next(row for row in rows if "samples/adapter/captions" in row)
    assert json.loads(audio["samples/adapter/captions"]) == ["kick loop", "snare loop"]
    records = list(read_records(run_file))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == "02_lora_rank" and run.job_type == "smoke" and run.display_name == run_dir.name
    assert {"variant:r4", "seed:3", "mine"} <= set(run.tags) and any(t.startswith("lock:") for t in run.tags)
    config = {item.key: item.value_json for item in run.config.update}
    assert json.loads(config["variant"]) == "r4" and "manifest" in config
    artifact = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert artifact.type == "model"
    assert SECRET.encode() not in run_file.read_bytes()
    assert "***" in config["data"]

    # A resumed run continues the same W&B run id, read from the run directory.
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert json.loads((run_dir / "wandb_run.json").read_text())["id"] == run_id
    again = WandbTracker(run_dir, mode="offline", project="p", entity=None, group="g", job_type="train",
                         name=run_dir.name, tags=[], config={})
    again.log({"train/loss": 7.0}, step=3)
    again.finish("completed")
    wandb.teardown()
    assert [p.name for p in _wandb_file(run_dir)] == [f"run-{run_id}.wandb"] * 2


def test_wandb_auto_mode(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode("auto") == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abcdef0123456789\n")
    netrc.chmod(0o600)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # what the Azure job sets when it has no key
    assert wandb_mode("auto") == "offline"
    monkeypatch.delenv("WANDB_MODE")
    netrc.write_text("")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    assert wandb_mode("disabled") == "disabled" and wandb_mode("offline") == "offline"
    assert builders.wandb_tracker(RunConfig(tracking=TrackingConfig(wandb="disabled")), tmp_path, {}) is None


def test_jsonl_clock_continues_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 10, "time": 500.0, "train/loss": 1.0}) + "\n")
    tracker = JsonlTracker(path)
    tracker.log({"train/loss": float("nan")}, step=11)
    tracker.finish("completed")
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [10, 11]
    assert 500.0 <= records[1]["time"] < 560.0
    assert records[1]["train/loss"] == "nan"


def test_redaction(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "azure-secret-value")
    monkeypatch.setenv("MY_PASSWORD", "short")  # < 6 characters: not treated as a secret
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    values = secret_values()
    assert "hf_abcdefghijkl" in values and "azure-secret-value" in values
    assert "short" not in values and "false" not in values
    data = {"cmd": "x --token hf_abcdefghijkl", "nested": [("azure-secret-value", 3)], "n": 1.5, "short": "short"}
    assert redact(data) == {"cmd": "x --token ***", "nested": [("***", 3)], "n": 1.5, "short": "short"}

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test_redaction")
    logger.addHandler(handler)
    try:
        logger.warning("key is %s", "hf_abcdefghijkl")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().strip() == "key is ***"


@pytest.mark.parametrize("clip_shape", [(1, 320), (2, 320)])
def test_audio_layout_for_wandb(clip_shape):
    from musicgen_lora.tracking.trackers import _wandb_audio_array

    out = _wandb_audio_array(np.zeros(clip_shape, np.float32))
    assert out.shape == ((320,) if clip_shape[0] == 1 else (320, 2))


def test_wandb_run_names_are_unique_per_run_directory(monkeypatch, tmp_path):
    """Issue 16.7: two runs with the same experiment, variant and seed get different W&B names; a
    resumed run (same directory) keeps its name."""
    from musicgen_lora.training.builders import wandb_run_name
    from musicgen_lora.training.config import RunConfig

    monkeypatch.delenv("AZUREML_RUN_ID", raising=False)
    cfg = RunConfig()
    names = {wandb_run_name(cfg, tmp_path / folder) for folder in ("a", "b", "01_baseline-default-s0-20261127-1200")}
    assert len(names) == 3 and "01_baseline-default-s0-a" in names
    assert wandb_run_name(cfg, tmp_path / "a") == wandb_run_name(cfg, tmp_path / "a")
    monkeypatch.setenv("AZUREML_RUN_ID", "job_42")
    assert wandb_run_name(cfg, tmp_path / "outputs") == "01_baseline-default-s0-job_42"


def test_wandb_disabled_in_the_environment_wins_over_any_flag(monkeypatch):
    from musicgen_lora.tracking.trackers import wandb_mode

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("offline") == wandb_mode("online") == wandb_mode("auto") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("online") == "online" and wandb_mode("auto") == "offline"
