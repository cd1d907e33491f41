"""Issue 6.5: a non-finite loss or gradient skips the step (counted, logged); too many in a row stop
the run with NonFiniteTrainingError, keeping the last good checkpoint; a non-finite adapter is
never saved. NaNs are injected into chosen training steps of an in-process run."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from musicgen_lora.training import loop as train_module
from musicgen_lora.training.checkpoint import list_checkpoints
from musicgen_lora.training.config import SMOKE_OVERRIDES, RunConfig, apply_overrides
from musicgen_lora.training.loop import NonFiniteTrainingError, train


@pytest.fixture
def run(tmp_path, demo_dir, demo_cache, monkeypatch):
    """run(bad_steps, poison_at=None, **overrides): train with NaN losses at the training steps in
    `bad_steps` (1-based) and, from step `poison_at` on, NaN adapter weights."""
    shutil.copytree(demo_cache, tmp_path / "cache")
    forward_loss = train_module.forward_loss

    def start(bad_steps=(), poison_at=None, **overrides):
        steps = []

        def injected(model, batch, cache=None):
            if model.training:
                steps.append(len(steps) + 1)
                if steps[-1] == poison_at:
                    with torch.no_grad():
                        for parameter in model.parameters():
                            if parameter.requires_grad:
                                parameter.fill_(math.nan)
            loss, stats = forward_loss(model, batch, cache)
            if model.training and steps[-1] in bad_steps:
                return loss * math.nan, {**stats, "ce_sum": stats["ce_sum"] * math.nan}
            return loss, stats

        monkeypatch.setattr(train_module, "forward_loss", injected)
        cfg = apply_overrides(apply_overrides(RunConfig(), SMOKE_OVERRIDES), {
            "output_dir": tmp_path / "run", "data.path": demo_dir, "data.cache_dir": tmp_path / "cache",
            "data.window_seconds": 0.5, "data.val_fraction": 0.0, "train.batch_size": 2, "train.log_every": 1,
            "train.eval_every": 0, "train.checkpoint_every": 1, "train.keep_checkpoints": 100,
            "sample.base_model": False, "sample.seconds": 0.04, "metrics.enabled": False, **overrides,
        })
        return train(cfg)

    return start


def _records(run_dir):
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "train/skipped_steps" in r}


def _adapter(run_dir, step):
    return load_file(run_dir / "checkpoints" / f"step_{step:07d}" / "adapter_model.safetensors")


def _equal(a, b):
    return all(torch.equal(a[name], b[name]) for name in a)


def test_a_bad_step_is_skipped_counted_and_logged(run, tmp_path):
    result = run(bad_steps={3}, **{"train.max_steps": 5, "train.max_bad_steps": 2})
    assert result.skipped_steps == 1 and result.steps == 5
    records = _records(tmp_path / "run")
    assert [records[s]["train/skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    assert "train/loss" not in records[3]  # nothing good to average in that window
    assert all(math.isfinite(records[s]["train/loss"]) for s in (1, 2, 4, 5))
    run_dir = tmp_path / "run"
    assert _equal(_adapter(run_dir, 2), _adapter(run_dir, 3))  # the bad step changed nothing
    assert not _equal(_adapter(run_dir, 3), _adapter(run_dir, 4))
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in adapter.values())


def test_too_many_bad_steps_stop_the_run_keeping_the_last_good_checkpoint(run, tmp_path):
    with pytest.raises(NonFiniteTrainingError, match=r"3 consecutive steps .* last good checkpoint is kept.*--optim.lr"):
        run(bad_steps=set(range(3, 100)), **{"train.max_steps": 20, "train.max_bad_steps": 3, "train.checkpoint_every": 2})
    run_dir = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_0000002", "step_0000004"]
    assert _equal(_adapter(run_dir, 2), _adapter(run_dir, 4))  # skipped steps leave the adapter as it was
    assert _records(run_dir)[5]["train/skipped_steps"] == 3
    assert not (run_dir / "adapter").exists()


def test_a_non_finite_adapter_is_never_saved(run, tmp_path):
    with pytest.raises(NonFiniteTrainingError):
        run(poison_at=3, **{"train.max_steps": 10, "train.max_bad_steps": 2})
    run_dir = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_0000001", "step_0000002"]
    assert all(torch.isfinite(t).all() for t in _adapter(run_dir, 2).values())
    assert not (run_dir / "adapter").exists()


def test_a_diverged_model_is_never_sampled_and_the_guard_stops_the_run(run, tmp_path, caplog):
    """Issue 11.8: with samples and generation metrics on (the defaults), an evaluation that finds
    non-finite adapter weights skips sampling and says why; the numeric guard then stops the run
    with its message, keeping the last good checkpoint."""
    defaults = {"sample.base_model": True, "metrics.enabled": True, "data.val_fraction": 0.25, "train.eval_every": 4}
    with caplog.at_level("WARNING", logger="musicgen_lora"), pytest.raises(NonFiniteTrainingError, match="consecutive"):
        run(poison_at=3, **{"train.max_steps": 12, "train.max_bad_steps": 3, "train.checkpoint_every": 2, **defaults})
    assert any("samples and generation metrics skipped at step 4" in r.getMessage() for r in caplog.records)
    run_dir = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_0000002"]
    assert all(torch.isfinite(t).all() for t in _adapter(run_dir, 2).values())
    assert not list((run_dir / "samples").glob("step_0000004*"))
