"""Where one training step's time goes, arm by arm: phases, op categories and top ops (torch.profiler).

Made to answer "which parts of our step cost more than the HF recipe's": `ours_fp32` (the shipped
step at fp32) against `peer_lean` (the recipe without `enable_input_require_grads`) at equal
precision, with `ours` (the default precision) and `peer` beside them. Each arm is built exactly as
benchmarks/train_throughput.py builds it (`build_arm`: same model folder, clips, batch, window,
LoRA, optimizer and step function), each in a fresh process; it runs --warmup steps, then --steps
under torch.profiler (CPU activity, and CUDA on a GPU), with garbage collection paused as timeit
does.

Phases, wall time per step (timers at the phase boundaries, synchronised on CUDA):
  data       the loader's next batch and its move to the device (`train_throughput.next_batch`)
  forward    from the forward call (ours: `forward_loss`) to the last LM head's output: T5 (peer)
             or the cached-state lookup (ours), the decoder with LoRA, the heads
  loss       from the last LM head to the loss: stacking the heads' logits (HF, both arms), casts,
             cross-entropy, ours' per-codebook statistics and `add_stats`
  backward   `loss.backward()` (`accelerator.backward` for ours)
  optimizer  gradient clipping, finite checks, AdamW step, scheduler, zero_grad
The forward/loss boundary is a forward hook on the last LM head (no product code changes); what is
left of the step (context managers between phases) is reported as `unattributed`.

Op categories sum each profiler event's self CPU time (the events `prof.key_averages()` totals),
classified by name, by the phase it ran in, and by module ranges set with module hooks (T5, LoRA
dropout). A backward node counts where the forward op that created it counts (autograd sequence
numbers), so T5's and the LoRA dropout's backward join their forward. See CATEGORIES.

Run (the CPU comparison; about 5 minutes on 2 cores for musicgen-small):
    uv run benchmarks/step_profile.py --arch small --batch-size 2 --window-seconds 10 --warmup 1 --steps 2
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import torch
import tyro
from torch.profiler import ProfilerActivity, profile, record_function

from musicgen_lora.tracking.manifest import cpu_name


def _load_train_throughput():
    # benchmarks/ is not a package: load the sibling script under its own name, once (the tests do
    # the same), so a spawned arm process resolves the pickled Arm and Setup too.
    if "train_throughput" in sys.modules:
        return sys.modules["train_throughput"]
    path = Path(__file__).with_name("train_throughput.py")
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tt = _load_train_throughput()

PHASES = ("data", "forward", "loss", "backward", "optimizer")
# The step functions' phase names -> the reported phase (the statistics are part of the loss phase).
PHASE_OF = {
    "data": "data",
    "forward_loss": "forward",
    "statistics": "loss",
    "backward": "backward",
    "optimizer": "optimizer",
}
STEP_LABEL, PHASE_PREFIX = "step", "phase::"
T5_LABEL, DROPOUT_LABEL = "text_encoder", "lora_dropout"
OWN_LABELS = {STEP_LABEL, T5_LABEL, DROPOUT_LABEL}

CATEGORIES = {
    "matmul": "dense matmuls: aten::mm, addmm, bmm, linear, matmul (LM heads and LoRA's included)",
    "attention": "scaled_dot_product_attention and everything under it, forward and backward; softmax",
    "lora_dropout": "the LoRA layers' dropout modules (ours: FastLoraDropout; peer: nn.Dropout), "
    "forward and backward",
    "loss": "cross-entropy (log_softmax, nll_loss, gather) and the rest of the loss phase's ops "
    "(masks, per-codebook reductions), with their backward",
    "statistics": "ours' accuracy statistics (argmax, eq, & and their sum) and add_stats",
    "copies": "copies, casts and fills: copy_, to, _to_copy, contiguous, clone, cat, stack, zero_, "
    "fill_, zeros",
    "optimizer": "everything in the optimizer phase: clip (norms), finite checks, _foreach_* AdamW, "
    "zero_grad",
    "text_encoder": "T5 (module hooks), with its backward where the arm backpropagates into it",
    "data": "everything in the data phase: loader, collate, tokenizer, .to(device)",
    "framework": "time in no op: Python, module hooks, accelerate, the autograd engine's bookkeeping",
    "other": "everything else: layer norms, activations, residual adds, embeddings, views",
}

MATMUL_OPS = {"mm", "addmm", "bmm", "linear", "matmul", "baddbmm", "addmv", "mv", "dot"}
ATTENTION_OPS = {"softmax", "_softmax", "_softmax_backward_data"}
LOSS_OPS = {
    "cross_entropy_loss",
    "log_softmax",
    "_log_softmax",
    "_log_softmax_backward_data",
    "nll_loss",
    "nll_loss_nd",
    "nll_loss_forward",
    "nll_loss_backward",
    "nll_loss2d_forward",
    "gather",
}
COPY_OPS = {
    "copy_",
    "to",
    "_to_copy",
    "contiguous",
    "clone",
    "cat",
    "stack",
    "_copy_from",
    "_copy_from_and_resize",
    "zero_",
    "fill_",
    "zeros",
    "zeros_like",
    "new_zeros",
    "slice_backward",
    "select_backward",
}
BACKWARD_NODE = "autograd::engine::evaluate_function: "
# Which arms to compare, (ours, peer): at equal precision first.
PAIRS = (("ours_fp32", "peer_lean"), ("ours", "peer_lean"), ("ours", "peer"))


@dataclass(frozen=True)
class Args:
    """Profile the training step of each arm; write reports/benchmarks/step_profile_<device>_<arch>."""

    arch: Literal["tiny", "small"] = "small"
    """Model architecture, random weights: tiny (tests) or musicgen-small's."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 2
    window_seconds: float = 10.0
    regime: Literal["fixed", "loops"] = "fixed"
    """As in train_throughput.py: fixed (clips as long as the window) or loops (2-30 s clips)."""
    loop_seconds: tuple[float, float] = (2.0, 30.0)
    clip_seconds: float | None = None
    clips: int = 6
    warmup: int = 1
    """Unprofiled steps first (compile arms add 2)."""
    steps: int = 2
    """Profiled steps per arm."""
    plain_steps: int = 0
    """Steps after the profiled ones, timed without the profiler (its overhead)."""
    arms: tuple[str, ...] = ("ours_fp32", "peer_lean", "ours", "peer")
    """Arms (train_throughput's names); those this device does not have are skipped."""
    threads: int | None = None
    """torch threads per arm (None: torch's default)."""
    isolate: bool = True
    """Each arm in a fresh process; off only for tests."""
    top: int = 15
    """Ops listed per arm, by self CPU time."""
    output_dir: Path = Path("reports/benchmarks")
    model_cache: Path = Path(".cache/musicgen-lora/benchmark")
    name: str | None = None
    """Output file stem; None: step_profile_<device>_<arch>."""
    cpu_bf16: bool | None = None
    """As in train_throughput.py: on CPU, ours in bf16 with an ours_fp32 row (None: what
    --train.mixed-precision auto picks here)."""


