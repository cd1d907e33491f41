"""The memory estimate (issue 15.4): its saved-activation count against autograd's own saved tensors,
its structure, its totals against a measured peak RSS, and `musicgen-lora estimate`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from musicgen_lora.modeling import model as model_lib
from musicgen_lora.modeling.collate import codebook_delays, delay_pattern_labels
from musicgen_lora.modeling.families import FAMILIES
from musicgen_lora.modeling.forward import forward_loss
from musicgen_lora.training import memory_estimate as me
from musicgen_lora.training.architecture import (
    architecture_of,
    load_architecture,
    lora_modules,
    lora_parameter_count,
)

ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def autograd_saved_bytes(loss: torch.Tensor, model: torch.nn.Module, loss_mask: tuple, skip_shapes=()) -> int:
    """Bytes of the floating-point and bool (dropout masks on CUDA) tensors the autograd graph of
    `loss` holds for backward, each storage once; parameters, buffers and the loss's own tensors (its
    log-softmax output, B*K*L x vocab, and its bool label mask of shape `loss_mask`) left out."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        # Built-in ops expose what they save as _saved_*; custom autograd Functions (our LoRA
        # dropout, modeling.lora_dropout) as saved_tensors.
        for name in dir(node):
            if not (name.startswith("_saved_") or name == "saved_tensors"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # a saved tensor already freed
                continue
            for tensor in value if isinstance(value, tuple | list) else [value]:
                if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
                    continue
                if not (tensor.is_floating_point() or tensor.dtype == torch.bool):
                    continue
                if tensor.dtype == torch.bool and tuple(tensor.shape) == loss_mask:  # (SDPA's fp32 logsumexp may share the shape)
                    continue
                if tensor.shape[-1] == model_lib.tiny_musicgen_config().decoder.vocab_size or tuple(tensor.shape) in skip_shapes:
                    continue
                key = tensor.untyped_storage().data_ptr()
                if key not in own:
                    storages[key] = tensor.untyped_storage().nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values())


def tiny_step(settings: me.Settings, hidden_dropout: float = 0.0, device: str = "cpu", name: str = "tiny"):
    """A tiny model of family `name` as `settings` describe it, one forward_loss on random codes:
    (loss, model, arch, the loss's label-mask shape)."""
    torch.manual_seed(0)
    config = model_lib.RANDOM_ARCHITECTURES[name]()
    config.decoder.dropout = hidden_dropout
    with model_lib.musicgen_warnings_silenced():
        model = FAMILIES[config.model_type].model_class()(config)
    model_lib.configure_special_tokens(model)
    model.set_attn_implementation({"decoder": settings.attention})
    if settings.base_dtype == "bfloat16":
        model.to(torch.bfloat16)
        model.audio_encoder.float()
    arch = architecture_of(model, name)
    model = model_lib.apply_lora(model, r=settings.lora_r, alpha=16, dropout=settings.lora_dropout, targets=settings.lora_targets)
    model.to(device).train()
    frames, k = round(settings.window_seconds * arch.frame_rate), arch.codebooks
    codes = torch.randint(0, 2048, (settings.batch_size, k, frames))
    ids, labels = delay_pattern_labels(codes, torch.ones(settings.batch_size, frames, dtype=torch.bool),
                                       codebook_delays(k, arch.audio_channels), 2048)
    batch = {
        "input_ids": torch.randint(0, 300, (settings.batch_size, settings.text_tokens)),
        "attention_mask": torch.ones(settings.batch_size, settings.text_tokens, dtype=torch.long),
        "condition_mask": torch.ones(settings.batch_size, dtype=torch.long), "decoder_input_ids": ids, "labels": labels,
    }
    batch = {key: value.to(device) for key, value in batch.items()}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
        loss, _ = forward_loss(model, batch)
    return loss, model, arch, (settings.batch_size, k, labels.shape[1])


# B=2, 50 frames: 106 decoder positions and 40 text positions, neither equal to d_model (64), so a
# LoRA weight (16 x 64) never has an activation's shape.
SAVED_CASES = {
    "defaults": ({}, 0.0),
    "stereo": ({}, 0.1, "tiny-stereo"),
    "melody": ({}, 0.1, "tiny-melody"),
    "melody, FFN targets": ({"lora_targets": ("q_proj", "fc1", "fc2")}, 0.0, "tiny-stereo-melody"),
    "hidden dropout": ({}, 0.1),
    "no LoRA dropout": ({"lora_dropout": 0.0}, 0.0),
    "ffn targets": ({"lora_targets": ("q_proj", "v_proj", "fc1", "fc2")}, 0.0),
    "out_proj only": ({"lora_targets": ("out_proj",)}, 0.0),
    "embeddings and heads": ({"lora_targets": (*ATTENTION, "embed_tokens", "lm_heads")}, 0.1),
    "eager attention": ({"attention": "eager"}, 0.0),
}


