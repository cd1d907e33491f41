"""`musicgen-lora report`: compare the runs of one experiment -> reports/NN_name.md + PNG plots.

Sources: the local run directories of an experiment (found under runs/ by the `experiment` field
of their config.json; works offline), explicit run directories, or a W&B project (full histories
through the public API's scan_history, never the sampled history). Per variant: final and best
validation loss, per-codebook validation cross-entropy, tokens/s and wall time as mean ± std over
seeds; loss curves against step and wall time with a min-max band over seeds.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from musicgen_lora.outputs import require_folder
from musicgen_lora.tracking import WANDB_RUN_FILE, WANDB_STEP, read_metrics

PROG = "musicgen-lora report"
CURVES = ("train/loss", "val/loss")
GENERATION_METRICS = ("gen/fad", "gen/clap")


@dataclass(frozen=True)
class ReportArgs:
    """Compare the runs of one experiment: a Markdown table per variant and loss-curve plots.

    `musicgen-lora report experiments/02_lora_rank.py` reads the experiment's run directories under
    runs/; `musicgen-lora report runs/a runs/b ...` reads those run directories; add
    `--wandb-project ENTITY/PROJECT` to read the experiment's runs from W&B instead.
    """

    sources: Annotated[tuple[Path, ...], tyro.conf.Positional, tyro.conf.arg(metavar="EXPERIMENT|RUN_DIR")]
    """An experiment script (experiments/NN_name.py) and/or run directories."""
    runs_root: Path = Path("runs")
    """Where to look for the run directories of an experiment script (searched recursively)."""
    out: Path = Path("reports")
    """Folder for NN_name.md and its PNG plots."""
    name: str | None = None
    """Report name (file stem); default: the experiment's name."""
    wandb_project: str | None = None
    """Read runs from this W&B project (ENTITY/PROJECT) instead of local run directories."""
    wandb_report: bool = False
    """Also publish a W&B Report with the same curves grouped by variant (needs network, a W&B
    login and the wandb-workspaces package)."""
    include_unfinished: bool = False
    """Also use runs whose manifest says failed or running (default: left out, and listed)."""


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


# ---- reading runs -------------------------------------------------------------------------------


def load_run_dir(path: Path) -> Run:
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    wandb_file = path / WANDB_RUN_FILE
    wandb_run = json.loads(wandb_file.read_text()) if wandb_file.is_file() else {}
    return Run(
        name=path.name,
        experiment=config["experiment"],
        variant=config["variant"],
        seed=int(config["seed"]),
        records=read_metrics(path),
        smoke=bool(config.get("smoke")),
        outcome=manifest.get("outcome"),
        url=wandb_run.get("url"),
        wandb_id=wandb_run.get("id"),
        source=str(path),
        manifest=manifest,
        config=config,
    )


def find_run_dirs(root: Path, experiment: str) -> list[Path]:
    """Run directories under `root` whose config.json names `experiment`."""
    found = []
    for config_file in sorted(Path(root).rglob("config.json")):
        try:
            if json.loads(config_file.read_text()).get("experiment") == experiment:
                found.append(config_file.parent)
        except (OSError, ValueError, AttributeError):
            continue  # not a run's config
    return found


def load_wandb_runs(project_path: str, experiment: str | None) -> list[Run]:
    """The runs of `experiment` (its W&B group) in ENTITY/PROJECT, with complete histories."""
    import wandb

    api = wandb.Api()
    filters = {"group": experiment} if experiment else None
    runs = []
    for remote in api.runs(project_path, filters=filters):
        config = dict(remote.config)
        if "variant" not in config:
            continue  # not one of ours
        records = []
        for row in remote.scan_history():
            step = row.get(WANDB_STEP)
            if step is None:
                continue
            values = {k: v for k, v in row.items()
                      if isinstance(v, int | float) and not k.startswith("_") and k != WANDB_STEP}
            records.append({**values, "step": int(step), "time": float(row.get("_runtime") or 0.0)})
        outcome = {"finished": "completed", "running": "running"}.get(remote.state, "failed")
        runs.append(
            Run(
                name=remote.name, experiment=config.get("experiment", experiment or ""), variant=config["variant"],
                seed=int(config.get("seed", 0)), records=records, smoke=bool(config.get("smoke")),
                outcome=outcome, url=remote.url, wandb_id=remote.id, source=f"{project_path}/{remote.id}",
                manifest=config.get("manifest") or {}, config=config,
            )
        )
    return runs


# ---- numbers ------------------------------------------------------------------------------------


def _number(value) -> float:
    try:
        return float(value)  # non-finite values are stored as the strings "nan" / "inf"
    except (TypeError, ValueError):
        return math.nan


