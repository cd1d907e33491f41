"""Does LoRA training in bf16 on a CPU follow the fp32 loss curve? Both runs, step by step.

On CPUs with native bf16 (AMX or AVX512-BF16) `--train.mixed-precision auto` trains in bf16 autocast
with bf16 frozen weights (LoRA weights stay fp32), about twice as fast as fp32. This benchmark trains
the same run twice through the product's entry point, `experiments/01_baseline.py` (which calls
`musicgen_lora.training.loop.train`), each arm in a fresh process: same seed, same tokens, same
windows and dropout masks, same everything except

  fp32   --train.mixed-precision no     (--model.dtype auto follows: fp32 frozen weights)
  bf16   --train.mixed-precision bf16   (--model.dtype auto follows: bf16 frozen weights)

and compares the per-step training loss and the validation losses that each run wrote to its
metrics.jsonl. On a CPU without native bf16 it says so and still runs bf16 (emulated, slowly).

Cases (--cases):
  smoke  `uv run experiments/01_baseline.py --smoke` as the README runs it (tiny random MusicGen,
         demo loops, batch 4 x 2 s, 30 steps at lr 2e-3), plus `--train.log-every 1` so the training
         loss is logged every step instead of as 5-step means (logging only reads the step's
         statistics and draws no random numbers: it changes nothing that is trained).
  small  musicgen-small's architecture with random weights (built in code and saved once as a
         checkpoint folder, as train_throughput.py does), the demo loops, the baseline's CONFIG
         (rank 16, lr 1e-4) with batch 2 x 10 s windows, 20 steps, 5 warm-up steps (the baseline's 50
         would outlast the run). To keep it to minutes on a CPU, samples are 0.1 s, generation
         metrics and W&B are off, and validation runs at the start and the end only. None of this
         touches the training loss: generation forks the RNG, validation runs in eval mode (no
         dropout) on fixed windows whose condition dropout comes from the dataset's own seeded RNG.

Tokens (--tokens). Both arms get `--data.cache-dir`: by default one cache, encoded by the fp32 arm
and read by the bf16 arm, so both train on the same codes. `--tokens own` lets each arm encode its
own, as a first run in that precision would, and reports how many codes differ; any difference fails
the comparison (the curves would then differ in data as well as precision). That check found a bug:
a bf16 load rounded the codec's weights (cast back to fp32 later, the rounding stayed), 96% of the
tiny codec's codes changed and a checkpoint folder got another codec id; the codec now loads in fp32
whatever the run's dtype (modeling/families.codec_kept_fp32), and `--tokens own` shows the codes equal.

Tolerance, fixed before any run (TRAIN_STEP_TOLERANCE, FINAL_TOLERANCE). bf16 keeps 8 significant
bits, so one rounding is off by at most u = 2^-8 = 0.39% of the value. Under autocast every matmul
rounds its inputs (weights and activations) to bf16, accumulates in fp32 and rounds its output; the
cross-entropy runs in fp32. An activation that passes a layer picks up a few such roundings, and
independent errors grow as the square root of their number: after musicgen-small's 24 decoder layers
about sqrt(24 x 2) x u = 2.7% per element, the worst case the loss could see from a single token. The
loss is a mean over thousands of tokens (smoke: 4 windows x 2 s x 50 Hz x 4 codebooks = 1,600;
small: 4,000), which cancels the independent part, so a correct bf16 path stays far inside that;
what does not cancel is a systematic error (a wrong cast, a LoRA update lost in bf16 weights, a bf16
loss) or a drift of the two trajectories, which grows with the steps. Hence:
  - every training step: |loss_bf16 - loss_fp32| / loss_fp32 <= 2% (about 5 u: the per-element
    worst case above, which a mean over >= 1,000 tokens should never reach), and
  - the last step's training loss and every validation loss (fixed held-out windows, no dropout):
    <= 1% (about 2.5 u: what a researcher reads off the end of a run must agree to within a few bf16
    roundings of the loss itself; 1% of a loss near 7 is 0.07 nats, a gap one sees on a curve).
A run that learns less than 1% of its loss (the random-weight models here) could pass these bars
even if bf16 learned nothing, so the report also gives how much each arm learned and their ratio.
Time per step of each arm is kept as a side note (it is not a speed benchmark: see train_throughput.py).

Run:
    uv run benchmarks/bf16_loss_curve.py --cases smoke                 # about 3.5 minutes on 2 cores
    uv run benchmarks/bf16_loss_curve.py --cases small                 # about 10 minutes on 2 cores
Each case writes reports/benchmarks/bf16_loss_curve_cpu_<case>.{md,json}.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

from musicgen_lora.data.tokens import load_codes, load_manifest
from musicgen_lora.helpers import load_experiment
from musicgen_lora.tracking.manifest import cpu_name, read_manifest
from musicgen_lora.training import builders

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO_ROOT / "experiments" / "01_baseline.py"

TRAIN_STEP_TOLERANCE = 0.02
"""Largest relative difference of the training loss allowed at any step (see the module docstring)."""
FINAL_TOLERANCE = 0.01
"""Largest relative difference allowed at the last training step and for every validation loss."""

ARMS = {
    # --model.dtype stays auto, so the frozen weights follow the autocast as in a real run.
    "fp32": ("--train.mixed-precision", "no"),
    "bf16": ("--train.mixed-precision", "bf16"),
}
EXPECTED_DECODER_WEIGHTS = {"fp32": ["float32"], "bf16": ["bfloat16"]}


@dataclass(frozen=True)
class Args:
    """Train the same run in fp32 and in bf16 on CPU and compare the loss curves; write reports/benchmarks/."""

    cases: tuple[Literal["smoke", "small"], ...] = ("smoke",)
    """Cases to run, each written to its own report (bf16_loss_curve_cpu_<case>.{md,json})."""
    steps: int | None = None
    """Training steps of every case (quick checks); None: the case's own (smoke 30, small --small-steps)."""
    small_arch: Literal["tiny", "small"] = "small"
    """Architecture of the small case (random weights); tiny only to check its code path quickly."""
    small_batch_size: int = 2
    small_window_seconds: float = 10.0
    small_steps: int = 20
    extra: str = ""
    """More experiments/01_baseline.py flags for both arms of every case, as one string (never the
    precision flags): --extra="--data.path ~/loops --lora.r 8"."""
    tokens: Literal["shared", "own"] = "shared"
    """shared: both arms read one token cache (<runs-dir>/<case>/tokens, encoded by the fp32 arm), so
    they train on the same tokens; a bf16 load whose codec differs from the fp32 one is refused
    there. own: each arm encodes the data into a fresh cache of its own, as a first run in that
    precision does; the report says how many codes differ."""
    isolate: bool = True
    """Each arm in a fresh process (`python experiments/01_baseline.py ...`); off: in this process
    (tests only: accelerate and torch keep process-wide state)."""
    runs_dir: Path = Path(".cache/musicgen-lora/bf16_loss_curve")
    """Run directories (<case>/<arm>), emptied before each arm so no run resumes another."""
    model_cache: Path = Path(".cache/musicgen-lora/benchmark")
    """Where the small case's random model is saved once (shared with train_throughput.py)."""
    output_dir: Path = Path("reports/benchmarks")