@pytest.mark.parametrize("case", list(SAVED_CASES))
def test_saved_activations_equal_what_autograd_saves(case):
    changes, hidden_dropout, *name = SAVED_CASES[case]
    settings = me.Settings(batch_size=2, window_seconds=1.0, text_tokens=20, **changes)
    loss, model, arch, loss_mask = tiny_step(settings, hidden_dropout, name=name[0] if name else "tiny")
    predicted = me.estimate(arch, settings).saved_activation_bytes
    assert predicted == autograd_saved_bytes(loss, model, loss_mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("lora_dropout", [0.05, 0.0])
def test_saved_activations_under_cuda_bf16_autocast(lora_dropout):
    """CUDA's dtype rules: LayerNorm in fp32 under autocast, bool dropout masks, bf16 copies for LoRA.
    Within 2%: CUDA's attention kernels keep a few KiB more than the estimate models (on an H200, with
    the float tensors alone counted, autograd held 644448 bytes and the estimate's float part 641376)."""
    settings = me.Settings(batch_size=2, window_seconds=1.0, text_tokens=20, device="cuda", precision="bf16",
                           base_dtype="bfloat16", lora_dropout=lora_dropout)
    loss, model, arch, loss_mask = tiny_step(settings, 0.1, device="cuda")
    lora_weight_casts = {(16, 64), (64, 16)}  # autocast's bf16 copies of the LoRA weights (counted with them)
    got = autograd_saved_bytes(loss, model, loss_mask, lora_weight_casts)
    assert me.estimate(arch, settings).saved_activation_bytes == pytest.approx(got, rel=0.02)


def test_saved_activations_under_cpu_bf16_autocast():
    settings = me.Settings(batch_size=2, window_seconds=1.0, text_tokens=20, precision="bf16", base_dtype="bfloat16")
    loss, model, arch, loss_mask = tiny_step(settings, 0.1)
    got = autograd_saved_bytes(loss, model, loss_mask, {(16, 64), (64, 16)})
    # CPU autocast keeps LayerNorm's mean / 1/std in bf16; the estimate counts them as fp32 (a few KiB).
    assert got <= me.estimate(arch, settings).saved_activation_bytes <= got * 1.02


def test_parameter_counts_match_the_built_models():
    tiny = model_lib.build_tiny_musicgen()
    arch = load_architecture("tiny")
    assert arch.parameters == {name: sum(p.numel() for p in part.parameters()) for name, part in tiny.named_children()}
    lora = model_lib.apply_lora(tiny, r=8, alpha=8, dropout=0.0, targets=(*ATTENTION, "fc1", "embed_tokens"))
    trainable, _ = model_lib.trainable_parameter_count(lora)
    assert lora_parameter_count(lora_modules(arch, (*ATTENTION, "fc1", "embed_tokens")), 8) == trainable
    # musicgen-small's decoder, by hand: per layer self + cross attention (8 d^2), FFN (2 d f), three
    # LayerNorms; K embeddings of vocab + 1 rows, K heads, the final LayerNorm (no biases anywhere else).
    small = load_architecture("small")
    d, f, k, v = 1024, 4096, 4, 2048
    assert small.parameters["decoder"] == 24 * (8 * d * d + 2 * d * f + 6 * d) + k * (v + 1) * d + k * d * v + 2 * d
    large = load_architecture("large")
    assert (large.layers, large.d_model, large.ffn_dim, large.heads) == (48, 2048, 8192, 32)
    assert large.parameters["text_encoder"] == small.parameters["text_encoder"]


@pytest.fixture(scope="module")
def small_arch():
    return load_architecture("small")


def test_estimate_grows_with_batch_and_window(small_arch):
    for checkpointing in (False, True):
        base = me.Settings(batch_size=1, window_seconds=10.0, gradient_checkpointing=checkpointing)
        by_batch = [me.estimate(small_arch, me.with_settings(base, batch_size=b)).total for b in (1, 2, 4, 8)]
        by_window = [me.estimate(small_arch, me.with_settings(base, window_seconds=s)).total for s in (5.0, 10.0, 30.0)]
        assert by_batch == sorted(set(by_batch)) and by_window == sorted(set(by_window))
        # What a batch adds is what the step holds per example: twice the batch, twice the increment.
        step = by_batch[1] - by_batch[0]
        assert by_batch[3] - by_batch[2] == pytest.approx(4 * step, rel=1e-9)
    static = [me.estimate(small_arch, me.Settings(batch_size=b, window_seconds=10.0)).get("frozen weights") for b in (1, 8)]
    assert static[0] == static[1] == pytest.approx(sum(small_arch.parameters.values()) * 4 + 4 * sum(small_arch.float_buffers.values())
                                                   + small_arch.other_buffer_bytes)


def test_checkpointing_and_bf16_lower_the_activations(small_arch):
    fp32 = me.Settings(batch_size=4, window_seconds=30.0)
    plain, checkpointed = me.estimate(small_arch, fp32), me.estimate(small_arch, me.with_settings(fp32, gradient_checkpointing=True))
    assert checkpointed.saved_activation_bytes < plain.saved_activation_bytes / 20  # one tensor per layer instead of ~28
    assert checkpointed.total < plain.total
    # Checkpointing keeps exactly each layer's input: layers x positions x d_model fp32 (+ the final LayerNorm's).
    positions = 4 * small_arch.positions(30.0)
    assert checkpointed.saved_activation_bytes == pytest.approx(25 * positions * 1024 * 4 + 2 * positions * 4)
    # bf16 halves what autocast runs in bf16; CUDA's autocast keeps LayerNorm inputs and the LoRA
    # dropout's input in fp32, so less is halved there.
    cpu_bf16 = me.with_settings(fp32, precision="bf16", base_dtype="bfloat16")
    assert me.estimate(small_arch, cpu_bf16).saved_activation_bytes < plain.saved_activation_bytes / 1.8
    cuda = me.with_settings(fp32, device="cuda", precision="bf16", base_dtype="bfloat16")
    cuda_fp32 = me.estimate(small_arch, me.with_settings(fp32, device="cuda")).saved_activation_bytes
    assert me.estimate(small_arch, cuda).saved_activation_bytes < cuda_fp32 / 1.5
    assert "process baseline" not in {row.label.split(" (")[0] for row in me.estimate(small_arch, cuda).rows}


def test_loading_a_fp32_checkpoint_in_bf16_can_be_the_cpu_peak(small_arch):
    """Measured: a bf16 run of the fp32 musicgen-small files peaks at 3.99 GiB while loading (files
    mapped + bf16 copies) at batches whose step needs far less; an fp32 run reads the files in place."""
    assert small_arch.stored_itemsize == 4  # published checkpoints (and the built-in ones) are fp32
    params = sum(small_arch.parameters.values())
    baseline = 700 * 2**20
    bf16 = me.Settings(batch_size=1, window_seconds=10.0, precision="bf16", base_dtype="bfloat16",
                       process_baseline_bytes=baseline, count_loading=True)
    loading = me.estimate(small_arch, bf16)
    assert loading.peak_moment == "loading the checkpoint"
    converted = (params - small_arch.parameters["audio_encoder"]) * 2 + 2 * (
        small_arch.float_buffers.get("decoder", 0) + small_arch.float_buffers.get("text_encoder", 0))
    assert loading.total == pytest.approx(baseline + 4 * params + converted)
    # what --train.batch-size auto sizes (the model is loaded by then): the step alone
    step = me.estimate(small_arch, me.with_settings(bf16, count_loading=False))
    assert step.peak_moment == "the loss's backward" and step.total < loading.total
    # a big enough batch outgrows the load; fp32 never converts, so the step is always the peak
    assert me.estimate(small_arch, me.with_settings(bf16, batch_size=8)).peak_moment == "the loss's backward"
    fp32 = me.with_settings(bf16, precision="no", base_dtype="float32")
    assert me.estimate(small_arch, fp32).peak_moment == "the loss's backward"
    assert me.estimate(small_arch, me.with_settings(bf16, device="cuda")).peak_moment == "the loss's backward"


def load_benchmark(repo_root):
    spec = importlib.util.spec_from_file_location("memory_estimate_benchmark", repo_root / "benchmarks" / "memory_estimate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_estimate_matches_measured_peak_rss_of_the_tiny_model(repo_root, tmp_path):
    """The benchmark's own path on the tiny model at 16 x 10 s (fresh process per point, VmHWM).

    At this point the step itself (logits and loss: 0.8 GiB) is as large as the process baseline
    (0.7 GiB), so the total checks both. 10%: the activations are exact (see above), and what the
    estimate leaves out is the heap's small allocations and code pages a step maps beyond the
    baseline's one tiny step, tens of MB (the benchmark's CPU report shows 1-7% on this model)."""
    bench = load_benchmark(repo_root)
    args = bench.Args(device="cpu", tiny_points=("16x10",), small_points=(), glibc_default_points=(), threads=1,
                      model_cache=tmp_path / "models", out=tmp_path / "report")
    report = bench.run(args)
    rows = report["rows"]
    assert [(r["model"], r["batch"], r["checkpointing"]) for r in rows] == [("tiny", 16, False), ("tiny", 16, True)]
    for row in rows:
        assert row["peak_bytes"] > report["baseline_rss_bytes"] > 0
        step = row["estimate_bytes"] - report["baseline_rss_bytes"]
        assert step > 0.5 * report["baseline_rss_bytes"]
        assert abs(row["error"]) <= 0.10, row
    bench.write(report, args.out, "test")
    assert "| tiny | 16 | 10 | yes | train |" in (tmp_path / "report.md").read_text()


# ---- the command -----------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicgen_lora.cli", "estimate", *args],
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_command_module_imports_neither_torch_nor_transformers():
    code = "import sys, musicgen_lora.cli, musicgen_lora.tools.estimate; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
    help_run = run_cli("--help")
    assert help_run.returncode == 0 and "--window-seconds" in help_run.stdout and "--lora-r" in help_run.stdout


def test_cli_prints_a_table_with_both_variants():
    done = run_cli("--model", "tiny", "--batch-size", "2", "--window-seconds", "3", "--device", "cuda")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "| component | no checkpointing (GiB) | gradient checkpointing (GiB) |" in lines
    peak = next(line for line in lines if line.startswith("| **predicted peak**"))
    plain, checkpointed = (float(cell.strip(" *")) for cell in peak.split("|")[2:4])
    arch = load_architecture("tiny")
    settings = me.Settings(batch_size=2, window_seconds=3.0, device="cuda", precision="bf16", base_dtype="bfloat16")
    assert plain == pytest.approx(me.estimate(arch, settings).total / 2**30, abs=0.006)
    assert checkpointed <= plain
    assert "153 decoder positions" in done.stdout  # 150 frames at 50 Hz + the delay pattern's 3


def test_cli_json_on_cpu_includes_the_measured_baseline():
    done = run_cli("--model", "tiny", "--batch-size", "4", "--window-seconds", "2", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    baseline = result["settings"]["process_baseline_bytes"]
    assert 100 * 2**20 < baseline < 4 * 2**30  # python + torch + the stack: hundreds of MB
    for variant in result["estimates"].values():
        assert variant["rows"]["process baseline (python, torch, training stack, runtime)"] == baseline
        assert variant["total_bytes"] == pytest.approx(sum(variant["rows"].values()))


def test_cli_reads_a_local_checkpoint_folder_and_refuses_what_it_cannot_read(tmp_path):
    model_lib.tiny_musicgen_config().save_pretrained(tmp_path / "ckpt")  # config.json only, no weights
    done = run_cli("--model", str(tmp_path / "ckpt"), "--batch-size", "1", "--device", "cuda", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["lora_parameters"] == lora_parameter_count(
        lora_modules(load_architecture("tiny"), ATTENTION), 16)
    (tmp_path / "empty").mkdir()
    missing = run_cli("--model", str(tmp_path / "empty"))
    assert missing.returncode == 2 and "holds no config.json" in missing.stderr
    offline = run_cli("--model", "nobody/not-a-cached-model")
    assert offline.returncode == 2 and "not in the local Hugging Face cache" in offline.stderr
    assert "small, medium, large" in offline.stderr
    target = run_cli("--model", "tiny", "--lora-targets", "nope")
    assert target.returncode == 2 and "matches no module" in target.stderr


def test_cli_defaults_follow_the_training_defaults():
    from musicgen_lora.tools.estimate import EstimateArgs
    from musicgen_lora.training.config import DataConfig, LoraSettings, ModelConfig, TrainConfig

    defaults = {f.name: f.default for f in fields(EstimateArgs)}
    assert defaults["model"] == ModelConfig.name and defaults["batch_size"] == TrainConfig.batch_size
    assert defaults["window_seconds"] == DataConfig.window_seconds
    assert (defaults["lora_r"], defaults["lora_targets"], defaults["lora_dropout"]) == (
        LoraSettings.r, LoraSettings.targets, LoraSettings.dropout)
    assert defaults["mixed_precision"] == TrainConfig.mixed_precision
    assert me.Settings.lora_targets == LoraSettings.targets