def run_summary(run: Run) -> dict[str, float]:
    """Final and best val loss, per-codebook val CE at the last evaluation, median tokens/s and the
    wall time of the last record. Missing values are NaN."""
    evals = [r for r in run.records if "val/loss" in r]
    last_eval = evals[-1] if evals else {}
    summary = {
        "final_val_loss": _number(last_eval.get("val/loss")),
        "best_val_loss": min((_number(r["val/loss"]) for r in evals), default=math.nan),
    }
    for key in sorted(k for k in last_eval if k.startswith("val/ce_cb")):
        summary[key] = _number(last_eval[key])
    for key in GENERATION_METRICS:  # issue 8's generation metrics, when the run logged them
        logged = [_number(r[key]) for r in run.records if key in r]
        if logged:
            summary[key] = logged[-1]
    speeds = [_number(r["perf/tokens_per_s"]) for r in run.records if "perf/tokens_per_s" in r]
    summary["tokens_per_s"] = float(np.median(speeds)) if speeds else math.nan
    summary["wall_time_s"] = max((_number(r.get("time")) for r in run.records), default=math.nan)
    return summary


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    """Sample standard deviation (n - 1); NaN for one seed."""
    n: int

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


def group_by_variant(runs: list[Run], order: list[str] | None = None) -> dict[str, list[Run]]:
    """Runs per variant (in `order`, then the rest alphabetically), each sorted by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.variant, []).append(run)
    order = [v for v in (order or []) if v in groups] + sorted(v for v in groups if v not in (order or []))
    return {variant: sorted(groups[variant], key=lambda r: r.seed) for variant in order}


def variant_table(groups: dict[str, list[Run]]) -> tuple[list[str], dict[str, dict[str, Stat]]]:
    """(metric columns, {variant: {column: Stat over seeds}})."""
    summaries = {variant: [run_summary(run) for run in runs] for variant, runs in groups.items()}
    codebooks = sorted({k for rows in summaries.values() for row in rows for k in row if k.startswith("val/ce_cb")},
                       key=lambda k: int(k.removeprefix("val/ce_cb")))
    generation = [k for k in GENERATION_METRICS if any(k in row for rows in summaries.values() for row in rows)]
    columns = ["final_val_loss", "best_val_loss", *codebooks, *generation, "tokens_per_s", "wall_time_s"]
    table = {
        variant: {column: aggregate([row.get(column, math.nan) for row in rows]) for column in columns}
        for variant, rows in summaries.items()
    }
    return columns, table


@dataclass(frozen=True)
class Curve:
    steps: np.ndarray
    times: np.ndarray
    """Mean wall time over seeds at each step."""
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def curve(runs: list[Run], key: str) -> Curve | None:
    """`key` over the steps every run logged it at: mean and min-max band over runs (seeds)."""
    per_run = [{r["step"]: (_number(r.get("time")), _number(r[key])) for r in run.records if key in r} for run in runs]
    per_run = [points for points in per_run if points]
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(points) for points in per_run)))
    if not steps:
        return None
    values = np.array([[points[s][1] for s in steps] for points in per_run])
    times = np.array([[points[s][0] for s in steps] for points in per_run])
    return Curve(np.array(steps), times.mean(0), values.mean(0), values.min(0), values.max(0))


# ---- plots --------------------------------------------------------------------------------------


def plot_curves(groups: dict[str, list[Run]], x_axis: str, path: Path, title: str) -> Path:
    """One panel per CURVES key; x_axis "step" or "time"; a line per variant, band = min-max over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(2, len(groups))))
    fig, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4.2), constrained_layout=True)
    for ax, key in zip(np.atleast_1d(axes), CURVES, strict=True):
        for color, (variant, runs) in zip(colors, groups.items(), strict=False):
            found = curve(runs, key)
            if found is None:
                continue
            x = found.steps if x_axis == "step" else found.times
            ax.plot(x, found.mean, color=color, label=f"{variant} (n={len(runs)})", marker="o" if len(x) < 12 else None, ms=3)
            if len(runs) > 1:
                ax.fill_between(x, found.low, found.high, color=color, alpha=0.2, linewidth=0)
        ax.set_title(key)
        ax.set_xlabel("optimizer step" if x_axis == "step" else "wall time (s, mean over seeds)")
        ax.set_ylabel("cross-entropy (nats, mean over codebooks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: line = mean over seeds, band = min–max over seeds")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the Markdown report ------------------------------------------------------------------------

COLUMN_TITLES = {
    "final_val_loss": "final val loss",
    "best_val_loss": "best val loss",
    "tokens_per_s": "tokens/s",
    "wall_time_s": "wall time (s)",
    "gen/fad": "final FAD",
    "gen/clap": "final CLAP",
}


