"""Training throughput of the fast LoRA path against the original system's loop and the HF recipe.

Each row ("arm") is one training loop on the same model architecture (random weights, built in code),
the same clips and captions, and the same LoRA (rank 16 on the decoder's attention projections):

  reference   what the original system did every step: EnCodec-encode the raw audio, run T5, train
              on clips zero-padded to 30 s (padding included), eager attention, fp32 on CPU
              (fp16 autocast + grad scaler on GPU), foreach AdamW.
  ...         one optimization added per row, cumulatively, up to
  ours        the training defaults, through the shipped training step (accelerate, loss statistics,
              finite checks): pre-encoded token windows, cached T5 states, no padding, SDPA, and what
              `--train.mixed-precision auto` picks: bf16 autocast + bf16 frozen weights on GPUs and on
              CPUs with native bf16 (AMX / AVX512-BF16; then `ours_fp32` is ours at fp32), fused AdamW
              on GPU; fp32 on other CPUs.
  extras      options measured on top of ours: torch.compile, gradient checkpointing, data workers.
  peer        what researchers would otherwise run, Hugging Face's MusicGen LoRA ("dreamboothing")
              recipe as written: plain peft LoRA, labels laid out once with `build_delay_pattern_mask` +
              `apply_delay_pattern_mask`, the HF forward with `labels` (T5 every step),
              `enable_input_require_grads()` (backprop through the frozen T5), batches padded to the
              longest clip with -100, torch's AdamW as the HF Trainer makes it, fp16 autocast + grad
              scaler on GPU (fp32 on CPU).
  peer_lean   the peer without `enable_input_require_grads()`.

Two data regimes (--regime): `fixed`, every clip as long as the window (the peer pads nothing), and
`loops`, a folder of loops of 2-30 s (deterministic, the demo drum synth): the peer pads each batch to
its longest clip, ours trains on its windows (short loops tiled, long ones windowed).

Throughput is counted in *useful* audio seconds per second: zero-padding (the reference's, the
peer's) is work that teaches nothing, so only real audio counts. Every arm runs in a fresh process (its peak
memory is its own), arms alternate over --rounds (load on a shared machine hits all of them alike),
and each figure is a median over the timed steps after warm-up.

Run (the committed CPU numbers: the original loop; ours vs the recipe in both regimes; peak memory):
    uv run benchmarks/train_throughput.py --arch small --batch-size 1 --window-seconds 10 \\
        --steps 2 --warmup 1 --rounds 3
    uv run benchmarks/train_throughput.py --arch small --batch-size 2 --window-seconds 10 --steps 2 \\
        --warmup 1 --rounds 3 --arms ours ours_fp32 peer peer_lean --name train_throughput_cpu_small_peer_fixed
    uv run benchmarks/train_throughput.py --arch small --batch-size 2 --window-seconds 10 --steps 2 \\
        --warmup 1 --rounds 3 --arms ours ours_fp32 peer peer_lean --regime loops \\
        --name train_throughput_cpu_small_peer_loops
and on a GPU:
    uv run benchmarks/train_throughput.py --device cuda --arch small --batch-size 8 \\
        --window-seconds 30 --steps 20 --warmup 5 --rounds 2
    uv run benchmarks/train_throughput.py --device cuda --arch small --batch-size 8 --regime loops \\
        --clips 16 --arms ours peer peer_lean
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from musicgen_lora.data.demo import STYLES, drum_loop
from musicgen_lora.data.tokens import codec_encoder
from musicgen_lora.data.windows import Clip, DrawSampler, TrainWindows
from musicgen_lora.modeling import model as model_lib
from musicgen_lora.modeling.collate import MusicgenCollator, codebook_delays, delay_pattern_labels
from musicgen_lora.modeling.forward import TextStateCache, forward_loss, text_states
from musicgen_lora.modeling.loss import add_stats
from musicgen_lora.tracking.manifest import cpu_name
from musicgen_lora.training import builders, data_setup
from musicgen_lora.training.config import (
    LoraSettings,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)

FLOP_MODEL = (
    "Model FLOPs per step count the decoder only (T5 and EnCodec are frozen and, in ours, not run): "
    "forward = 2 x (decoder matmul weights applied per position: self-attn q,k,v,o + cross-attn q,o + "
    "FFN + 4 LM heads) x positions + 2 x cross-attn k,v weights x text tokens + attention scores "
    "4 x layers x d x positions x (positions + text tokens), self-attention counted in full (not halved "
    "for causality). Backward with frozen base weights computes input gradients only: 1x forward for the "
    "matmuls (so training = 2x forward, not 3x) and 2x forward for the attention scores (dQ, dK, dV). "
    "LoRA's own matmuls (<3%) and gradient checkpointing's recompute are not counted. "
    "MFU = model FLOPs / step time / measured dense matmul peak (bf16 on GPU, fp32 on CPU)."
)


@dataclass(frozen=True)
class Arm:
    """One training loop configuration (a row of the table)."""

    name: str
    change: str
    encode_audio: bool = False
    """EnCodec-encode the raw audio every step (reference) instead of reading pre-encoded tokens."""
    cache_text: bool = True
    """Compute T5 states once per distinct caption (forward.TextStateCache)."""
    pad_seconds: float | None = None
    """Zero-pad every clip to this length and train on the padding (the original behaviour)."""
    attention: Literal["sdpa", "eager"] = "sdpa"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """fp32: no autocast; fp16: autocast + grad scaler, fp32 weights; bf16: autocast + bf16 frozen weights."""
    fused_adamw: bool = False
    compile: bool = False
    gradient_checkpointing: bool = False
    num_workers: int = 0
    peer: bool = False
    """The HF recipe's loop (labels through the HF forward, batches padded to the longest clip)."""
    input_require_grads: bool = False
    """`model.enable_input_require_grads()`, as the HF recipe does (gradients through frozen T5)."""
    product: bool = False
    """The product's training step (train.py): accelerate-prepared model, optimizer and loader, its
    autocast, loss statistics and finite checks; otherwise a plain loop around `forward_loss`."""