class PhaseClock:
    """Wall time of each phase of the current step; each phase is also a profiler range
    `phase::<name>`, so ops can be told apart by phase."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times = dict.fromkeys(PHASES, 0.0)
        self._open = None  # (phase, profiler range, start)

    def reset(self) -> None:
        self.times = dict.fromkeys(PHASES, 0.0)

    def _begin(self, phase: str, label: str) -> None:
        tt._sync(self.device)
        span = record_function(PHASE_PREFIX + label)
        span.__enter__()
        self._open = (phase, span, time.perf_counter())

    def _end(self) -> None:
        phase, span, start = self._open
        tt._sync(self.device)
        self.times[phase] += time.perf_counter() - start
        span.__exit__(None, None, None)
        self._open = None

    @contextlib.contextmanager
    def __call__(self, name: str):
        phase = PHASE_OF[name]
        self._begin(phase, "statistics" if name == "statistics" else phase)
        try:
            yield
        finally:
            if self._open:
                self._end()

    def heads_done(self, *_) -> None:
        """Forward hook of the last LM head: the forward ends, the loss begins."""
        if self._open and self._open[0] == "forward":
            self._end()
            self._begin("loss", "loss")


def _annotate(module: torch.nn.Module, label: str) -> None:
    """Every call of `module` becomes a profiler range `label`."""
    spans = []

    def enter(*_):
        span = record_function(label)
        span.__enter__()
        spans.append(span)

    def leave(*_):
        spans.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


def instrument(model: torch.nn.Module, clock: PhaseClock) -> dict[str, int]:
    """Hooks: the forward/loss boundary after the last LM head, ranges around T5 and every LoRA
    dropout module. Returns how many of each were hooked."""
    counts = {"lm_head": 0, T5_LABEL: 0, DROPOUT_LABEL: 0}
    for module in model.modules():
        heads = getattr(module, "lm_heads", None)
        if isinstance(heads, torch.nn.ModuleList) and counts["lm_head"] == 0:
            heads[-1].register_forward_hook(clock.heads_done)
            counts["lm_head"] += 1
        encoder = getattr(module, "text_encoder", None)
        if isinstance(encoder, torch.nn.Module) and counts[T5_LABEL] == 0:
            _annotate(encoder, T5_LABEL)
            counts[T5_LABEL] += 1
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for dropout in dropouts.values():
                _annotate(dropout, DROPOUT_LABEL)
                counts[DROPOUT_LABEL] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# Inside one arm's process


def profile_arm(arm, setup, steps: int, plain_steps: int, top: int) -> dict:
    """Build the arm as train_throughput does, warm up, profile `steps` steps; phases, categories,
    top ops."""
    device = torch.device(setup.device)
    clock = PhaseClock(device)
    built = tt.build_arm(arm, setup, clock)
    hooked = instrument(built.model, clock)
    batches = iter(built.loader)
    for _ in range(built.total - steps - plain_steps):
        _run_step(built, batches, clock)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # As timeit does: a garbage collection pause would land in whichever phase it hit.
    gc.collect()
    gc.disable()
    try:
        with profile(activities=activities) as prof:
            profiled = [_run_step(built, batches, clock) for _ in range(steps)]
        plain = [_run_step(built, batches, clock) for _ in range(plain_steps)]
    finally:
        gc.enable()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    categories, device_categories, by_op, by_phase = categorize(events)
    step_ms, phases_ms = _means(profiled)
    plain_ms, plain_phases_ms = _means(plain) if plain else (None, None)
    return {
        "arm": arm.name,
        "change": arm.change,
        "config": asdict(arm),
        "hooked": hooked,
        "positions": profiled[0]["positions"],
        "step_ms": step_ms,
        "step_ms_each": [s["step_s"] * 1e3 for s in profiled],
        "phases_ms": phases_ms,
        "phases_ms_each": [{p: s["phases_s"][p] * 1e3 for p in PHASES} for s in profiled],
        "unattributed_ms": step_ms - sum(phases_ms.values()),
        "plain_step_ms": plain_ms,
        "plain_phases_ms": plain_phases_ms,
        "categories_ms": {c: categories[c] / 1e3 / steps for c in CATEGORIES},
        "device_categories_ms": {c: device_categories[c] / 1e3 / steps for c in CATEGORIES}
        if device.type == "cuda"
        else None,
        "profiled_cpu_ms": sum(categories.values()) / 1e3 / steps,
        "phase_categories_ms": {
            phase: {c: ms / 1e3 / steps for c, ms in cats.items()}
            for phase, cats in by_phase.items()
        },
        "top_ops": _top_ops(prof, by_op, steps, step_ms, top),
        "ops_ms": {name: sum(cats.values()) / 1e3 / steps for name, cats in by_op.items()},
        "threads": torch.get_num_threads(),
    }


def _means(steps: list[dict]) -> tuple[float, dict[str, float]]:
    """Mean step time and mean time of each phase, in ms."""
    step_ms = statistics.mean(s["step_s"] for s in steps) * 1e3
    return step_ms, {p: statistics.mean(s["phases_s"][p] for s in steps) * 1e3 for p in PHASES}


def _run_step(built, batches, clock: PhaseClock) -> dict:
    clock.reset()
    with record_function(STEP_LABEL):
        tt._sync(built.device)
        start = time.perf_counter()
        with clock("data"):
            batch, _ = tt.next_batch(batches, built.device)
        built.step(batch)
        tt._sync(built.device)
        elapsed = time.perf_counter() - start
    return {
        "step_s": elapsed,
        "phases_s": dict(clock.times),
        "positions": int(batch["labels"].shape[1]),
    }


def _op(name: str) -> str:
    return name.removeprefix("aten::")


def categorize(events: list) -> tuple[dict, dict, dict, dict]:
    """Self CPU (and device) time per category, in µs over all profiled steps; per op name and per
    phase, the µs in each category."""
    info = {id(e): _context(e) for e in events}
    _mark_statistics(info)
    # The forward op that created each autograd node: the last one (by start) to see its sequence
    # number; a backward node carries its creator's number.
    creators = {}
    for event in sorted(events, key=lambda e: e.time_range.start):
        ctx = info[id(event)]
        if event.sequence_nr >= 0 and ctx["node"] is None and ctx["phase"] in ("forward", "loss"):
            creators[event.sequence_nr] = ctx
    cpu, device = defaultdict(float), defaultdict(float)
    by_op, by_phase = (
        defaultdict(lambda: defaultdict(float)),
        defaultdict(lambda: defaultdict(float)),
    )
    for event in events:
        category = _category(event, info[id(event)], creators)
        cpu[category] += event.self_cpu_time_total
        phase = info[id(event)]["phase"] or "unattributed"
        by_phase["loss" if phase == "statistics" else phase][category] += event.self_cpu_time_total
        device[category] += getattr(event, "self_device_time_total", 0.0)
        if event.name not in OWN_LABELS and not event.name.startswith(PHASE_PREFIX):
            by_op[event.name][category] += event.self_cpu_time_total
    return cpu, device, by_op, by_phase


def _context(event) -> dict:
    """What encloses an event: its phase, the module ranges, the backward node, SDPA, and (in the
    loss phase) the op directly under the phase range."""
    ctx = {
        "phase": None,
        "t5": False,
        "dropout": False,
        "sdpa": False,
        "node": None,
        "loss_top": None,
    }
    child, current = None, event
    while current is not None:
        name = current.name
        if name.startswith(PHASE_PREFIX) and ctx["phase"] is None:
            ctx["phase"] = name.removeprefix(PHASE_PREFIX)
            ctx["loss_top"] = child
        elif name == T5_LABEL:
            ctx["t5"] = True
        elif name == DROPOUT_LABEL:
            ctx["dropout"] = True
        elif "scaled_dot_product" in name or "ScaledDotProduct" in name:
            ctx["sdpa"] = True
        if name.startswith(BACKWARD_NODE) and ctx["node"] is None:
            ctx["node"] = current
        child, current = current, current.cpu_parent
    return ctx


def _mark_statistics(info: dict) -> None:
    """Ours computes its accuracy statistics after the loss, starting with the argmax over the
    logits: in each step's loss phase, that op and every later op directly in the phase (with what
    runs under them) are statistics. The peer computes none."""
    steps = defaultdict(dict)  # loss-phase range -> the ops directly in it
    for ctx in info.values():
        top = ctx["loss_top"]
        if ctx["phase"] == "loss" and top is not None:
            steps[id(top.cpu_parent)][id(top)] = top
    marked = set()
    for tops in steps.values():
        ordered = sorted(tops.values(), key=lambda e: e.time_range.start)
        first = next((i for i, e in enumerate(ordered) if _op(e.name) == "argmax"), len(ordered))
        marked.update(id(e) for e in ordered[first:])
    for ctx in info.values():
        ctx["statistics"] = ctx["phase"] == "loss" and id(ctx["loss_top"]) in marked


def _category(event, ctx: dict, creators: dict) -> str:
    name, phase = event.name, ctx["phase"]
    if phase in ("data", "optimizer"):
        return phase
    node = ctx["node"]
    creator = creators.get(node.sequence_nr) if node is not None else None
    if ctx["t5"] or (creator and creator["t5"]):
        return "text_encoder"
    if ctx["dropout"] or (creator and creator["dropout"]) or (node and "MaskScale" in node.name):
        return DROPOUT_LABEL
    if phase == "statistics" or ctx["statistics"]:
        return "statistics"
    if name in OWN_LABELS or name.startswith(PHASE_PREFIX) or name.startswith(BACKWARD_NODE):
        return "framework"
    op = _op(name)
    if ctx["sdpa"] or op in ATTENTION_OPS or "scaled_dot_product" in op:
        return "attention"
    if op in LOSS_OPS:
        return "loss"
    if op in MATMUL_OPS:
        return "matmul"
    if op in COPY_OPS:
        return "copies"
    if phase == "loss" or (creator and creator["phase"] == "loss"):
        return "loss"
    return "other"


def _top_ops(prof, by_op: dict, steps: int, step_ms: float, top: int) -> list[dict]:
    rows = []
    for average in prof.key_averages():
        if average.key in OWN_LABELS or average.key.startswith(PHASE_PREFIX):
            continue
        self_ms = average.self_cpu_time_total / 1e3 / steps
        cats = by_op.get(average.key, {})
        rows.append(
            {
                "op": average.key,
                "self_cpu_ms": self_ms,
                "pct_of_step": 100 * self_ms / step_ms,
                "calls": average.count / steps,
                "category": max(cats, key=cats.get) if cats else "other",
                "self_device_ms": getattr(average, "self_device_time_total", 0.0) / 1e3 / steps,
            }
        )
    return sorted(rows, key=lambda r: -r["self_cpu_ms"])[:top]


def run_arm(arm, setup, args: Args) -> dict:
    if not args.isolate:
        return profile_arm(arm, setup, args.steps, args.plain_steps, args.top)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(profile_arm, arm, setup, args.steps, args.plain_steps, args.top).result()


# ---------------------------------------------------------------------------------------------
# The parent: one Setup, each arm in turn, the report


def bench_args(args: Args) -> tt.Args:
    """train_throughput's arguments for the same setup; its step count covers every step run here."""
    shared = (
        "arch",
        "device",
        "batch_size",
        "window_seconds",
        "regime",
        "loop_seconds",
        "clip_seconds",
        "clips",
        "warmup",
        "threads",
        "isolate",
        "model_cache",
        "cpu_bf16",
    )
    return replace(
        tt.Args(),
        **{f: getattr(args, f) for f in shared},
        steps=args.steps + args.plain_steps,
        rounds=1,
    )