def case_flags(case: str, args: Args) -> list[str]:
    """The experiments/01_baseline.py flags both arms of a case share."""
    if case == "smoke":
        flags = ["--smoke", "--train.log-every", "1"]
        flags += ["--train.max-steps", str(args.steps)] if args.steps is not None else []
    else:
        shape = (
            f"--train.batch-size {args.small_batch_size} --data.window-seconds {args.small_window_seconds:g} "
            f"--train.max-steps {args.steps or args.small_steps} --optim.warmup-steps 5"
        )
        # Costs minutes on a CPU and leaves the training loss alone (module docstring).
        cheap = (
            "--train.eval-every 0 --sample.no-base-model --sample.seconds 0.1 --metrics.no-enabled "
            "--tracking.wandb disabled"
        )
        flags = ["--model.name", str(small_model(args)), *shape.split(), "--train.log-every", "1"]
        flags += cheap.split()
    return flags + shlex.split(args.extra)


def small_model(args: Args) -> Path:
    # Reuse train_throughput's builder: the same random weights, saved in the same place.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from train_throughput import random_model_folder
    finally:
        sys.path.pop(0)
    return random_model_folder(args.model_cache, args.small_arch)


# ---------------------------------------------------------------------------------------------
# One arm


class ArmFailed(RuntimeError):
    """One arm's training run did not complete."""