def arms(device_type: str, pad_seconds: float, cpu_bf16: bool | None = None) -> list[Arm]:
    """The ladder from the reference to ours (one change per row), then the extras on top of ours.

    `cpu_bf16`: whether `--train.mixed-precision auto` picks bf16 on this CPU (None: ask
    `builders.mixed_precision`). Where it does, ours is bf16 and `ours_fp32` is ours at fp32, the
    row to compare with the peer at equal precision."""
    gpu = device_type == "cuda"
    if cpu_bf16 is None:
        cpu_bf16 = not gpu and builders.mixed_precision("auto") == "bf16"
    reference = Arm(
        "reference", f"original loop: EnCodec + T5 every step, {pad_seconds:g} s zero-padding, eager, "
        + ("fp16 autocast" if gpu else "fp32"), encode_audio=True, cache_text=False, pad_seconds=pad_seconds,
        attention="eager", precision="fp16" if gpu else "fp32",
    )
    ladder = [
        reference,
        replace(reference, name="tokens", change="+ pre-encoded tokens (no EnCodec per step)", encode_audio=False),
        replace(reference, name="text_cache", change="+ cached T5 states", encode_audio=False, cache_text=True),
        replace(reference, name="no_padding", change="+ windows of real audio, no padding", encode_audio=False,
                cache_text=True, pad_seconds=None),
    ]
    ours = replace(ladder[-1], name="ours", change="+ SDPA attention, the training loop as shipped (= ours)",
                   attention="sdpa", product=True)
    if gpu:
        ladder.append(replace(ours, name="sdpa", change="+ SDPA attention, the training loop as shipped"))
        ladder.append(replace(ours, name="bf16", change="+ bf16 autocast, bf16 frozen weights", precision="bf16"))
        ours = replace(ours, change="+ fused AdamW (= ours)", precision="bf16", fused_adamw=True)
    elif cpu_bf16:
        ladder.append(replace(ours, name="ours_fp32", change="+ SDPA attention, the training loop as shipped, at fp32 "
                              "(ours with --train.mixed-precision no)"))
        ours = replace(ours, change="+ bf16 autocast, bf16 frozen weights (= ours: the default on CPUs with native bf16)",
                       precision="bf16")
    extras = [
        replace(ours, name="compile", change="ours + torch.compile(decoder)", compile=True),
        replace(ours, name="grad_ckpt", change="ours + gradient checkpointing", gradient_checkpointing=True),
        replace(ours, name="workers", change="ours + 2 data workers" + (" (pinned memory)" if gpu else ""), num_workers=2),
    ]
    if not gpu and not cpu_bf16:
        extras.append(replace(ours, name="bf16_cpu", change="ours + bf16 autocast, bf16 frozen weights (CPU)", precision="bf16"))
    peer = Arm(
        "peer", "HF LoRA recipe: HF forward with labels, T5 every step, enable_input_require_grads, "
        "padded to the batch's longest clip, " + ("fp16 autocast" if gpu else "fp32"),
        cache_text=False, precision="fp16" if gpu else "fp32", peer=True, input_require_grads=True,
    )
    peer_lean = replace(peer, name="peer_lean", change="peer without enable_input_require_grads", input_require_grads=False)
    return [*ladder, ours, *extras, peer, peer_lean]


@dataclass(frozen=True)
class Setup:
    """What every arm shares: the model on disk, the clips, the shapes."""

    arch: str
    device: str
    batch_size: int
    window_seconds: float
    steps: int
    warmup: int
    model_dir: str
    clips: list  # [(audio float32 (samples,), codes int16 (K, T), caption)]
    silence_codes: np.ndarray
    threads: int | None = None
    regime: str = "fixed"
    reset_peak: bool = True
    """Reset the peak-memory counter before the timed steps; off: the whole process's peak
    (benchmarks/memory_estimate.py, which compares it with the estimate)."""