def main(args: Args, command: str = "(called from Python)") -> dict:
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    every = {
        arm.name: arm for arm in tt.arms(device, tt.Args().reference_pad_seconds, args.cpu_bf16)
    }
    chosen = [every[name] for name in args.arms if name in every]
    skipped = [name for name in args.arms if name not in every]
    if not chosen:
        raise SystemExit(f"no arm named {args.arms}; choose from {list(every)}")
    load_before = os.getloadavg()
    setup = tt.prepare(bench_args(args), device)
    rows = []
    for arm in chosen:
        load = os.getloadavg()[0]
        print(f"{arm.name} (load {load:.2f}) ...", flush=True)
        try:
            row = run_arm(arm, setup, args)
        except Exception as error:  # one arm's failure leaves the others' rows
            row = {
                "arm": arm.name,
                "change": arm.change,
                "error": f"{type(error).__name__}: {str(error)[:300]}",
            }
        row["load_average_1min"] = load
        rows.append(row)
    report = {
        "meta": {
            "command": command,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
            "device": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "skipped_arms": skipped,
        },
        "phases": {
            "data": "next batch + .to(device)",
            "forward": "model call to the last LM head's output (T5 or the cached lookup, decoder, heads)",
            "loss": "last LM head to the loss: logits stacking and casts, cross-entropy, statistics",
            "backward": "loss.backward()",
            "optimizer": "clip, finite checks, optimizer and scheduler step, zero_grad",
        },
        "categories": CATEGORIES,
        "rows": rows,
        "differences": differences(rows),
    }
    write(report, args, device)
    return report


