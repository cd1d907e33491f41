"""The training-throughput benchmark measures every field on the tiny model (values, not speeds)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
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
        steps=2, warmup=1, rounds=1, arms=("reference", "ours_fp32", "ours", "grad_ckpt", "peer", "peer_lean"),
        isolate=False, output_dir=tmp_path, model_cache=tmp_path / "models", cpu_bf16=True,
    )
    bench.main(args)

    report = json.loads((tmp_path / "train_throughput_cpu_tiny.json").read_text())
    assert "| reference |" in (tmp_path / "train_throughput_cpu_tiny.md").read_text()
    assert [row["arm"] for row in report["rows"]] == ["reference", "ours_fp32", "ours", "grad_ckpt", "peer", "peer_lean"]
    assert report["ours_over_peer"] > 0 and report["ours_over_peer_lean"] > 0
    assert report["ours_fp32_over_peer"] > 0 and report["ours_fp32_over_peer_lean"] > 0
    assert report["ours_precision"] == "bf16" and set(report["matmul_peaks_tflops"]) == {"float32", "bfloat16"}
    assert report["matmul_peak_tflops"] > 0
    assert report["ours_over_reference"] > 0 and report["ours_over_reference_by_cpu_time"] > 0
    for row in report["rows"]:
        assert "error" not in row, row
        assert len(row["step_times_s"]) == 2
        for key in ("step_time_s", "process_cpu_s_per_step", "frames_per_s", "audio_s_per_s", "useful_audio_s_per_s",
                    "peak_memory_gb", "model_tflops_per_step", "mfu", "speedup_vs_reference"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["arm"], key, row[key])
        assert 0 <= row["data_fraction"] < 1 and 0 <= row["optimizer_fraction"] < 1
    reference, ours = report["rows"][0], report["rows"][2]
    # The reference trains on 1 s of padded audio per example, of which 0.5 s is real.
    assert math.isclose(reference["audio_s_per_s"], 2 * reference["useful_audio_s_per_s"], rel_tol=1e-6)
    assert math.isclose(ours["audio_s_per_s"], ours["useful_audio_s_per_s"], rel_tol=1e-6)


def test_flop_model_counts_linear_and_attention_terms(repo_root):
    bench = load_benchmark(repo_root)
    from musicgen_lora.modeling.model import small_musicgen_config

    decoder = small_musicgen_config().decoder
    one = bench.train_flops(decoder, batch=1, positions=100, text_tokens=0)
    assert math.isclose(bench.train_flops(decoder, batch=4, positions=100, text_tokens=0), 4 * one)
    # Without attention, 2x forward = 4 FLOPs per matmul weight per position.
    weights = 24 * (6 * 1024**2 + 2 * 1024 * 4096) + 4 * 1024 * 2048
    attention = 3 * 4 * 24 * 1024 * 100 * 100
    assert math.isclose(one, 4 * weights * 100 + attention)


def test_peer_labels_match_ours_in_the_delay_pattern(repo_root):
    """The HF recipe's labels and ours agree position for position (ours also keeps the delayed tail)."""
    import torch

    from musicgen_lora.modeling.collate import IGNORE_INDEX, codebook_delays, delay_pattern_labels
    from musicgen_lora.modeling.model import audio_format, build_random_musicgen

    bench = load_benchmark(repo_root)
    model = build_random_musicgen("tiny")
    fmt = audio_format(model)
    codes = torch.randint(0, 2048, (fmt.num_codebooks, 12))
    peer = bench.recipe_labels(model, codes.numpy(), fmt.pad_token_id)
    _, ours = delay_pattern_labels(codes[None], torch.ones(1, 12, dtype=torch.bool),
                                   codebook_delays(fmt.num_codebooks), fmt.pad_token_id)
    assert peer.shape == (12, fmt.num_codebooks)
    assert torch.equal(peer.masked_fill(peer == fmt.pad_token_id, IGNORE_INDEX), ours[0, :12])


def test_loops_regime_pads_the_peer_and_counts_only_real_audio(repo_root, tmp_path):
    bench = load_benchmark(repo_root)
    args = bench.Args(
        arch="tiny", device="cpu", batch_size=2, window_seconds=0.5, regime="loops", loop_seconds=(0.3, 1.2),
        clips=4, steps=2, warmup=1, rounds=1, arms=("ours", "peer"), isolate=False,
        output_dir=tmp_path, model_cache=tmp_path / "models",
    )
    report = bench.main(args)
    ours, peer = report["rows"]
    assert sorted(report["meta"]["clip_lengths_s"]) == [0.3, 0.6, 0.9, 1.2]
    assert math.isclose(ours["useful_audio_s_per_step"], 2 * 0.5, rel_tol=1e-3)
    # The peer trains on padded batches but is credited only with its clips' real seconds.
    assert peer["audio_s_per_s"] > peer["useful_audio_s_per_s"] > 0
    assert report["ours_over_peer"] > 0


