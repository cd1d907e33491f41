"""`--train.batch-size auto` (issue 15.4): parsing, the choice against memory and data, the GPU
trial's halving, and a smoke run that resolves, records and trains on a number, then resumes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import quick_args, run_baseline
from musicgen_lora.data.windows import window_capacity
from musicgen_lora.modeling import model as model_lib
from musicgen_lora.training import auto_batch, builders, data_setup
from musicgen_lora.training import memory_estimate as me
from musicgen_lora.training.architecture import architecture_of, load_architecture
from musicgen_lora.training.config import SMOKE_OVERRIDES, RunConfig, apply_overrides
from musicgen_lora.training.experiment import resolve_config
from musicgen_lora.training.validation import ConfigValueError, validate_run_config


def test_batch_size_parses_as_a_number_or_auto():
    parse = lambda *argv: resolve_config(RunConfig(), {"default": {}}, list(argv), "x").train.batch_size  # noqa: E731
    assert parse("--train.batch-size", "4") == 4 and parse("--train.batch-size", "auto") == "auto" and parse() == 8
    validate_run_config(apply_overrides(RunConfig(), {"train.batch_size": "auto"}))
    with pytest.raises(ConfigValueError, match=r"--train.batch-size must be >= 1 \(got 0\)"):
        validate_run_config(apply_overrides(RunConfig(), {"train.batch_size": 0}))
    with pytest.raises(SystemExit):
        parse("--train.batch-size", "large")


def test_largest_fitting_finds_the_boundary():
    for boundary in (0, 1, 7, 8, 100):
        calls = []
        found = auto_batch.largest_fitting(lambda b: calls.append(b) or b <= boundary, 100)  # noqa: B023
        assert found == boundary and len(calls) <= 7  # a binary search, not a scan


def test_a_resumed_auto_run_keeps_its_recorded_number(tmp_path):
    cfg = apply_overrides(RunConfig(), {"train.batch_size": "auto"})
    assert auto_batch.recorded_batch_size(cfg, tmp_path).train.batch_size == "auto"  # nothing recorded yet
    (tmp_path / "config.json").write_text(json.dumps({"train": {"batch_size": 12}}))
    assert auto_batch.recorded_batch_size(cfg, tmp_path).train.batch_size == 12
    fixed = apply_overrides(RunConfig(), {"train.batch_size": 4})
    assert auto_batch.recorded_batch_size(fixed, tmp_path).train.batch_size == 4  # a number given stays


@pytest.fixture
def tiny_run(demo_dir, demo_cache):
    """(cfg, LoRA model, training data) of a smoke config on the demo loops' cache, batch auto."""
    cfg = apply_overrides(RunConfig(), {**SMOKE_OVERRIDES, "data.path": demo_dir, "data.cache_dir": demo_cache,
                                        "data.window_seconds": 0.5, "train.batch_size": "auto"})
    model, tokenizer = builders.base_model(cfg.model, torch.device("cpu"))
    data = data_setup.training_data(cfg, demo_cache, builders.audio_format(model), 1, None, tokenizer)
    return cfg, builders.lora_model(cfg, model), data


def cpu_accelerator():
    return SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True)