def _column_title(column: str) -> str:
    return COLUMN_TITLES.get(column) or column.replace("val/ce_cb", "val CE cb")


def _run_row(run: Run) -> str:
    git = run.manifest.get("git") or {}
    commit = (git.get("commit") or "")[:8] + ("-dirty" if git.get("dirty") else "")
    lock = ((run.manifest.get("lock_sha256") or {}).get("uv.lock") or "")[:12]
    device = (run.manifest.get("runtime") or {}).get("device", "")
    if run.url:
        wandb = f"[{run.wandb_id or 'run'}]({run.url})"
    else:
        wandb = f"offline `{run.wandb_id}`" if run.wandb_id else "–"
    steps = max((r["step"] for r in run.records), default=0)
    final = run_summary(run)["final_val_loss"]
    return (f"| {run.variant} | {run.seed} | {steps} | {final:.4f} | `{run.source}` | {wandb} | "
            f"{commit or '–'} | {lock or '–'} | {device or '–'} |")


def render_markdown(name: str, groups: dict[str, list[Run]], *, hypothesis: str, source: str,
                    figures: list[Path], excluded: list[Run], command: str) -> str:
    columns, table = variant_table(groups)
    runs = [run for runs in groups.values() for run in runs]
    lines = [f"# {name}", ""]
    if any(run.smoke for run in runs):
        lines += [
            "> **Smoke-scale demonstration, not a finding.** These runs used `--smoke`: a tiny random",
            "> MusicGen (about 1.3 M parameters), the built-in synthetic demo loops and a few CPU steps.",
            "> They show that the pipeline, tracking and this report work end to end; the numbers say",
            "> nothing about LoRA on real MusicGen checkpoints or real audio. Timings (tokens/s, wall time)",
            "> are CPU timings and move with whatever else the machine was running.",
            "",
        ]
    if hypothesis:
        lines += ["## Experiment", "", "```text", hypothesis, "```", ""]
    lines += [
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{command}` from {len(runs)} runs "
        f"({source}).",
        "",
        "## Results per variant",
        "",
        "| variant | seeds | " + " | ".join(_column_title(c) for c in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for variant, stats in table.items():
        seeds = len(groups[variant])
        lines.append(f"| {variant} | {seeds} | " + " | ".join(str(stats[c]) for c in columns) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation (n − 1) over seeds; `seeds` is the number of runs. Final: the",
        "last evaluation; best: the lowest evaluation of each run. Per-codebook cross-entropy (nats) at the",
        "last evaluation. FAD / CLAP (when logged): generation metrics of the final adapter. tokens/s:",
        "median over each run's logging intervals (training steps only). Wall time: seconds from the start",
        "of tracking (after model loading) to the run's last record, evaluations and sampling included.",
        "",
        "## Loss curves",
        "",
    ]
    lines += [f"![{figure.stem}]({figure.name})" for figure in figures]
    lines += ["", "Line: mean over seeds; band: min–max over seeds (only where a variant has several).", ""]
    lines += [
        "## Runs",
        "",
        "| variant | seed | steps | final val loss | run | W&B | commit | uv.lock | device |",
        "|---|---:|---:|---:|---|---|---|---|---|",
        *(_run_row(run) for run in runs),
        "",
    ]
    if excluded:
        lines += ["Left out (manifest outcome not completed; `--include-unfinished` uses them):", ""]
        lines += [f"- `{run.source}` ({run.variant}, seed {run.seed}): {run.outcome}" for run in excluded]
        lines.append("")
    return "\n".join(lines)


# ---- W&B Report ---------------------------------------------------------------------------------


def publish_wandb_report(entity: str, project: str, experiment: str, title: str, description: str) -> str:
    """A W&B Report with train/val loss, per-codebook CE and throughput grouped by variant; its URL."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as error:
        raise RuntimeError(
            "--wandb-report needs the wandb-workspaces package (it is in uv.lock: run `uv sync --locked`)"
        ) from error
    from musicgen_lora.tracking import wandb_credentials_present

    if not wandb_credentials_present():
        raise RuntimeError("--wandb-report needs network access and a W&B login (WANDB_API_KEY or `wandb login`)")
    runset = wr.Runset(entity=entity, project=project, name=experiment, query=experiment, groupby=["config.variant"])
    keys = ["train/loss", "val/loss", *(f"val/ce_cb{k}" for k in range(4)), "perf/tokens_per_s"]
    panels = [
        wr.LinePlot(title=key, x=WANDB_STEP, y=[key], groupby_aggfunc="mean", groupby_rangefunc="minmax")
        for key in keys
    ]
    report = wr.Report(
        entity=entity, project=project, title=title, description=description,
        blocks=[wr.H1(title), wr.P(description), wr.PanelGrid(runsets=[runset], panels=panels)],
    )
    report.save()
    return report.url


# ---- the command --------------------------------------------------------------------------------


def collect_runs(args: ReportArgs) -> tuple[str | None, object | None, list[Run], str]:
    """(experiment name, experiment module or None, runs, description of the source)."""
    from musicgen_lora.sweep import load_experiment

    scripts = [p for p in args.sources if p.suffix == ".py"]
    run_dirs = [p for p in args.sources if p.suffix != ".py"]
    if len(scripts) > 1:
        raise ValueError("one experiment script per report")
    module = load_experiment(scripts[0]) if scripts else None
    experiment = scripts[0].stem if scripts else None
    if args.wandb_project:
        return experiment, module, load_wandb_runs(args.wandb_project, experiment), f"W&B project {args.wandb_project}"
    if experiment:
        run_dirs += find_run_dirs(args.runs_root, experiment)
    runs = [load_run_dir(path) for path in dict.fromkeys(run_dirs)]
    script = Path("experiments") / f"{runs[0].experiment}.py" if runs and module is None else None
    if script and script.is_file():  # run directories given alone: the hypothesis and variant order
        module = load_experiment(script)
    return experiment, module, runs, "local run directories"


def usable(run: Run) -> bool:
    """Completed runs; a run directory without a manifest (older runs) counts when it has metrics."""
    return run.outcome == "completed" or (run.outcome is None and bool(run.records))


def write_report(args: ReportArgs, command: str = PROG) -> tuple[Path, str, list[Run]]:
    """Write <out>/<name>.md and its plots; returns (path, experiment name, runs used)."""
    experiment, module, runs, source = collect_runs(args)
    if not runs:
        where = f"W&B project {args.wandb_project}" if args.wandb_project else str(args.runs_root)
        raise ValueError(f"no runs found ({where}); run the experiment first, e.g. `musicgen-lora sweep ...`")
    experiment = experiment or runs[0].experiment
    name = args.name or experiment
    used = [run for run in runs if args.include_unfinished or usable(run)]
    excluded = [run for run in runs if all(run is not u for u in used)]
    if not used:
        raise ValueError(f"none of the {len(runs)} runs completed (use --include-unfinished to report them anyway)")
    groups = group_by_variant(used, list(module.VARIANTS) if module else None)
    figures = [
        plot_curves(groups, "step", args.out / f"{name}_loss_vs_step.png", f"{name}: loss vs step"),
        plot_curves(groups, "time", args.out / f"{name}_loss_vs_time.png", f"{name}: loss vs wall time"),
    ]
    markdown = render_markdown(
        name, groups, hypothesis=((module.__doc__ or "") if module else "").strip(), source=source,
        figures=figures, excluded=excluded, command=command,
    )
    path = args.out / f"{name}.md"
    path.write_text(markdown)
    return path, experiment, used


def main(argv: list[str]) -> int:
    args = tyro.cli(ReportArgs, args=argv, prog=PROG)
    try:
        require_folder("--out", args.out)
        path, experiment, runs = write_report(args, command=" ".join([PROG, *argv]))
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return _wandb_report(args, experiment, runs) if args.wandb_report else 0


def _wandb_report(args: ReportArgs, experiment: str, runs: list[Run]) -> int:
    """Publish the W&B Report; the local report is written whatever happens here."""
    if args.wandb_project:
        entity, _, project = args.wandb_project.partition("/")
    else:  # the project the local runs logged to, as recorded in their run directories
        online = [
            record for run in runs if (Path(run.source) / WANDB_RUN_FILE).is_file()
            for record in [json.loads((Path(run.source) / WANDB_RUN_FILE).read_text())]
            if record.get("mode") == "online" and record.get("entity")
        ]
        if not online:
            print(f"{PROG}: W&B report not published: these runs did not log to W&B online (upload offline "
                  "runs with `wandb sync`, then pass --wandb-project ENTITY/PROJECT)", file=sys.stderr)
            return 1
        entity, project = online[0]["entity"], online[0]["project"]
    try:
        url = publish_wandb_report(
            entity, project, experiment, f"{experiment}: variants compared",
            f"Runs of {experiment} grouped by variant: mean over seeds with a min-max band.",
        )
    except Exception as error:  # missing package, offline, permissions: say so, keep the local report
        print(f"{PROG}: W&B report not published: {error}", file=sys.stderr)
        return 1
    print(f"W&B report: {url}")
    return 0