@dataclass(frozen=True)
class Args:
    """Measure LoRA training throughput of ours vs the original loop; write reports/benchmarks/."""

    arch: Literal["tiny", "small"] = "small"
    """Model architecture, random weights: tiny (tests) or musicgen-small's."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 1
    window_seconds: float = 10.0
    """Training window of ours (the reference always pads to --reference-pad-seconds)."""
    regime: Literal["fixed", "loops"] = "fixed"
    """fixed: every clip --clip-seconds long; loops: clips of --loop-seconds (min, max), the lengths
    of a real loop folder (the peer pads each batch to its longest clip)."""
    loop_seconds: tuple[float, float] = (2.0, 30.0)
    """Shortest and longest clip of the loops regime (lengths spread deterministically between)."""
    clip_seconds: float | None = None
    """Length of each clip (real audio); None: the window length, so ours and the reference see the
    same real audio per example and only the reference's padding differs."""
    reference_pad_seconds: float = 30.0
    steps: int = 3
    """Timed steps per arm and round."""
    warmup: int = 1
    """Untimed steps before timing (compile arms add 2)."""
    rounds: int = 2
    """Arms alternate round by round; medians over all rounds."""
    arms: tuple[str, ...] = ()
    """Arms to run (names from the table); empty: all."""
    clips: int = 6
    """Distinct clips (and captions), at least the batch size."""
    threads: int | None = None
    """torch threads per arm (None: torch's default)."""
    isolate: bool = True
    """Run each arm in a fresh process (peak memory per arm); off only for tests."""
    output_dir: Path = Path("reports/benchmarks")
    model_cache: Path = Path(".cache/musicgen-lora/benchmark")
    """Where the random model is saved once (like a checkpoint folder) for every arm to load."""
    name: str | None = None
    """Output file stem; None: train_throughput_<device>_<arch>."""
    cpu_bf16: bool | None = None
    """On CPU: ours in bf16 (with an ours_fp32 row) or fp32 (with a bf16_cpu row); None: what
    --train.mixed-precision auto picks on this CPU."""


# ---------------------------------------------------------------------------------------------
# Inside one arm's process


@dataclass
class BuiltArm:
    """One arm ready to train: its step (batch -> optimizer seconds) and the loader that feeds it."""

    model: torch.nn.Module
    loader: torch.utils.data.DataLoader
    step: Callable[[dict], float]
    fmt: model_lib.AudioFormat
    delays: list[int]
    total: int
    device: torch.device


def _no_phase(name: str) -> contextlib.AbstractContextManager:
    return _NO_PHASE


_NO_PHASE = contextlib.nullcontext()


def build_arm(arm: Arm, setup: Setup, phase: Callable[[str], contextlib.AbstractContextManager] = _no_phase) -> BuiltArm:
    """The arm's model, optimizer, loader and step, as a run of that configuration builds them.

    `phase(name)` wraps each part of the step ("forward_loss", "backward", "statistics", "optimizer")
    for a profiler (benchmarks/step_profile.py); the default does nothing."""
    if setup.threads:
        torch.set_num_threads(setup.threads)
    torch.manual_seed(0)
    device = torch.device(setup.device)
    cfg = RunConfig(
        model=ModelConfig(
            name=setup.model_dir, dtype="bfloat16" if arm.precision == "bf16" else "float32",
            attn_implementation=arm.attention, compile=arm.compile, gradient_checkpointing=arm.gradient_checkpointing,
        ),
        train=TrainConfig(batch_size=setup.batch_size, mixed_precision=MIXED_PRECISION[arm.precision]),
    )
    model, tokenizer = builders.base_model(cfg.model, device)
    fmt = model_lib.audio_format(model)
    delays = codebook_delays(fmt.num_codebooks, fmt.channels)
    peer_labels = [recipe_labels(model, codes, fmt.pad_token_id) for _, codes, _ in setup.clips] if arm.peer else None
    if arm.input_require_grads:  # the recipe calls it on the base model before LoRA
        model.enable_input_require_grads()
    model = recipe_lora(cfg.lora, model) if arm.peer else builders.lora_model(cfg, model)
    model.train()
    total = setup.warmup + setup.steps + (2 if arm.compile else 0)
    optimizer, scheduler = builders.optimizer_and_schedule(OptimConfig(fused=arm.fused_adamw), total, model, device)
    if arm.peer:  # the recipe's optimizer: the HF Trainer's default ("adamw_torch"), torch's AdamW as is
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=OptimConfig().lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    text_cache = TextStateCache() if arm.cache_text else None
    if text_cache is not None:  # timed in the steady state of a run: every caption's T5 states cached
        warm_text_cache(model, tokenizer, [caption for _, _, caption in setup.clips], text_cache, device)
    loader = _loader(arm, setup, tokenizer, fmt, delays, total, peer_labels)
    if arm.product:
        step, loader = _product_step(cfg, model, optimizer, scheduler, loader, text_cache, phase)
    else:
        step = _plain_step(arm, model, optimizer, scheduler, text_cache, fmt, delays, device, phase)
    return BuiltArm(model, loader, step, fmt, delays, total, device)


def next_batch(batches, device: torch.device) -> tuple[dict, float]:
    """The loader's next batch on the device, and its useful audio seconds."""
    batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
    return batch, float(batch.pop("useful_seconds").sum())