def differences(rows: list[dict]) -> list[dict]:
    """Ours minus the peer's arm, per phase, category and op (ms per step), for each pair that ran."""
    by_name = {row["arm"]: row for row in rows if "error" not in row}
    out = []
    for ours, peer in PAIRS:
        if ours not in by_name or peer not in by_name:
            continue
        a, b = by_name[ours], by_name[peer]

        def delta(key, a=a, b=b):
            keys = dict.fromkeys([*a[key], *b[key]])
            diffs = {k: a[key].get(k, 0.0) - b[key].get(k, 0.0) for k in keys}
            return dict(sorted(diffs.items(), key=lambda item: -abs(item[1])))

        ops = delta("ops_ms")
        out.append(
            {
                "ours": ours,
                "peer": peer,
                "step_ms": a["step_ms"] - b["step_ms"],
                "ratio": a["step_ms"] / b["step_ms"],
                "precision": (a["config"]["precision"], b["config"]["precision"]),
                "positions": (a["positions"], b["positions"]),
                "phases_ms": delta("phases_ms"),
                "categories_ms": delta("categories_ms"),
                "ops_ms": dict(list(ops.items())[:10]),
            }
        )
    return out


def _ms(value: float, step: float) -> str:
    return f"{value:.1f} ({100 * value / step:.0f}%)" if step else f"{value:.1f}"


