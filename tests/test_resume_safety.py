"""Issue 11.2-11.4, 11.9: resume never gets stuck and never writes a false record.

In-process runs of the tiny model (validation, samples and generation metrics on, as by default):
a run interrupted after its second checkpoint, whose newest checkpoint is then damaged, resumes from
the one before it and ends bitwise equal to the uninterrupted run, with the same metrics.jsonl;
with every checkpoint damaged it starts over and says so; a resumed run refuses configuration
changes that alter what it trains and records the harmless ones; a finished run says so.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from musicgen_lora.modeling.generate import load_with_adapter
from musicgen_lora.training import loop as train_module
from musicgen_lora.training.checkpoint import list_checkpoints
from musicgen_lora.training.config import SMOKE_OVERRIDES, RunConfig, apply_overrides
from musicgen_lora.training.loop import RunInterrupted, train
from musicgen_lora.training.resume import ResumeConfigError

STEPS, EVERY = 6, 2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_dir, demo_cache):
    folder = tmp_path_factory.mktemp("resume")
    shutil.copytree(demo_cache, folder / "cache")
    return folder


@pytest.fixture(scope="module")
def make_config(workspace, demo_dir):
    def make(name: str, **overrides):
        return apply_overrides(apply_overrides(RunConfig(), SMOKE_OVERRIDES), {
            "output_dir": workspace / name, "data.path": demo_dir, "data.cache_dir": workspace / "cache",
            "data.window_seconds": 0.5, "data.val_fraction": 0.25, "train.batch_size": 2,
            "train.max_steps": STEPS, "train.checkpoint_every": EVERY, "train.eval_every": EVERY,
            "train.log_every": 1, "train.keep_checkpoints": 3, "sample.seconds": 0.04, "metrics.seconds": 0.04,
            **overrides,
        })

    return make


@pytest.fixture(scope="module")
def uninterrupted(make_config):
    """The reference: the same run, never interrupted (shared by the tests of this file)."""
    return train(make_config("uninterrupted"))


@pytest.fixture
def config(make_config, tmp_path):
    """Configs of runs private to one test (run directories under its tmp_path)."""
    return lambda name, **overrides: make_config(name, output_dir=tmp_path / name, **overrides)


def interrupt_in_step(monkeypatch, step: int) -> None:
    """Ctrl-C inside the `step`-th training forward pass."""
    forward_loss, calls = train_module.forward_loss, []

    def interrupting(model, batch, cache=None):
        calls.append(model.training)
        if model.training and sum(calls) == step:
            raise KeyboardInterrupt
        return forward_loss(model, batch, cache)

    monkeypatch.setattr(train_module, "forward_loss", interrupting)


def records(run_dir) -> list[dict]:
    """metrics.jsonl without what depends on the clock (time, perf/*)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time" and not k.startswith("perf/")} for line in lines]


def adapter(folder):
    return load_file(folder / "adapter_model.safetensors")


def assert_same_adapter(a, b):
    a, b = adapter(a), adapter(b)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[name], b[name]) for name in a)


def truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


DAMAGE = {
    "truncated adapter": lambda folder: truncate(folder / "adapter_model.safetensors"),
    "truncated optimizer state": lambda folder: truncate(folder / "training_state.pt"),
    "empty state.json": lambda folder: (folder / "state.json").write_text(""),
}


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(config, uninterrupted, monkeypatch, caplog):
    assert uninterrupted.steps == STEPS
    with monkeypatch.context() as patch:
        interrupt_in_step(patch, 5)
        with pytest.raises(RunInterrupted) as stop:
            train(config("interrupted"))
    assert stop.value.checkpoint.name == "step_0000004"
    assert json.loads((stop.value.run_dir / "manifest.json").read_text())["outcome"] == "interrupted"

    for damage, hurt in DAMAGE.items():  # each on its own copy of the interrupted run
        run_b = stop.value.run_dir.with_name(damage.replace(" ", "_"))
        shutil.copytree(stop.value.run_dir, run_b)
        hurt(run_b / "checkpoints" / "step_0000004")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="musicgen_lora"):
            train(config(run_b.name))
        messages = [r.getMessage() for r in caplog.records]
        unreadable = [m for m in messages if "is unreadable" in m]
        assert len(unreadable) == 1 and "step_0000004" in unreadable[0], (damage, messages)
        assert any(m.startswith(f"resumed from {run_b / 'checkpoints' / 'step_0000002'}") for m in messages)
        assert_same_adapter(uninterrupted.run_dir / "adapter", run_b / "adapter")
        assert records(run_b) == records(uninterrupted.run_dir), damage


def test_with_no_readable_checkpoint_the_run_starts_over_and_says_so(config, uninterrupted, monkeypatch, caplog):
    with monkeypatch.context() as patch:
        interrupt_in_step(patch, 5)
        with pytest.raises(RunInterrupted):
            train(config("B"))
    run_b = config("B").output_dir
    for folder in list_checkpoints(run_b / "checkpoints"):
        truncate(folder / "adapter_model.safetensors")
    with caplog.at_level(logging.INFO, logger="musicgen_lora"):
        train(config("B"))
    assert any("could be read: the run starts over from step 0" in r.getMessage() for r in caplog.records)
    assert_same_adapter(uninterrupted.run_dir / "adapter", run_b / "adapter")
    assert records(run_b) == records(uninterrupted.run_dir)  # the file was started over, not appended to


def test_a_torn_last_metrics_line_never_stops_a_run(config, uninterrupted, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_in_step(patch, 3)
        with pytest.raises(RunInterrupted):
            train(config("B"))
    run_b = config("B").output_dir
    with open(run_b / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "train/lo')  # a write cut short by a kill
    train(config("B"))
    assert records(run_b) == records(uninterrupted.run_dir)


def test_resume_refuses_changes_to_what_is_trained_and_records_harmless_ones(config, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_in_step(patch, 3)
        with pytest.raises(RunInterrupted):
            train(config("B"))
    run_b = config("B").output_dir
    before = sorted(p.relative_to(run_b).as_posix() for p in run_b.rglob("*"))
    with pytest.raises(ResumeConfigError) as refused:
        train(config("B", **{"lora.r": 8, "optim.lr": 1e-3, "data.window_seconds": 0.25}))
    message = str(refused.value)
    for flag in ("--lora.r 16 -> 8", "--optim.lr 0.002 -> 0.001", "--data.window-seconds 0.5 -> 0.25"):
        assert flag in message
    assert "another --output-dir" in message
    assert sorted(p.relative_to(run_b).as_posix() for p in run_b.rglob("*")) == before  # nothing touched

    result = train(config("B", **{"train.max_steps": STEPS + 2, "train.log_every": 2, "tracking.wandb": "disabled"}))
    assert result.steps == STEPS + 2
    manifest = json.loads((run_b / "manifest.json").read_text())
    assert manifest["resume_changes"] == {
        "train.log_every": {"previous": 1, "now": 2}, "train.max_steps": {"previous": STEPS, "now": STEPS + 2},
        "tracking.wandb": {"previous": "offline", "now": "disabled"},
    }
    assert manifest["outcome"] == "completed"


def test_a_finished_run_says_so_and_logs_nothing_again(make_config, uninterrupted):
    before = (uninterrupted.run_dir / "metrics.jsonl").read_bytes()
    again = train(make_config("uninterrupted"))
    assert again.already_finished and again.steps == STEPS
    assert (uninterrupted.run_dir / "metrics.jsonl").read_bytes() == before


def test_checkpoints_are_adapters_and_the_best_one_is_kept(uninterrupted):
    run_dir = uninterrupted.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    best = manifest["adapters"]["best"]
    val = {r["step"]: r["val/loss"] for r in records(run_dir) if "val/loss" in r and r["step"] > 0}  # 0: base
    assert best["path"] == "adapter_best" and best["val_loss"] == min(val.values())
    assert val[best["step"]] == best["val_loss"]
    assert (run_dir / "adapter_best" / "adapter_config.json").is_file()
    if best["step"] == STEPS:
        assert_same_adapter(run_dir / "adapter", run_dir / "adapter_best")

    # A checkpoint folder loads as an adapter (what `generate --adapter .../step_N` does).
    model, _ = load_with_adapter(run_dir / "checkpoints" / "step_0000006", device="cpu")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    final = adapter(run_dir / "adapter")
    assert len(loaded) == len(final) > 0
    for name, tensor in final.items():
        key = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[key].detach(), tensor)