def test_cpu_choice_is_the_largest_batch_the_estimate_fits(tiny_run, monkeypatch):
    cfg, model, data = tiny_run
    arch = architecture_of(model)
    settings = auto_batch.estimate_settings(cfg, data, torch.device("cpu"))
    peak = {b: me.estimate(arch, me.with_settings(settings, batch_size=b)).total for b in (1, 3, 4)}
    capacity = window_capacity(data.train.clips, data.frames)
    assert capacity > 4
    # MemAvailable such that 3 fits (with the margin) and 4 does not.
    available = (peak[3] + peak[4]) / 2 / (1 - auto_batch.CPU_MARGIN)
    monkeypatch.setattr(auto_batch, "mem_available_bytes", lambda: available)
    resolved, record = auto_batch.resolve_batch_size(cfg, model, data, cpu_accelerator())
    assert resolved.train.batch_size == 3 and record["resolved"] == 3 and record["limited_by"] == "memory"
    assert record["predicted_peak_bytes"] == pytest.approx(peak[3]) and record["data_windows"] == capacity
    # Plenty of memory: the data's distinct windows bound it.
    monkeypatch.setattr(auto_batch, "mem_available_bytes", lambda: 1e15)
    resolved, record = auto_batch.resolve_batch_size(cfg, model, data, cpu_accelerator())
    assert resolved.train.batch_size == capacity and record["limited_by"] == "data"
    # Not even one window: a message naming the fixes.
    monkeypatch.setattr(auto_batch, "mem_available_bytes", lambda: peak[1] / 2)
    with pytest.raises(auto_batch.AutoBatchError, match=r"even a batch of 1.*--model.gradient-checkpointing"):
        auto_batch.resolve_batch_size(cfg, model, data, cpu_accelerator())


def test_trial_halves_on_out_of_memory_and_leaves_no_trace(tiny_run, monkeypatch):
    _, model, data = tiny_run
    sizes = []

    def forward(model, batch, cache):
        sizes.append(batch["labels"].shape[0])
        if batch["labels"].shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return model_lib_forward(model, batch, cache)

    from musicgen_lora.modeling.forward import forward_loss as model_lib_forward

    monkeypatch.setattr(auto_batch, "forward_loss", forward)
    accelerator = SimpleNamespace(device=torch.device("cpu"), autocast=lambda: torch.autocast("cpu", enabled=False))
    state = torch.random.get_rng_state()
    trials = []
    assert auto_batch._trial(model, data, 12, accelerator, trials) == 3
    assert sizes == [12, 6, 3]
    assert trials == [{"batch": 12, "outcome": "out of memory"}, {"batch": 6, "outcome": "out of memory"},
                      {"batch": 3, "outcome": "fits"}]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)  # dropout's draws did not move the run's RNG
    monkeypatch.setattr(auto_batch, "forward_loss", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(auto_batch.AutoBatchError, match="a batch of 1 runs out of GPU memory"):
        auto_batch._trial(model, data, 2, accelerator, [])


def test_model_lib_is_what_the_estimate_reads():
    arch = architecture_of(model_lib.apply_lora(model_lib.build_tiny_musicgen(), r=4, alpha=4, dropout=0.0, targets=("q_proj",)))
    assert arch.parameters == load_architecture("tiny").parameters  # LoRA weights are not base weights
    assert {m.name for m in arch.adaptable} == {m.name for m in load_architecture("tiny").adaptable}


@pytest.mark.slow
def test_smoke_run_with_auto_batch_records_a_number_and_resumes(tmp_path, demo_dir):
    run_dir = tmp_path / "run"
    args = quick_args(run_dir, tmp_path / "cache", demo_dir, "--train.batch-size", "auto", "--train.max-steps", "3",
                      "--train.checkpoint-every", "3")
    done = run_baseline(args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    batch = config["train"]["batch_size"]
    assert isinstance(batch, int) and batch >= 1
    manifest = json.loads((run_dir / "manifest.json").read_text())
    record = manifest["batch_size"]
    assert record["requested"] == "auto" and record["resolved"] == batch and record["device"] == "cpu"
    assert record["predicted_peak_bytes"] <= record["usable_bytes"] < record["available_bytes"]
    line = next(line for line in done.stderr.splitlines() if "--train.batch-size auto:" in line)
    assert f"--train.batch-size auto: {batch} (cpu; predicted peak" in line and "MemAvailable" in line
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and "train/loss" in records[-1]

    more = run_baseline([*args, "--train.max-steps", "5"], timeout=600)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resumed from" in more.stderr and f"--train.batch-size auto: {batch}, as the run directory recorded" in more.stderr
    assert json.loads((run_dir / "config.json").read_text())["train"]["batch_size"] == batch
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 5