def measure_arm(arm: Arm, setup: Setup) -> dict:
    """Build the arm's model and loop, run warm-up + timed steps; times, memory, shapes."""
    built = build_arm(arm, setup)
    device, total, step, delays = built.device, built.total, built.step, built.delays
    step_s, cpu_s, data_s, optim_s, text_tokens, useful_s, positions = [], [], [], [], [], [], []
    batches = iter(built.loader)
    for index in range(total):
        timed = index >= total - setup.steps
        if index == total - setup.steps and setup.reset_peak:
            _reset_peak_memory(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        batch, useful = next_batch(batches, device)
        loaded = time.perf_counter()
        optim_time = step(batch)
        end = time.perf_counter()
        if timed:
            step_s.append(end - start)
            cpu_s.append(time.process_time() - cpu_start)
            data_s.append(loaded - start)
            optim_s.append(optim_time)
            text_tokens.append(int(batch["attention_mask"].shape[1]))
            useful_s.append(useful)
            # The peer's decoder runs on the padded label length; ours on frames + the delay tail.
            positions.append(int(batch["labels"].shape[1]))
    tail = 0 if arm.peer else max(delays)
    return {
        "step_s": step_s, "cpu_s": cpu_s, "data_s": data_s, "optim_s": optim_s, "peak_memory_gb": _peak_memory_gb(device),
        "positions": positions, "text_tokens": text_tokens, "useful_s": useful_s,
        "frames": [setup.batch_size * (p - tail) for p in positions], "frame_rate": built.fmt.frame_rate,
    }


MIXED_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}
"""An arm's precision as --train.mixed-precision says it."""


def warm_text_cache(model, tokenizer, captions: list[str], cache: TextStateCache, device) -> None:
    """Fill the T5 cache with every caption, as a run's first epoch does: the benchmark's few steps
    would otherwise meet most captions for the first time, which a run of thousands of steps does not."""
    for caption in dict.fromkeys(captions):
        text = tokenizer([caption], return_tensors="pt")
        text_states(model, {"input_ids": text["input_ids"].to(device), "attention_mask": text["attention_mask"].to(device)},
                    cache)


def recipe_lora(lora: LoraSettings, model):
    """The recipe's LoRA: plain peft `get_peft_model` on the same decoder modules, rank, alpha and
    dropout as ours (without our own LoRA dropout, `musicgen_lora.modeling.lora_dropout`)."""
    from peft import LoraConfig, get_peft_model

    targets = model_lib.find_lora_targets(model, lora.targets)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, bias="none")
    return get_peft_model(model, config)


def _product_step(cfg: RunConfig, model, optimizer, scheduler, loader, text_cache, phase=_no_phase):
    """(step, loader) of the training loop as shipped (train.py's micro-step): the accelerator of the
    run's config prepares model, optimizer and loader and autocasts; per-codebook statistics, loss
    reduction and finite checks run every step, as in a real run."""
    from musicgen_lora.training.loop import make_accelerator

    accelerator = make_accelerator(cfg)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch: dict) -> float:
        with accelerator.accumulate(model):
            with phase("forward_loss"):
                loss, stats = forward_loss(model, batch, text_cache)
            with phase("backward"):
                accelerator.backward(loss)
            with phase("statistics"):
                add_stats(None, stats)
            _sync(accelerator.device)
            tick = time.perf_counter()
            with phase("optimizer"):
                norm = accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                loss_sum = accelerator.reduce(loss.detach(), reduction="sum")
                if bool(torch.isfinite(norm)) and bool(torch.isfinite(loss_sum)):
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        _sync(accelerator.device)
        return time.perf_counter() - tick

    return step, loader


def _plain_step(arm: Arm, model, optimizer, scheduler, text_cache, fmt, delays, device, phase=_no_phase):
    """The ladder's and the peer's step: a plain loop, autocast and grad scaler by hand."""
    scaler = torch.amp.GradScaler(device.type) if arm.precision == "fp16" else None
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if arm.precision == "bf16" else torch.float16,
                              enabled=arm.precision != "fp32")
    encode = codec_encoder(model.get_base_model().audio_encoder, fmt, device)

    def step(batch: dict) -> float:
        with phase("forward_loss"):
            loss = forward(batch)
        with phase("backward"):
            (scaler.scale(loss) if scaler else loss).backward()
        _sync(device)
        tick = time.perf_counter()
        with phase("optimizer"):
            if scaler:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            elif torch.isfinite(norm):
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - tick

    def forward(batch: dict) -> torch.Tensor:
        if arm.peer:  # the recipe: the HF forward computes T5, shifts the labels and returns the loss
            with autocast:
                return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        if arm.encode_audio:  # the original loop: tokens from raw audio, every step
            with autocast:
                codes = encode(batch.pop("audio"))
            valid = torch.ones(codes.shape[0], codes.shape[-1], dtype=torch.bool)
            ids, labels = delay_pattern_labels(codes, valid, delays, fmt.pad_token_id)
            batch.update(decoder_input_ids=ids.to(device), labels=labels.to(device))
        with autocast:
            return forward_loss(model, batch, text_cache)[0]

    return step


def recipe_labels(model, codes: np.ndarray, pad_token_id: int) -> torch.Tensor:
    """The HF recipe's labels for one clip's codes (K, T): a pad (= bos) column prepended,
    `build_delay_pattern_mask` + `apply_delay_pattern_mask`, the first step dropped; (T, K), with
    pad where codebook k is delayed (the HF loss ignores pad). The recipe keeps T steps, so the last
    k frames of codebook k are never targets (ours keeps them: T + K - 1 steps)."""
    decoder = model.decoder
    labels = torch.from_numpy(codes.astype(np.int64))
    labels = torch.cat([torch.full((labels.shape[0], 1), pad_token_id), labels], dim=-1)
    labels, mask = decoder.build_delay_pattern_mask(labels, pad_token_id, labels.shape[-1] + decoder.num_codebooks)
    labels = decoder.apply_delay_pattern_mask(labels, mask)
    return labels[:, 1:].T.contiguous()