def run_arm(argv: list[str], run_dir: Path, isolate: bool) -> float:
    """Train one arm into a fresh `run_dir`; returns the wall time in seconds."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if isolate:
        log = run_dir.parent / f"{run_dir.name}.log"
        with log.open("w") as out:
            code = subprocess.run(
                [sys.executable, str(EXPERIMENT), *argv], stdout=out, stderr=subprocess.STDOUT
            ).returncode
        if code:
            tail = "\n".join(log.read_text().splitlines()[-20:])
            raise ArmFailed(
                f"{EXPERIMENT.name} {shlex.join(argv)} exited with {code}; last lines of {log}:\n{tail}\n"
                f"(a token cache 'encoded for another codec' means the bf16 load changed the codec: --tokens own "
                "trains each arm on its own tokens and reports how many differ)"
            )
    else:
        from musicgen_lora.training.experiment import main as experiment_main

        module = load_experiment(EXPERIMENT)
        code = experiment_main(module.CONFIG, module.VARIANTS, script=str(EXPERIMENT), argv=argv)
        if code:
            raise ArmFailed(f"{EXPERIMENT.name} {shlex.join(argv)} returned {code}")
    return time.perf_counter() - start


def read_curves(run_dir: Path) -> dict:
    """Training loss, step time and validation loss by step, from the run's metrics.jsonl."""
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    # Non-finite values are written as strings ("nan"): float() reads them back.
    pick = lambda key: {r["step"]: float(r[key]) for r in records if key in r}  # noqa: E731
    return {
        "train": pick("train/loss"),
        "step_time_s": pick("perf/step_time_s"),
        "val": pick("val/loss"),
    }


# ---------------------------------------------------------------------------------------------
# Comparison


def compare(fp32: dict[int, float], bf16: dict[int, float]) -> list[dict]:
    """Per step: both losses, the signed difference bf16 - fp32 and its size relative to fp32."""
    if sorted(fp32) != sorted(bf16):
        raise ValueError(f"the arms logged different steps: {sorted(fp32)} vs {sorted(bf16)}")
    return [
        {
            "step": step,
            "fp32": fp32[step],
            "bf16": bf16[step],
            "diff": bf16[step] - fp32[step],
            "rel_diff": abs(bf16[step] - fp32[step]) / abs(fp32[step]),
        }
        for step in sorted(fp32)
    ]


def verdict(train: list[dict], val: list[dict], tokens: dict) -> dict:
    """The bars of the module docstring; NaN anywhere fails (comparisons with NaN are false). The
    arms must also have trained on the same tokens, or the curves differ in data, not precision."""
    rel = [row["rel_diff"] for row in train]
    val_rel = [row["rel_diff"] for row in val]
    checks = {
        "same_tokens": tokens["identical"],
        "train_every_step": all(r <= TRAIN_STEP_TOLERANCE for r in rel),
        "train_final_step": bool(train) and train[-1]["rel_diff"] <= FINAL_TOLERANCE,
        "validation": all(r <= FINAL_TOLERANCE for r in val_rel),
    }
    return {
        "train_max_rel_diff": max(rel),
        "train_mean_rel_diff": statistics.fmean(rel),
        "train_mean_signed_diff": statistics.fmean(row["diff"] for row in train),
        "train_final_rel_diff": train[-1]["rel_diff"],
        "val_max_rel_diff": max(val_rel) if val_rel else None,
        "checks": checks,
        "passed": all(checks.values()),
    }


def token_dir(args: Args, case: str, arm: str) -> Path:
    return args.runs_dir / case / ("tokens" if args.tokens == "shared" else f"tokens-{arm}")