def test_cpu_arms_follow_the_default_precision_and_the_peer_is_the_recipe(repo_root, tiny_model):
    """Ours is the shipped loop in the precision `auto` picks (bf16 with an fp32 row on CPUs with
    native bf16, fp32 with a bf16 row elsewhere); the peer stays fp32 with plain peft LoRA."""
    import torch

    from musicgen_lora.modeling.lora_dropout import FastLoraDropout
    from musicgen_lora.training.config import LoraSettings

    bench = load_benchmark(repo_root)
    native = {arm.name: arm for arm in bench.arms("cpu", 30.0, cpu_bf16=True)}
    assert native["ours"].precision == "bf16" and native["ours"].product
    assert native["ours_fp32"].precision == "fp32" and native["ours_fp32"].product and "bf16_cpu" not in native
    emulated = {arm.name: arm for arm in bench.arms("cpu", 30.0, cpu_bf16=False)}
    assert emulated["ours"].precision == "fp32" and "ours_fp32" not in emulated
    assert emulated["bf16_cpu"].precision == "bf16"
    for table in (native, emulated):
        assert table["peer"].precision == table["peer_lean"].precision == "fp32" and not table["peer"].product
    recipe = bench.recipe_lora(LoraSettings(), tiny_model)
    dropouts = [m for name, m in recipe.named_modules() if name.endswith("lora_dropout.default")]
    assert dropouts and all(type(m) is torch.nn.Dropout for m in dropouts)
    assert not any(isinstance(m, FastLoraDropout) for m in recipe.modules())