def _loader(arm: Arm, setup: Setup, tokenizer, fmt, delays, total: int, peer_labels=None):
    """Pre-encoded windows through the real data path, (reference) raw audio padded per step, or
    (peer) the recipe's pre-built labels padded to the batch's longest clip. Every batch carries its
    useful (real, unpadded) audio seconds."""
    frames = round((arm.pad_seconds or setup.window_seconds) * fmt.frame_rate)
    if arm.peer:
        seconds = [codes.shape[-1] / fmt.frame_rate for _, codes, _ in setup.clips]
        captions = [caption for _, _, caption in setup.clips]
        dataset, collate = PeerClips(peer_labels, captions, seconds), PeerCollator(tokenizer)
    elif arm.encode_audio:
        dataset = RawClips(setup.clips, round(arm.pad_seconds * fmt.sample_rate), fmt.sample_rate)
        collate = RawCollator(tokenizer)
    else:
        clips = [Clip(codes, caption, f"clip{i}", f"{i}") for i, (_, codes, caption) in enumerate(setup.clips)]
        windows = TrainWindows(
            clips, frames=frames, pad_mode="zero_pad_legacy" if arm.pad_seconds else "tile",
            special_token_id=fmt.pad_token_id, seed=0, condition_dropout=0.1, silence_codes=setup.silence_codes,
        )
        # Tiled loops are real audio; legacy zero-padding is not.
        dataset = CountUseful(windows, fmt.frame_rate, padded=bool(arm.pad_seconds))
        collate = CountUsefulCollator(MusicgenCollator(tokenizer, delays=delays, special_token_id=fmt.pad_token_id))
    return torch.utils.data.DataLoader(
        dataset, batch_size=setup.batch_size, sampler=DrawSampler(0, total * setup.batch_size),
        collate_fn=collate, num_workers=arm.num_workers, pin_memory=setup.device == "cuda",
        persistent_workers=arm.num_workers > 0,
    )


class CountUseful(torch.utils.data.Dataset):
    """TrainWindows' examples with their real audio seconds (all of a window, or a legacy-padded
    window's clip part)."""

    def __init__(self, windows: TrainWindows, frame_rate: int, padded: bool):
        self.windows, self.frame_rate, self.padded = windows, frame_rate, padded

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, draw: int):
        frames = self.windows.frames
        if self.padded:
            frames = min(frames, self.windows._clip_for_draw(draw).codes.shape[-1])
        return self.windows[draw], frames / self.frame_rate


class CountUsefulCollator:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items) -> dict:
        batch = self.collate([example for example, _ in items])
        batch["useful_seconds"] = torch.tensor([seconds for _, seconds in items])
        return batch


class RawClips(torch.utils.data.Dataset):
    """The original data path: each clip's raw audio, zero-padded (or cut) to `samples`."""

    def __init__(self, clips: list, samples: int, sample_rate: int):
        self.clips, self.samples, self.sample_rate = clips, samples, sample_rate

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, draw: int):
        audio, _, caption = self.clips[draw % len(self.clips)]
        padded = np.zeros(self.samples, dtype=np.float32)
        real = min(len(audio), self.samples)
        padded[:real] = audio[:real]
        return torch.from_numpy(padded), caption, real / self.sample_rate


class RawCollator:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items) -> dict:
        text = self.tokenizer([caption for _, caption, _ in items], padding=True, return_tensors="pt")
        return {
            "audio": torch.stack([audio for audio, _, _ in items])[:, None],
            "input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
            "condition_mask": torch.ones(len(items), dtype=torch.long),
            "useful_seconds": torch.tensor([seconds for _, _, seconds in items]),
        }


class PeerClips(torch.utils.data.Dataset):
    """The recipe's dataset: whole clips, labels laid out once (its `datasets.map`)."""

    def __init__(self, labels: list, captions: list, seconds: list):
        self.labels, self.captions, self.seconds = labels, captions, seconds

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, draw: int):
        # Same clip order as the reference (draw order); the recipe shuffles, which pads alike on average.
        index = draw % len(self.labels)
        return self.labels[index], self.captions[index], self.seconds[index]