def compare_tokens(fp32_cache: Path, bf16_cache: Path) -> dict:
    """Whether both arms trained on the same codes: file by file from the two token caches."""
    if fp32_cache == bf16_cache:
        return {"identical": True, "codes_differing_fraction": 0.0, "caches": [str(fp32_cache)]}
    fp32 = {entry.source: entry for entry in load_manifest(fp32_cache)}
    bf16 = {entry.source: entry for entry in load_manifest(bf16_cache)}
    differing = total = 0
    for source in sorted(fp32.keys() & bf16.keys()):
        a, b = load_codes(fp32_cache, fp32[source]), load_codes(bf16_cache, bf16[source])
        total += max(a.size, b.size)
        differing += int((a != b).sum()) if a.shape == b.shape else max(a.size, b.size)
    return {
        "identical": fp32.keys() == bf16.keys() and differing == 0,
        "codes_differing_fraction": differing / total if total else None,
        "caches": [str(fp32_cache), str(bf16_cache)],
    }


def learning(train: list[dict], val: list[dict]) -> dict:
    """How much each arm learned: validation loss of the base model (step 0) minus the final one, and
    the mean training loss of the first 5 steps minus that of the last 5 (fewer in short runs; both
    arms see the same batches). Reported next to the bars because a run that learns less than the
    bars are wide could pass them without learning anything in bf16; the ratio shows what it did."""
    k = min(5, len(train) // 2) or 1  # steps averaged at each end
    out: dict = {"train_window_steps": k}
    has_base = len(val) > 1 and val[0]["step"] == 0
    for arm in ARMS:
        first = statistics.fmean(r[arm] for r in train[:k])
        last = statistics.fmean(r[arm] for r in train[-k:])
        out[arm] = {
            "train_drop": first - last,
            "val_drop": val[0][arm] - val[-1][arm] if has_base else None,
        }
    for key in ("train_drop", "val_drop"):
        fp32, bf16 = out["fp32"][key], out["bf16"][key]
        out[f"{key}_bf16_over_fp32"] = bf16 / fp32 if fp32 and bf16 is not None else None
    return out


def run_case(case: str, args: Args, command: str) -> dict:
    flags = case_flags(case, args)
    arms = {}
    for arm, precision in ARMS.items():
        run_dir = args.runs_dir / case / arm
        if args.tokens == "own":  # encoded afresh by this arm's own codec
            shutil.rmtree(token_dir(args, case, arm), ignore_errors=True)
        argv = [
            *flags,
            "--data.cache-dir",
            str(token_dir(args, case, arm)),
            *precision,
            "--output-dir",
            str(run_dir),
        ]
        load = os.getloadavg()[0]
        print(
            f"{case}/{arm}: uv run {EXPERIMENT.relative_to(REPO_ROOT)} {shlex.join(argv)} (load {load:.2f})",
            flush=True,
        )
        wall = run_arm(argv, run_dir, args.isolate)
        record = (read_manifest(run_dir) or {}).get("precision") or {}
        # The comparison means something only if each arm trained in the precision it claims.
        weights = (record.get("decoder_weights"), record.get("lora_weights"))
        if weights != (EXPECTED_DECODER_WEIGHTS[arm], ["float32"]):
            raise ArmFailed(f"{case}/{arm} trained in {record}, not {arm} with fp32 LoRA weights")
        arms[arm] = {
            "argv": argv,
            "command": f"uv run {EXPERIMENT.relative_to(REPO_ROOT)} {shlex.join(argv)}",
            "wall_s": wall,
            "load_average_1min_at_start": load,
            "precision": record,
            "run_dir": str(run_dir),
            **read_curves(run_dir),
        }
    train = compare(arms["fp32"]["train"], arms["bf16"]["train"])
    val = compare(arms["fp32"]["val"], arms["bf16"]["val"])
    tokens = compare_tokens(token_dir(args, case, "fp32"), token_dir(args, case, "bf16"))
    times = {arm: arms[arm]["step_time_s"] for arm in ARMS}
    for row in train:
        row.update({f"{arm}_step_s": times[arm].get(row["step"]) for arm in ARMS})
    medians = {arm: statistics.median(times[arm].values()) for arm in ARMS}
    report = {
        "case": case,
        "command": command,
        "meta": meta(args),
        "tolerance": {
            "train_every_step": TRAIN_STEP_TOLERANCE,
            "train_final_step": FINAL_TOLERANCE,
            "validation": FINAL_TOLERANCE,
            "relative_to": "fp32",
        },
        "tokens": {"mode": args.tokens, **tokens},
        "verdict": verdict(train, val, tokens),
        "learning": learning(train, val),
        "train": train,
        "val": val,
        "median_step_s": medians,
        "fp32_over_bf16_step_time": medians["fp32"] / medians["bf16"],
        "arms": {
            arm: {k: v for k, v in arms[arm].items() if k not in ("train", "val", "step_time_s")}
            for arm in ARMS
        },
    }
    write(report, args)
    return report


# ---------------------------------------------------------------------------------------------
# Report


def meta(args: Args) -> dict:
    native = builders.cpu_bf16_native()
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16_native": native,
        "bf16_note": "native bf16 (AMX or AVX512-BF16)"
        if native
        else "this CPU has no native bf16: the bf16 arm ran emulated (slower than fp32; the losses still compare)",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }



