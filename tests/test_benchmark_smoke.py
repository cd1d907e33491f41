"""The training-throughput benchmark measures every field on the tiny model (values, not speeds)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys


def load_benchmark(repo_root):
    spec = importlib.util.spec_from_file_location("train_throughput", repo_root / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_positive_measurements(repo_root, tmp_path):
    bench = load_benchmark(repo_root)
    args = bench.Args(
        arch="tiny", device="cpu", batch_size=2, window_seconds=0.5, reference_pad_seconds=1.0,
        steps=2, warmup=1, rounds=1, arms=("reference", "ours", "grad_ckpt"), isolate=False,
        output_dir=tmp_path, model_cache=tmp_path / "models",
    )
    bench.main(args)

    report = json.loads((tmp_path / "train_throughput_cpu_tiny.json").read_text())
    assert "| reference |" in (tmp_path / "train_throughput_cpu_tiny.md").read_text()
    assert [row["arm"] for row in report["rows"]] == ["reference", "ours", "grad_ckpt"]
    assert report["matmul_peak_tflops"] > 0
    assert report["ours_over_reference"] > 0 and report["ours_over_reference_by_cpu_time"] > 0
    for row in report["rows"]:
        assert "error" not in row, row
        assert len(row["step_times_s"]) == 2
        for key in ("step_time_s", "process_cpu_s_per_step", "frames_per_s", "audio_s_per_s", "useful_audio_s_per_s",
                    "peak_memory_gb", "model_tflops_per_step", "mfu", "speedup_vs_reference"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["arm"], key, row[key])
        assert 0 <= row["data_fraction"] < 1 and 0 <= row["optimizer_fraction"] < 1
    reference, ours = report["rows"][0], report["rows"][1]
    # The reference trains on 1 s of padded audio per example, of which 0.5 s is real.
    assert math.isclose(reference["audio_s_per_s"], 2 * reference["useful_audio_s_per_s"], rel_tol=1e-6)
    assert math.isclose(ours["audio_s_per_s"], ours["useful_audio_s_per_s"], rel_tol=1e-6)


def test_flop_model_counts_linear_and_attention_terms(repo_root):
    bench = load_benchmark(repo_root)
    from musicgen_lora.model import small_musicgen_config

    decoder = small_musicgen_config().decoder
    one = bench.train_flops(decoder, batch=1, positions=100, text_tokens=0)
    assert math.isclose(bench.train_flops(decoder, batch=4, positions=100, text_tokens=0), 4 * one)
    # Without attention, 2x forward = 4 FLOPs per matmul weight per position.
    weights = 24 * (6 * 1024**2 + 2 * 1024 * 4096) + 4 * 1024 * 2048
    attention = 3 * 4 * 24 * 1024 * 100 * 100
    assert math.isclose(one, 4 * weights * 100 + attention)