class PeerCollator:
    """The recipe's collator: captions padded, labels (T, K) padded with -100 to the longest clip."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items) -> dict:
        text = self.tokenizer([caption for _, caption, _ in items], padding=True, return_tensors="pt")
        labels = torch.nn.utils.rnn.pad_sequence([labels for labels, _, _ in items], batch_first=True, padding_value=-100)
        return {
            "input_ids": text["input_ids"], "attention_mask": text["attention_mask"], "labels": labels,
            "useful_seconds": torch.tensor([seconds for _, _, seconds in items]),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # glibc keeps freed heap memory (RSS would stay at the warm-up's peak): hand it back first. Then
    # writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux); where either
    # is unavailable the peak also covers the model build.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------------------------------------
# The parent: model + clips once, arms in alternation, summary


def prepare(args: Args, device: str) -> Setup:
    """Build the random model once (saved like a checkpoint folder, loaded by every arm through the
    real loading path), make the clips, and encode them once: the token cache's one-off work."""
    folder = random_model_folder(args.model_cache, args.arch)
    model, _ = model_lib.load_musicgen(str(folder))
    fmt = model_lib.audio_format(model)
    count = max(args.clips, args.batch_size)
    audio = [_clip_audio(i, seconds, fmt.sample_rate) for i, seconds in enumerate(clip_lengths(args, count))]
    cpu = torch.device("cpu")  # on CPU, so this process holds no GPU memory while the arms run
    encode = codec_encoder(model.audio_encoder, fmt, cpu)
    if args.regime == "fixed":
        codes = list(encode(torch.from_numpy(np.stack(audio))[:, None]).numpy())
    else:  # lengths differ: one clip at a time, as the recipe's encoding map does
        codes = [encode(torch.from_numpy(clip)[None, None])[0].numpy() for clip in audio]
    silence = data_setup.silence_codes(model, fmt, cpu)
    # Captions of equal token length: a batch's text shape never changes (no compile recompiles).
    captions = [f"drum loop {i % 6:02d}, {STYLES[i % 6].bpm:03d} bpm" for i in range(len(audio))]
    return Setup(
        args.arch, device, args.batch_size, args.window_seconds, args.steps, args.warmup, str(folder),
        list(zip(audio, [c.astype(np.int16) for c in codes], captions, strict=True)), silence, args.threads, args.regime,
    )


def random_model_folder(model_cache: Path, arch: str) -> Path:
    """`arch`'s architecture with random weights (seed 0), saved once under `model_cache` like a
    checkpoint folder (weights + the offline tokenizer), so runs load it through the real loading
    path; reused when already there (bf16_loss_curve.py trains on it too)."""
    folder = model_cache / f"musicgen-{arch}-random-seed0"
    if not (folder / "model.safetensors").exists() and not (folder / "model.safetensors.index.json").exists():
        model = model_lib.build_random_musicgen(arch)
        model.save_pretrained(folder)
        model_lib.tiny_tokenizer().save_pretrained(folder)
    return folder


def clip_lengths(args: Args, count: int) -> list[float]:
    """Seconds of each clip: all equal (fixed), or spread over --loop-seconds in a shuffled but
    deterministic order (loops), whole 0.1 s like an exported loop."""
    if args.regime == "fixed":
        return [args.clip_seconds or args.window_seconds] * count
    low, high = args.loop_seconds
    lengths = np.round(np.linspace(low, high, count), 1)
    return [float(x) for x in np.random.default_rng(0).permutation(lengths)]


def _clip_audio(index: int, seconds: float, rate: int) -> np.ndarray:
    loop = drum_loop(STYLES[index % len(STYLES)], index // len(STYLES), rate)
    samples = round(seconds * rate)
    return np.resize(loop, samples)  # the loop repeated to the clip length


def run_arm(arm: Arm, setup: Setup, isolate: bool) -> dict:
    if not isolate:
        return measure_arm(arm, setup)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure_arm, arm, setup).result()


def train_flops(decoder, batch: int, positions: int, text_tokens: float) -> float:
    """Model FLOPs of one LoRA training step of the decoder (see FLOP_MODEL)."""
    d, layers = decoder.hidden_size, decoder.num_hidden_layers
    per_position = layers * (4 * d * d + 2 * d * d + 2 * d * decoder.ffn_dim) + decoder.num_codebooks * d * decoder.vocab_size
    matmul = 2 * batch * (positions * per_position + text_tokens * layers * 2 * d * d)
    attention = 4 * layers * d * batch * positions * (positions + text_tokens)
    return 2 * matmul + 3 * attention


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype | None = None) -> float:
    """Dense matmul throughput of this device: bf16 8192^3 on GPU, 2048^3 on CPU (fp32 unless
    `dtype`) (best of 3)."""
    n, dtype, iters = (8192, torch.bfloat16, 50) if device.type == "cuda" else (2048, dtype or torch.float32, 5)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    _sync(device)
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start) / 1e12)
    del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best


def per_second(amounts: list[float], step_s: list[float]) -> float:
    """Amount per second: per median step when every step does the same work (robust to a slow
    outlier), else total over total time (the peer's batches differ in length)."""
    if len(set(amounts)) == 1:
        return amounts[0] / statistics.median(step_s)
    return sum(amounts) / sum(step_s)