def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.3f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(report: dict) -> str:
    lines = [
        "| step | fp32 loss | bf16 loss | bf16 - fp32 | rel. diff | fp32 step s | bf16 step s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['step']} | {r['fp32']:.5f} | {r['bf16']:.5f} | {r['diff']:+.5f} | {_pct(r['rel_diff'])} | "
        f"{_seconds(r['fp32_step_s'])} | {_seconds(r['bf16_step_s'])} |"
        for r in report["train"]
    ]
    return "\n".join(lines)


def val_table(report: dict) -> str:
    lines = [
        "| step | fp32 val loss | bf16 val loss | bf16 - fp32 | rel. diff |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['step']}{' (base model, adapter off)' if r['step'] == 0 else ''} | {r['fp32']:.5f} | "
        f"{r['bf16']:.5f} | {r['diff']:+.5f} | {_pct(r['rel_diff'])} |"
        for r in report["val"]
    ]
    return "\n".join(lines)


def summary(report: dict) -> str:
    v, tol = report["verdict"], report["tolerance"]
    checks = v["checks"]
    mark = lambda ok: "pass" if ok else "FAIL"  # noqa: E731
    return (
        f"**{'PASS' if v['passed'] else 'FAIL'}**: training loss max relative difference {_pct(v['train_max_rel_diff'])} "
        f"(bar {_pct(tol['train_every_step'])} at every step: {mark(checks['train_every_step'])}), "
        f"mean {_pct(v['train_mean_rel_diff'])}, mean signed difference (bf16 - fp32) {v['train_mean_signed_diff']:+.5f}; "
        f"last step {_pct(v['train_final_rel_diff'])} (bar {_pct(tol['train_final_step'])}: {mark(checks['train_final_step'])}); "
        f"validation max {_pct(v['val_max_rel_diff'])} (bar {_pct(tol['validation'])}: {mark(checks['validation'])}); "
        + tokens_line(report["tokens"])
    )


def tokens_line(tokens: dict) -> str:
    if tokens["identical"]:
        where = "one token cache" if len(tokens["caches"]) == 1 else "identical token caches"
        return f"both arms trained on the same tokens ({where}: pass)."
    return (
        f"the arms trained on DIFFERENT tokens ({_pct(tokens['codes_differing_fraction'])} of the codes differ: "
        "FAIL): the bf16 load changed the codec, so the curves differ in data as well as in precision."
    )


def learning_line(report: dict) -> str:
    learned = report["learning"]
    ratio = lambda value: "n/a" if value is None else f"{value:.3f}"  # noqa: E731
    line = (
        f"What each arm learned (not a bar): training loss, mean of the first {learned['train_window_steps']} "
        f"steps minus the last {learned['train_window_steps']}: "
        f"fp32 {learned['fp32']['train_drop']:+.5f}, bf16 {learned['bf16']['train_drop']:+.5f} "
        f"(bf16 / fp32 = {ratio(learned['train_drop_bf16_over_fp32'])})"
    )
    if learned["fp32"]["val_drop"] is not None:
        line += (
            f"; validation loss, base model minus final: fp32 {learned['fp32']['val_drop']:+.5f}, "
            f"bf16 {learned['bf16']['val_drop']:+.5f} (bf16 / fp32 = {ratio(learned['val_drop_bf16_over_fp32'])})"
        )
        final_val = report["val"][-1]["fp32"]
        if abs(learned["fp32"]["val_drop"]) / final_val < report["tolerance"]["validation"]:
            line += (
                f". The run learned less than the {_pct(report['tolerance']['validation'])} bar is wide "
                f"({_pct(abs(learned['fp32']['val_drop']) / final_val)} of the validation loss): the bars alone would "
                "pass a bf16 run that learned nothing here, so read them together with this ratio"
            )
    return line + "."


