"""Issue 15: `--train.mixed-precision auto` picks bf16 autocast on CPUs with native bf16 (AMX or
AVX512-BF16) as on GPUs, fp32 on other CPUs; frozen weights follow, LoRA weights stay fp32, and the
run's manifest and summary say what was chosen and why."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from musicgen_lora.training import builders
from musicgen_lora.training.config import SMOKE_OVERRIDES, RunConfig, apply_overrides
from musicgen_lora.training.experiment import run_summary
from musicgen_lora.training.loop import train


@pytest.mark.parametrize(("amx", "avx512_bf16", "native"), [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_is_read_from_the_cpu_capabilities(monkeypatch, amx, avx512_bf16, native):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert builders.cpu_bf16_native() is native


def test_without_torch_helpers_the_kernel_cpu_flags_decide(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(builders, "CPUINFO", cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert not builders.cpu_bf16_native()
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert builders.cpu_bf16_native()


@pytest.mark.parametrize(("native", "precision", "dtype"), [(True, "bf16", torch.bfloat16), (False, "no", torch.float32)])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, precision, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(builders, "cpu_bf16_native", lambda: native)
    assert builders.mixed_precision("auto") == precision
    assert builders.base_dtype("auto", "auto") == dtype
    assert builders.mixed_precision("no") == "no" and builders.base_dtype("auto", "no") == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_a_run_trains_in_the_chosen_precision_and_records_it(monkeypatch, tmp_path, demo_dir, demo_cache, native):
    monkeypatch.setattr(builders, "cpu_bf16_native", lambda: native)
    shutil.copytree(demo_cache, tmp_path / "cache")
    cfg = apply_overrides(apply_overrides(RunConfig(), SMOKE_OVERRIDES), {
        "output_dir": tmp_path / "run", "data.path": demo_dir, "data.cache_dir": tmp_path / "cache",
        "data.window_seconds": 0.5, "data.val_fraction": 0.25, "train.batch_size": 2, "train.max_steps": 2,
        "train.eval_every": 0, "sample.base_model": False, "metrics.enabled": False, "sample.seconds": 0.04,
        "tracking.wandb": "disabled",
    })
    result = train(cfg)

    record = json.loads((tmp_path / "run" / "manifest.json").read_text())["precision"]
    assert record["mixed_precision"] == ("bf16" if native else "no") and record["device"] == "cpu"
    assert record["decoder_weights"] == (["bfloat16"] if native else ["float32"])
    assert record["lora_weights"] == ["float32"]
    assert record["auto"] == ("CPU with native bf16 (AMX or AVX512-BF16)" if native else "CPU without native bf16: fp32")
    assert {t.dtype for t in load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors").values()} == {torch.float32}
    summary = run_summary(result)
    assert ("precision: bf16 autocast on cpu" if native else "precision: fp32 (no autocast) on cpu") in summary