def tables(report: dict) -> tuple[str, str]:
    rows = [row for row in report["rows"] if "error" not in row]
    head = (
        "| | " + " | ".join(row["arm"] for row in rows) + " |\n|---|" + "---:|" * len(rows) + "\n"
    )
    phases = head + "".join(
        f"| {phase} | "
        + " | ".join(_ms(row["phases_ms"][phase], row["step_ms"]) for row in rows)
        + " |\n"
        for phase in PHASES
    )
    phases += (
        "| unattributed | "
        + " | ".join(_ms(row["unattributed_ms"], row["step_ms"]) for row in rows)
        + " |\n"
    )
    phases += "| **step** | " + " | ".join(f"**{row['step_ms']:.1f}**" for row in rows) + " |\n"
    if any(row["plain_step_ms"] for row in rows):
        phases += (
            "| step without profiler | "
            + " | ".join(
                f"{row['plain_step_ms']:.1f}" if row["plain_step_ms"] else "-" for row in rows
            )
            + " |\n"
        )
    phases += "| decoder positions | " + " | ".join(str(row["positions"]) for row in rows) + " |\n"
    categories = head + "".join(
        f"| {category} | "
        + " | ".join(_ms(row["categories_ms"][category], row["step_ms"]) for row in rows)
        + " |\n"
        for category in CATEGORIES
    )
    categories += (
        "| **profiled CPU time** | "
        + " | ".join(f"**{_ms(row['profiled_cpu_ms'], row['step_ms'])}**" for row in rows)
        + " |\n"
    )
    if any(row.get("device_categories_ms") for row in rows):
        categories += (
            "\nSelf device (CUDA) time, ms per step:\n\n"
            + head
            + "".join(
                f"| {category} | "
                + " | ".join(
                    f"{(row['device_categories_ms'] or {}).get(category, 0.0):.1f}" for row in rows
                )
                + " |\n"
                for category in CATEGORIES
            )
        )
    return phases, categories