def write(report: dict, args: Args) -> None:
    stem = f"bf16_loss_curve_cpu_{report['case']}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    m, arms, medians = report["meta"], report["arms"], report["median_step_s"]
    loads = ", ".join(f"{arm} {arms[arm]['load_average_1min_at_start']:.2f}" for arm in ARMS)
    markdown = (
        f"# bf16 vs fp32 loss curve on CPU: {report['case']}\n\n"
        f"`{report['command']}`, {m['date']}, torch {m['torch']}, {m['cpu']} ({m['cpu_count']} CPUs, "
        f"{m['torch_threads']} torch threads), {m['bf16_note']}.\n\n"
        "Both arms run `experiments/01_baseline.py` in a fresh process with the same flags and seed (the tokens: see below); "
        "only `--train.mixed-precision` differs (`no` vs `bf16`, `--model.dtype auto` following it). "
        "Losses are from each run's metrics.jsonl.\n\n"
        f"Tolerance (fixed before running, reasoned from bf16's 8 significant bits in the script's docstring): "
        f"|loss_bf16 - loss_fp32| / loss_fp32 <= {_pct(report['tolerance']['train_every_step'])} at every training step, "
        f"<= {_pct(report['tolerance']['train_final_step'])} at the last step and for every validation loss.\n\n"
        f"{summary(report)}\n\n{learning_line(report)}\n\n## Training loss, every step\n\n{table(report)}\n\n"
        f"## Validation loss\n\n{val_table(report)}\n\n"
        f"## Side note: time per step\n\nMedian step time fp32 {medians['fp32']:.3f} s, bf16 {medians['bf16']:.3f} s "
        f"(fp32 / bf16 = {report['fp32_over_bf16_step_time']:.2f}x), on a shared machine (1-minute load average at "
        f"each arm's start: {loads}): a side note, not a speed benchmark (see train_throughput.py).\n\n"
        "## Arms\n\n"
        + "".join(
            f"- {arm}: `{arms[arm]['command']}` ({arms[arm]['wall_s']:.0f} s wall); "
            f"{builders.precision_line(arms[arm]['precision'])}\n"
            for arm in ARMS
        )
    )
    (args.output_dir / f"{stem}.md").write_text(markdown)
    print(table(report))
    print(val_table(report))
    print(summary(report))
    print(learning_line(report))
    print(f"wrote {args.output_dir / stem}.json/.md")


def main(args: Args, command: str = "(called from Python)") -> dict[str, dict]:
    if {"--train.mixed-precision", "--model.dtype"} & {
        flag.split("=")[0] for flag in shlex.split(args.extra)
    }:
        raise SystemExit(
            "--extra must not set the precision: the arms differ in it and nothing else"
        )
    if not builders.cpu_bf16_native():
        print(
            "note: this CPU has no native bf16 (AMX or AVX512-BF16): the bf16 arm runs emulated, slowly",
            flush=True,
        )
    if (
        torch.cuda.is_available()
    ):  # the runs would train on the GPU: this compares CPU training only
        raise SystemExit("a GPU is visible: run with CUDA_VISIBLE_DEVICES= to compare CPU training")
    return {case: run_case(case, args, command) for case in dict.fromkeys(args.cases)}


if __name__ == "__main__":
    try:
        main(
            tyro.cli(Args, description=__doc__),
            "uv run benchmarks/bf16_loss_curve.py " + shlex.join(sys.argv[1:]),
        )
    except ArmFailed as failure:  # the message holds the run's own error: no traceback over it
        raise SystemExit(f"error: {failure}") from None
