"""The numbers behind `musicgen-lora report`: which runs count, how they group, what each run measured.

Runs group by (experiment, variant, configuration without the seed and without the fields that do
not change results); the world size from the manifest counts as configuration. Within a group one
run per seed counts (the latest complete one); the others are duplicates, listed and left out. A
variant's runs whose configuration differs from its main group (the one with the most seeds) form
their own group, labelled with the differing fields. Runs that did not complete are listed apart
with their outcome; a manifest that still says "running" while nobody holds the run directory's
lock is a killed run ("killed (stale)"). Every statistic counts only the runs that have its metric.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musicgen_lora.helpers import flatten
from musicgen_lora.tracking.run_lock import LOCK_FILE, pid_alive

GENERATION_METRICS = ("gen/fad", "gen/fad_clap", "gen/clap")
# Fields that never change a run's results: where it writes, how it is tracked, what it samples
# for listening, how often it logs / checkpoints, and I/O settings.
IGNORED_FIELDS = ("experiment", "variant", "seed", "output_dir")
IGNORED_PREFIXES = ("tracking.", "sample.")
IGNORED_DOTTED = (
    "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
    "train.resume", "train.allow_cpu", "data.cache_dir", "data.num_workers", "data.encode_batch_size",
)


@dataclass
class Run:
    """One run's metrics, from a run directory or a W&B run."""

    name: str
    experiment: str
    variant: str
    seed: int
    records: list[dict]
    """{"step", "time", metric: value, ...}, as in metrics.jsonl."""
    smoke: bool = False
    outcome: str | None = None
    url: str | None = None
    wandb_id: str | None = None
    source: str = ""
    manifest: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


# ---- outcome ------------------------------------------------------------------------------------


def lock_held(run_dir: Path) -> bool | None:
    """Whether a live process holds run_dir/run.lock (None: no lock file to ask)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        try:  # a shared probe: refused exactly while the trainer holds its exclusive lock
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            return _owner_alive(handle.read())  # no flock on this filesystem: ask for the pid
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _owner_alive(text: str) -> bool:
    try:
        pid = int(json.loads(text or "{}").get("pid") or 0)
    except (ValueError, AttributeError):
        return False
    return pid > 0 and pid_alive(pid)


def outcome(run: Run) -> str:
    """completed / failed / interrupted / running / "killed (stale)" (running, nobody holds the lock)."""
    if run.outcome is None:
        return "completed" if run.records else "no metrics"
    if run.outcome != "running" or not Path(run.source).is_dir():
        return run.outcome
    return "running" if lock_held(Path(run.source)) else "killed (stale)"


# ---- configuration ------------------------------------------------------------------------------


def result_config(run: Run) -> dict:
    """The configuration fields that can change results (dotted keys), world size included."""
    # A W&B run's config also holds its manifest and W&B's own keys: neither is configuration.
    flat = {k: v for k, v in flatten(run.config).items() if not k.startswith(("manifest.", "_"))}
    kept = {
        key: value for key, value in flat.items()
        if key not in IGNORED_FIELDS and key not in IGNORED_DOTTED and not key.startswith(IGNORED_PREFIXES)
    }
    kept["world_size"] = int(run.manifest.get("world_size") or 1)
    return kept


def config_hash(run: Run) -> str:
    return hashlib.sha256(json.dumps(result_config(run), sort_keys=True, default=str).encode()).hexdigest()[:10]


def config_diff(config: dict, reference: dict) -> dict[str, tuple]:
    """{field: (value here, value in the reference)} for every field that differs."""
    keys = sorted(set(config) | set(reference))
    return {k: (config.get(k), reference.get(k)) for k in keys if config.get(k) != reference.get(k)}


# ---- grouping -----------------------------------------------------------------------------------


@dataclass
class Group:
    """Runs of one variant with one configuration, one per seed."""

    label: str
    variant: str
    runs: list[Run]
    differs: dict[str, tuple] = field(default_factory=dict)
    """Fields that differ from the variant's main group: {field: (here, main)}; empty for the main group."""


@dataclass
class Selection:
    groups: list[Group]
    duplicates: list[tuple[Run, Run]]
    """(run left out, the run of the same seed and configuration that counts)."""
    unfinished: list[tuple[Run, str]]
    """(run, outcome) of the runs that did not complete."""