def load_loss_curve(repo_root):
    path = repo_root / "benchmarks" / "bf16_loss_curve.py"
    spec = importlib.util.spec_from_file_location("bf16_loss_curve", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_step_profile(repo_root):
    load_benchmark(repo_root)  # the profiler imports train_throughput under that name
    spec = importlib.util.spec_from_file_location(
        "step_profile", repo_root / "benchmarks" / "step_profile.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bf16_loss_curve_compares_both_arms_step_by_step(repo_root, demo_dir, demo_cache, tmp_path):
    """bf16_loss_curve.py trains the smoke run in fp32 and in bf16 through the experiment entry
    point and compares the losses step by step (in-process, 2 steps of 2 x 1 s: values, not the bar)."""
    bench = load_loss_curve(repo_root)
    # The shared token cache, already encoded: no EnCodec in the test.
    shutil.copytree(demo_cache, tmp_path / "runs" / "smoke" / "tokens")
    cheap = (
        f"--data.path {demo_dir} --data.window-seconds 1 "
        "--train.batch-size 2 --train.checkpoint-every 0 --train.eval-max-windows 1 "
        "--sample.no-base-model --sample.seconds 0.06 --metrics.no-enabled --tracking.wandb disabled"
    )
    args = bench.Args(
        cases=("smoke",),
        steps=2,
        extra=cheap,
        isolate=False,
        runs_dir=tmp_path / "runs",
        output_dir=tmp_path,
    )
    bench.main(args)

    report = json.loads((tmp_path / "bf16_loss_curve_cpu_smoke.json").read_text())
    assert "| step | fp32 loss |" in (tmp_path / "bf16_loss_curve_cpu_smoke.md").read_text()
    assert [row["step"] for row in report["train"]] == [1, 2]
    assert [row["step"] for row in report["val"]] == [0, 2]  # the base model's, then the final one
    for row in report["train"] + report["val"]:
        assert all(math.isfinite(row[key]) for key in ("fp32", "bf16", "rel_diff")), row
    assert report["arms"]["fp32"]["precision"]["decoder_weights"] == ["float32"]
    assert report["arms"]["bf16"]["precision"]["decoder_weights"] == ["bfloat16"]
    checks = report["verdict"]["checks"]
    assert set(checks) == {"same_tokens", "train_every_step", "train_final_step", "validation"}
    assert report["tolerance"]["train_every_step"] == bench.TRAIN_STEP_TOLERANCE
    assert report["tokens"]["identical"] and checks["same_tokens"]


def test_bf16_loss_curve_smoke_case_is_the_readme_smoke_run(repo_root, tmp_path):
    """The committed smoke comparison runs `--smoke` with its defaults (validation, samples, metrics):
    the cheap flags of the test above are the test's own, and only the small case turns anything off."""
    bench = load_loss_curve(repo_root)
    flags = bench.case_flags("smoke", bench.Args())
    assert flags == ["--smoke", "--train.log-every", "1"]
    small = bench.case_flags("small", bench.Args(small_arch="tiny", model_cache=tmp_path))
    assert "--smoke" not in small and "--metrics.no-enabled" in small


def test_bf16_loss_curve_counts_codes_that_differ(repo_root, demo_cache, tmp_path):
    import numpy as np

    from musicgen_lora.data.tokens import load_codes, load_manifest

    bench = load_loss_curve(repo_root)
    same, changed = tmp_path / "same", tmp_path / "changed"
    shutil.copytree(demo_cache, same)
    shutil.copytree(demo_cache, changed)
    entry = load_manifest(changed)[0]
    path = changed / "codes" / f"{entry.key}.npz"
    with np.load(path) as stored:
        fields = dict(stored)
    fields["codes"] = fields["codes"].copy()
    fields["codes"][0, :3] += 1  # three codes of one file
    np.savez(path, **fields)
    total = sum(load_codes(demo_cache, e).size for e in load_manifest(demo_cache))

    assert bench.compare_tokens(demo_cache, same)["identical"]
    result = bench.compare_tokens(demo_cache, changed)
    assert not result["identical"]
    assert math.isclose(result["codes_differing_fraction"], 3 / total)


def test_step_profile_phases_add_up_to_the_step(repo_root, tmp_path):
    """Each arm's phases account for its step time, every op category is present and non-negative,
    and the module hooks found what they attribute (T5, the LoRA dropouts, the LM head)."""
    profiler = load_step_profile(repo_root)
    args = profiler.Args(
        arch="tiny",
        device="cpu",
        batch_size=2,
        window_seconds=0.5,
        clips=2,
        warmup=1,
        steps=1,
        isolate=False,
        output_dir=tmp_path,
        model_cache=tmp_path / "models",
        cpu_bf16=True,
    )
    report = profiler.main(args)

    assert [row["arm"] for row in report["rows"]] == ["ours_fp32", "peer_lean", "ours", "peer"]
    markdown = (tmp_path / "step_profile_cpu_tiny.md").read_text()
    assert "## Where ours differs from peer_lean" in markdown
    assert (
        json.loads((tmp_path / "step_profile_cpu_tiny.json").read_text())["rows"] == report["rows"]
    )
    for row in report["rows"]:
        assert "error" not in row, row
        arm, step = row["arm"], row["step_ms"]
        phases, categories = row["phases_ms"], row["categories_ms"]
        assert set(phases) == {"data", "forward", "loss", "backward", "optimizer"}
        assert all(value > 0 for value in phases.values()), (arm, phases)
        assert math.isclose(sum(phases.values()), step, rel_tol=0.05, abs_tol=3.0), (arm, phases)
        assert set(categories) == set(profiler.CATEGORIES)
        assert all(value >= 0 for value in categories.values()), (arm, categories)
        # The events' self times cover the step: every event nests inside the step's range.
        assert math.isclose(sum(categories.values()), step, rel_tol=0.1), (arm, categories)
        for category in ("matmul", "lora_dropout", "optimizer", "loss"):
            assert categories[category] > 0, (arm, category)
        assert row["hooked"]["lm_head"] == 1 and row["hooked"]["lora_dropout"] > 0
        assert len(row["top_ops"]) == args.top
    ours, peer = (
        next(r["categories_ms"] for r in report["rows"] if r["arm"] == name)
        for name in ("ours_fp32", "peer_lean")
    )
    # Ours reads cached T5 states and computes accuracy statistics; the recipe runs T5 and has none.
    assert ours["text_encoder"] == 0 and peer["text_encoder"] > 0
    assert ours["statistics"] > 0 and peer["statistics"] == 0
    diff = report["differences"][0]
    assert (diff["ours"], diff["peer"]) == ("ours_fp32", "peer_lean")
    assert math.isclose(
        sum(diff["categories_ms"].values()), sum(ours.values()) - sum(peer.values()), abs_tol=1e-6
    )