def summarize(arm: Arm, raw: dict, setup: Setup, clip_seconds: float, peaks: dict[str, float]) -> dict:
    step = statistics.median(raw["step_s"])
    peak_tflops = peaks.get("bfloat16" if arm.precision == "bf16" else "float32", peaks.get("bfloat16"))
    decoder = model_lib.RANDOM_ARCHITECTURES[setup.arch]().decoder
    flops = [train_flops(decoder, setup.batch_size, p, t) for p, t in zip(raw["positions"], raw["text_tokens"], strict=True)]
    flops_per_s = per_second(flops, raw["step_s"])
    return {
        "arm": arm.name, "change": arm.change, "config": asdict(arm),
        "step_time_s": step, "step_times_s": raw["step_s"],
        # CPU time of the arm's process (all its threads): on a shared machine it moves less with load.
        "process_cpu_s_per_step": statistics.median(raw["cpu_s"]),
        "frames_per_s": per_second(raw["frames"], raw["step_s"]),
        "audio_s_per_s": per_second(raw["frames"], raw["step_s"]) / raw["frame_rate"],
        "useful_audio_s_per_s": per_second(raw["useful_s"], raw["step_s"]),
        "useful_audio_s_per_step": statistics.mean(raw["useful_s"]),
        "padded_positions_per_step": statistics.mean(raw["positions"]),
        "peak_memory_gb": raw["peak_memory_gb"],
        "data_fraction": statistics.median(d / s for d, s in zip(raw["data_s"], raw["step_s"], strict=True)),
        "optimizer_fraction": statistics.median(o / s for o, s in zip(raw["optim_s"], raw["step_s"], strict=True)),
        "model_tflops_per_step": statistics.mean(flops) / 1e12,
        "mfu": flops_per_s / (peak_tflops * 1e12) if peak_tflops else None,
    }


def main(args: Args, command: str = "(called from Python)") -> dict:
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    every = arms(device, args.reference_pad_seconds, args.cpu_bf16)
    chosen = [arm for arm in every if not args.arms or arm.name in args.arms]
    if not chosen:
        raise SystemExit(f"no arm named {args.arms}; choose from {[a.name for a in every]}")
    load_before = os.getloadavg()
    setup = prepare(args, device)
    # Each arm's MFU is against the peak of its own matmul dtype (on GPU, bf16 for every arm).
    dtypes = {"bfloat16"} if device == "cuda" else {"bfloat16" if arm.precision == "bf16" else "float32" for arm in chosen}
    peaks = {name: matmul_peak_tflops(torch.device(device), getattr(torch, name)) for name in sorted(dtypes)}
    loads: dict[str, list[float]] = {arm.name: [] for arm in chosen}
    results: dict[str, list[dict]] = {arm.name: [] for arm in chosen}
    errors: dict[str, str] = {}
    for round_index in range(args.rounds):
        for arm in (arm for arm in chosen if arm.name not in errors):
            loads[arm.name].append(os.getloadavg()[0])
            print(f"round {round_index + 1}/{args.rounds}: {arm.name} (load {loads[arm.name][-1]:.2f}) ...", flush=True)
            try:
                results[arm.name].append(run_arm(arm, setup, args.isolate))
            except Exception as error:  # an OOM or a broken option fails its row, not the run
                errors[arm.name] = f"{type(error).__name__}: {str(error)[:300]}"
    peaks = {name: max(peak, matmul_peak_tflops(torch.device(device), getattr(torch, name)))  # best of before and after
             for name, peak in peaks.items()}
    clip_seconds = args.clip_seconds or args.window_seconds
    rows = [
        {"arm": arm.name, "change": arm.change, "config": asdict(arm), "error": errors[arm.name]} if arm.name in errors
        else summarize(arm, _merge(results[arm.name]), setup, clip_seconds, peaks)
        for arm in chosen
    ]
    for row in rows:
        row["load_average_1min"] = loads[row["arm"]]
    by_name = {row["arm"]: row for row in rows if "error" not in row}
    if "reference" in by_name:
        for row in by_name.values():
            row["speedup_vs_reference"] = row["useful_audio_s_per_s"] / by_name["reference"]["useful_audio_s_per_s"]
    report = {
        "meta": _meta(args, device, setup, load_before, os.getloadavg(), clip_seconds),
        "matmul_peak_tflops": peaks.get("float32", peaks.get("bfloat16")),
        "matmul_peak_dtype": "float32" if "float32" in peaks else "bfloat16", "matmul_peaks_tflops": peaks,
        "flop_model": FLOP_MODEL, "rows": rows,
        "ours_over_reference": by_name["ours"].get("speedup_vs_reference") if "ours" in by_name else None,
        **{f"{arm}_over_{peer}": _ratio(by_name, arm, peer) for arm in ("ours", "ours_fp32") for peer in ("peer", "peer_lean")},
        "ours_precision": by_name["ours"]["config"]["precision"] if "ours" in by_name else None,
        "ours_over_reference_by_cpu_time": _cpu_time_ratio(by_name),
    }
    _write(report, args, device, command)
    return report


def _ratio(rows: dict, over: str, under: str) -> float | None:
    """Useful audio s/s of one arm over another's, where both ran."""
    if over not in rows or under not in rows:
        return None
    return rows[over]["useful_audio_s_per_s"] / rows[under]["useful_audio_s_per_s"]


def _cpu_time_ratio(rows: dict) -> float | None:
    """ours / reference in useful audio per process CPU second (a check that load did not skew it)."""
    if "ours" not in rows or "reference" not in rows:
        return None
    per_cpu_s = {name: rows[name]["useful_audio_s_per_s"] * rows[name]["step_time_s"] / rows[name]["process_cpu_s_per_step"]
                 for name in ("ours", "reference")}
    return per_cpu_s["ours"] / per_cpu_s["reference"]