def _recency(run: Run) -> tuple:
    """Sort key: complete runs before unfinished ones (with --include-unfinished), then the newest."""
    complete = run.outcome in ("completed", None)
    return (complete, run.manifest.get("end_time") or "", run.manifest.get("start_time") or "", run.name)


def one_per_seed(runs: list[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """The latest run of each seed (sorted by seed), and (duplicate, kept run) pairs."""
    by_seed: dict[int, list[Run]] = {}
    for run in runs:
        by_seed.setdefault(run.seed, []).append(run)
    kept, duplicates = [], []
    for seed in sorted(by_seed):
        ordered = sorted(by_seed[seed], key=_recency, reverse=True)
        kept.append(ordered[0])
        duplicates += [(run, ordered[0]) for run in ordered[1:]]
    return kept, duplicates


def _label(variant: str, differs: dict[str, tuple]) -> str:
    if not differs:
        return variant
    return f"{variant} [" + ", ".join(f"{k}={here}" for k, (here, _) in differs.items()) + "]"


def variant_groups(variant: str, runs: list[Run]) -> tuple[list[Group], list[tuple[Run, Run]]]:
    """The variant's configurations, main group (most seeds, then newest) first."""
    by_hash: dict[str, list[Run]] = {}
    for run in runs:
        by_hash.setdefault(config_hash(run), []).append(run)
    deduplicated, duplicates = {}, []
    for key, members in by_hash.items():
        deduplicated[key], dropped = one_per_seed(members)
        duplicates += dropped
    ordered = sorted(deduplicated.values(), key=lambda rs: (len(rs), max(_recency(r) for r in rs)), reverse=True)
    main = result_config(ordered[0][0])
    groups = []
    for members in ordered:
        differs = config_diff(result_config(members[0]), main)
        groups.append(Group(_label(variant, differs), variant, members, differs))
    return groups, duplicates


def select_runs(runs: list[Run], order: list[str] | None = None, include_unfinished: bool = False) -> Selection:
    """Groups (variants in `order`, then alphabetically), duplicates and unfinished runs."""
    outcomes = [(run, outcome(run)) for run in runs]
    used = [run for run, state in outcomes if state == "completed" or (include_unfinished and state != "no metrics")]
    unfinished = [(run, state) for run, state in outcomes if state != "completed"]
    variants: dict[str, list[Run]] = {}
    for run in used:
        variants.setdefault(run.variant, []).append(run)
    names = [v for v in (order or []) if v in variants] + sorted(v for v in variants if v not in (order or []))
    groups, duplicates = [], []
    for name in names:
        found, dropped = variant_groups(name, variants[name])
        groups += found
        duplicates += dropped
    return Selection(groups, duplicates, unfinished)


# ---- one run's numbers --------------------------------------------------------------------------


def number(value) -> float:
    try:
        return float(value)  # non-finite values are stored as the strings "nan" / "inf"
    except (TypeError, ValueError):
        return math.nan


def training_times(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(log steps, cumulative training seconds): each train log's median step time times the steps
    since the previous log. Evaluation, sampling, checkpoints and model loading are not in it."""
    steps, seconds, previous, total = [0], [0.0], 0, 0.0
    for record in records:
        step_time = number(record.get("perf/step_time_s"))
        if math.isnan(step_time) or record["step"] <= previous:
            continue
        total += step_time * (record["step"] - previous)
        previous = record["step"]
        steps.append(previous)
        seconds.append(total)
    return np.array(steps), np.array(seconds)


def training_time_at(records: list[dict], steps) -> np.ndarray:
    """Training seconds at each of `steps` (linear between logs, held after the last one)."""
    known_steps, known_seconds = training_times(records)
    return np.interp(np.asarray(steps, dtype=float), known_steps, known_seconds)


def _evaluations(records: list[dict]) -> tuple[list[dict], float]:
    """(the adapter's evaluations, after step 0; the base model's validation loss or NaN)."""
    evals = [r for r in records if "val/loss" in r]
    base = [number(r["val/loss_base"]) for r in records if "val/loss_base" in r]
    base += [number(r["val/loss"]) for r in evals if r["step"] == 0]
    return [r for r in evals if r["step"] > 0], (base[0] if base else math.nan)


def run_summary(run: Run) -> dict[str, float]:
    """The run's metrics that it has (never NaN for a metric it did not log): final and best val
    loss, improvement over the base model, per-codebook val CE at the last evaluation, generation
    metrics, median tokens/s, training time and wall time."""
    evals, base = _evaluations(run.records)
    summary = {}
    if evals:
        summary["final_val_loss"] = number(evals[-1]["val/loss"])
        summary["best_val_loss"] = min(number(r["val/loss"]) for r in evals)
        summary.update({k: number(v) for k, v in evals[-1].items() if k.startswith("val/ce_cb")})
        if not math.isnan(base):
            summary["base_val_loss"] = base
            summary["improvement"] = base - summary["final_val_loss"]
    for key in (*GENERATION_METRICS, *(f"{k}_base" for k in GENERATION_METRICS)):
        logged = [number(r[key]) for r in run.records if key in r]
        if logged:
            summary[key] = logged[-1]
    speeds = [number(r["perf/tokens_per_s"]) for r in run.records if "perf/tokens_per_s" in r]
    if speeds:
        summary["tokens_per_s"] = float(np.median(speeds))
        summary["train_time_s"] = float(training_times(run.records)[1][-1])
    if run.records:
        summary["wall_time_s"] = max(number(r.get("time")) for r in run.records)
    return {k: v for k, v in summary.items() if not math.isnan(v)}


# ---- statistics over runs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    """Sample standard deviation (n - 1); NaN for one run."""
    n: int
    """Runs that have the metric."""

    def __str__(self) -> str:
        """Rounded to the std's second significant digit, at most 4 decimals ("7.6278 ± 0.0026",
        "81 ± 94"); five significant digits without a spread; tiny values in scientific notation."""
        if math.isnan(self.mean):
            return "–"
        spread = self.n >= 2 and self.std > 1e-6 * abs(self.mean)
        if 0 < abs(self.mean) < 1e-3:
            return f"{self.mean:.4e}" + (f" ± {self.std:.1e}" if self.n >= 2 else "")
        reference, digits = (self.std, 2) if spread else (abs(self.mean), 5)
        decimals = min(4, max(0, digits - 1 - math.floor(math.log10(reference)))) if reference > 0 else 0
        text = f"{self.mean:.{decimals}f}"
        return f"{text} ± {self.std:.{decimals}f}" if self.n >= 2 else text


def aggregate(values: list[float]) -> Stat:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return Stat(math.nan, math.nan, 0)
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return Stat(float(np.mean(values)), std, len(values))


def column_order(summaries: list[dict]) -> list[str]:
    present = {k for row in summaries for k in row}
    codebooks = sorted((k for k in present if k.startswith("val/ce_cb")), key=lambda k: int(k.removeprefix("val/ce_cb")))
    head = [k for k in ("final_val_loss", "best_val_loss", "improvement") if k in present]
    generation = [k for k in GENERATION_METRICS if k in present]
    tail = [k for k in ("tokens_per_s", "train_time_s", "wall_time_s") if k in present]
    return [*head, *codebooks, *generation, *tail]


def group_table(groups: list[Group]) -> tuple[list[str], dict[str, dict[str, Stat]]]:
    """(metric columns, {group label: {column: Stat over the runs that have it}})."""
    summaries = {g.label: [run_summary(run) for run in g.runs] for g in groups}
    columns = column_order([row for rows in summaries.values() for row in rows])
    table = {
        label: {c: aggregate([row.get(c, math.nan) for row in rows]) for c in columns}
        for label, rows in summaries.items()
    }
    return columns, table


@dataclass(frozen=True)
class Curve:
    steps: np.ndarray
    times: np.ndarray
    """Mean training time (seconds of logged training steps) over runs at each step."""
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int
    """Runs that logged the key."""


def curve(runs: list[Run], key: str) -> Curve | None:
    """`key` over the steps every run that logged it has: mean and min-max band over those runs."""
    per_run = [(run, {r["step"]: number(r[key]) for r in run.records if key in r}) for run in runs]
    per_run = [(run, points) for run, points in per_run if points]
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(points) for _, points in per_run)))
    if not steps:
        return None
    values = np.array([[points[s] for s in steps] for _, points in per_run])
    times = np.array([training_time_at(run.records, steps) for run, _ in per_run])
    return Curve(np.array(steps), times.mean(0), values.mean(0), values.min(0), values.max(0), len(per_run))