def top_tables(report: dict) -> str:
    parts = []
    for row in report["rows"]:
        if "error" in row:
            parts.append(f"### {row['arm']}\n\nfailed: {row['error']}\n")
            continue
        lines = [
            f"### {row['arm']} ({row['step_ms']:.1f} ms per step)\n",
            "| op | category | self CPU ms/step | % of step | calls/step |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{op['op']}` | {op['category']} | {op['self_cpu_ms']:.2f} | {op['pct_of_step']:.1f} | {op['calls']:g} |"
            for op in row["top_ops"]
        ]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def difference_text(report: dict) -> str:
    if not report["differences"]:
        return "No pair of ours and a peer arm ran.\n"
    parts = []
    for diff in report["differences"]:
        verdict = "slower" if diff["step_ms"] > 0 else "faster"
        lines = [
            f"### {diff['ours']} ({diff['precision'][0]}) vs {diff['peer']} ({diff['precision'][1]})\n",
            f"{diff['ours']} is **{abs(diff['step_ms']):.1f} ms per step {verdict}** "
            f"({diff['ratio']:.3f}x the step time; decoder positions {diff['positions'][0]} vs {diff['positions'][1]}).\n",
            "- Phases (ours - peer, ms/step): "
            + ", ".join(f"{k} {v:+.1f}" for k, v in diff["phases_ms"].items()),
            "- Categories (ours - peer, ms/step): "
            + ", ".join(f"{k} {v:+.1f}" for k, v in diff["categories_ms"].items()),
            "- Costlier in ours: "
            + (
                ", ".join(f"{k} (+{v:.1f})" for k, v in diff["categories_ms"].items() if v > 0)
                or "nothing"
            ),
            "- Ops with the largest differences (self CPU, ms/step): "
            + ", ".join(f"`{k}` {v:+.1f}" for k, v in diff["ops_ms"].items()),
        ]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write(report: dict, args: Args, device: str) -> None:
    stem = args.name or f"step_profile_{device}_{args.arch}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    meta = report["meta"]
    phases, categories = tables(report)
    category_notes = "\n".join(f"- **{name}**: {text}" for name, text in CATEGORIES.items())
    phase_notes = "\n".join(f"- **{name}**: {text}" for name, text in report["phases"].items())
    markdown = (
        f"# Training step profile: {args.arch} on {device} ({meta['device']})\n\n"
        f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, {meta['torch_threads']} threads "
        f"({meta['cpu_count']} CPUs), load average (1 min) {meta['load_average_before'][0]:.2f} before, "
        f"{meta['load_average_after'][0]:.2f} after. Batch {args.batch_size} x {args.window_seconds:g} s, "
        f"regime {args.regime}; {'each arm in a fresh process' if args.isolate else 'arms in one process'}, "
        f"{args.warmup} warm-up step(s), then means over {args.steps} profiled step(s).\n\n"
        f"## Phases, ms per step (% of the step)\n\n{phases}\n{phase_notes}\n\n"
        f"## Op categories, self CPU ms per step (% of the step)\n\n{categories}\n{category_notes}\n\n"
        f"## Where ours differs from peer_lean\n\n{difference_text(report)}\n"
        f"## Top {args.top} ops by self CPU time\n\n{top_tables(report)}\n"
        "Wall times are measured under the profiler, which adds a little per op"
        + (
            " (compare 'step without profiler')."
            if args.plain_steps
            else " (--plain-steps N measures it)."
        )
        + "\n"
    )
    (args.output_dir / f"{stem}.md").write_text(markdown)
    print(phases)
    print(categories)
    print(difference_text(report))
    print(f"wrote {args.output_dir / stem}.json/.md")


if __name__ == "__main__":
    main(
        tyro.cli(Args, description=__doc__),
        "uv run benchmarks/step_profile.py " + shlex.join(sys.argv[1:]),
    )