def _merge(rounds: list[dict]) -> dict:
    """One arm's rounds as one: all timed steps, the highest peak memory."""
    merged = dict(rounds[-1])
    for key in ("step_s", "cpu_s", "data_s", "optim_s", "useful_s", "positions", "text_tokens", "frames"):
        merged[key] = [value for result in rounds for value in result[key]]
    merged["peak_memory_gb"] = max(result["peak_memory_gb"] for result in rounds)
    return merged



def _meta(args: Args, device: str, setup: Setup, load_before, load_after, clip_seconds: float) -> dict:
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "device": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__, "python": sys.version.split()[0],
        "load_average_before": load_before, "load_average_after": load_after,
        "clip_seconds": clip_seconds, "clips": len(setup.clips), "regime": args.regime,
        "clip_lengths_s": clip_lengths(args, len(setup.clips)), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "notes": (
            "useful audio s/s counts real audio only (the reference's zero-padding is not counted); "
            "captions are tokenized with ByT5's byte tokenizer (offline; T5-base's own tokenizer would give "
            "fewer text tokens); the reference keeps raw audio in memory (the original also decoded files)."
        ),
    }


def table(report: dict) -> str:
    peaks = report.get("matmul_peaks_tflops") or {report["matmul_peak_dtype"]: report["matmul_peak_tflops"]}
    mfu_header = "MFU" if list(peaks) == ["bfloat16"] else "MFU (vs the matmul peak of the arm's dtype)"
    lines = [
        f"| arm | change | step s | frames/s | useful audio s/s | x reference | peak mem GB | data % | optim % | {mfu_header} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['arm']} | {row['change']} | failed: {row['error']} |||||||")
            continue
        speedup = row.get("speedup_vs_reference")
        lines.append(
            f"| {row['arm']} | {row['change']} | {row['step_time_s']:.2f} | {row['frames_per_s']:.1f} | "
            f"{row['useful_audio_s_per_s']:.3f} | {f'{speedup:.2f}x' if speedup else '-'} | "
            f"{row['peak_memory_gb']:.2f} | {100 * row['data_fraction']:.1f} | {100 * row['optimizer_fraction']:.1f} | "
            f"{100 * row['mfu']:.1f}% |"
        )
    return "\n".join(lines)


def peer_summary(report: dict) -> str:
    """ours / peer and ours / peer_lean in useful audio s/s (n/a where an arm did not run), and the
    same for ours at fp32 where ours is bf16 (CPUs with native bf16)."""
    def fmt(value):
        return f"{value:.2f}x" if value else "n/a"
    line = (f"**ours ({report.get('ours_precision') or '?'}) / peer (HF recipe) = {fmt(report.get('ours_over_peer'))}**, "
            f"ours / peer_lean = {fmt(report.get('ours_over_peer_lean'))} in useful audio seconds per second.")
    if report.get("ours_fp32_over_peer") or report.get("ours_fp32_over_peer_lean"):
        line += (f" At equal precision (fp32): **ours_fp32 / peer_lean = {fmt(report.get('ours_fp32_over_peer_lean'))}**, "
                 f"ours_fp32 / peer = {fmt(report.get('ours_fp32_over_peer'))}.")
    return line


def _write(report: dict, args: Args, device: str, command: str) -> None:
    stem = args.name or f"train_throughput_{device}_{args.arch}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    meta = report["meta"]
    loads = [load for row in report["rows"] for load in row["load_average_1min"]]
    markdown = (
        f"# Training throughput: {args.arch} on {device} ({meta['device']})\n\n"
        f"`{command}`, regime {args.regime}, {meta['date']}, torch {meta['torch']}, {meta['torch_threads']} threads, "
        f"load average (1 min) {meta['load_average_before'][0]:.2f} before, {meta['load_average_after'][0]:.2f} after, "
        f"{min(loads):.2f} to {max(loads):.2f} at the arms' starts ({meta['cpu_count']} CPUs).\n"
        + (f"Batch {args.batch_size} x {args.window_seconds:g} s windows of {meta['clip_seconds']:g} s clips; "
           if args.regime == "fixed" else
           f"Batch {args.batch_size} x {args.window_seconds:g} s windows of {len(meta['clip_lengths_s'])} loops of "
           f"{args.loop_seconds[0]:g}-{args.loop_seconds[1]:g} s (the peer pads each batch to its longest loop); ")
        + f"reference padded to {args.reference_pad_seconds:g} s. Medians of {args.steps} steps x {args.rounds} rounds "
        f"after {args.warmup} warm-up step(s); measured matmul peak "
        + ", ".join(f"{tflops:.2f} TFLOP/s ({name})" for name, tflops in report["matmul_peaks_tflops"].items()) + "."
        f"\n\n{table(report)}\n\n"
        + (f"**ours / reference = {report['ours_over_reference']:.2f}x** in useful audio seconds per second"
           + (f" ({report['ours_over_reference_by_cpu_time']:.2f}x per process CPU second)" if device == "cpu" else "")
           + ".\n\n" if report["ours_over_reference"] else "")
        + f"{peer_summary(report)}\n\n"
        f"- {meta['notes']}\n- {report['flop_model']}\n"
    )
    (args.output_dir / f"{stem}.md").write_text(markdown)
    print(table(report))
    print(peer_summary(report))
    print(f"wrote {args.output_dir / stem}.json/.md")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__), "uv run benchmarks/train_throughput.py " + shlex.join(sys.argv[1:]))
