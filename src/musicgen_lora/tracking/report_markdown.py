"""The report's Markdown and plots, from a Selection of runs (musicgen_lora.tracking.report_stats)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from musicgen_lora.tracking.report_stats import (
    Group,
    Run,
    Selection,
    Stat,
    curve,
    group_table,
    run_summary,
)

CURVES = ("train/loss", "val/loss")
COLUMN_TITLES = {
    "final_val_loss": "final val loss",
    "best_val_loss": "best val loss",
    "improvement": "improvement over base",
    "tokens_per_s": "tokens/s",
    "train_time_s": "train time (s)",
    "wall_time_s": "wall time (s)",
    "gen/fad": "final FAD (EnCodec latent)",
    "gen/fad_clap": "final FAD (CLAP)",
    "gen/clap": "final CLAP score",
}


# ---- plots --------------------------------------------------------------------------------------


def plot_curves(groups: list[Group], x_axis: str, path: Path, title: str) -> Path:
    """One panel per CURVES key; x_axis "step" or "time" (training time); a line per group, band =
    min-max over its runs; the legend's n counts the runs that logged the panel's key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(2, len(groups))))
    fig, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4.2), constrained_layout=True)
    for ax, key in zip(np.atleast_1d(axes), CURVES, strict=True):
        for color, group in zip(colors, groups, strict=False):
            found = curve(group.runs, key)
            if found is None:
                continue
            x = found.steps if x_axis == "step" else found.times
            ax.plot(x, found.mean, color=color, label=f"{group.label} (n={found.n})", marker="o" if len(x) < 12 else None, ms=3)
            if found.n > 1:
                ax.fill_between(x, found.low, found.high, color=color, alpha=0.2, linewidth=0)
        ax.set_title(key)
        ax.set_xlabel("optimizer step" if x_axis == "step" else "training time (s: logged step times, mean over seeds)")
        ax.set_ylabel("cross-entropy (nats, mean over codebooks)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{title}: line = mean over seeds, band = min–max over seeds")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the Markdown report ------------------------------------------------------------------------

SMOKE_NOTE = [
    "> **Smoke-scale demonstration, not a finding.** These runs used `--smoke`: a tiny random",
    "> MusicGen (about 1.3 M parameters), the built-in synthetic demo loops and a few CPU steps.",
    "> They show that the pipeline, tracking and this report work end to end; the numbers say",
    "> nothing about LoRA on real MusicGen checkpoints or real audio. Timings (tokens/s, train and",
    "> wall time) are CPU timings and move with whatever else the machine was running.",
    "",
]


def _column_title(column: str) -> str:
    return COLUMN_TITLES.get(column) or column.replace("val/ce_cb", "val CE cb")


def _cell(stat: Stat, runs: int) -> str:
    return str(stat) + (f" (n={stat.n})" if stat.n != runs else "")


def _fmt(value: float | None, pattern: str = "{:.4f}") -> str:
    return "–" if value is None else pattern.format(value)


def results_table(groups: list[Group]) -> list[str]:
    columns, table = group_table(groups)
    lines = [
        "| group | runs | " + " | ".join(_column_title(c) for c in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for group in groups:
        cells = " | ".join(_cell(table[group.label][c], len(group.runs)) for c in columns)
        lines.append(f"| {group.label} | {len(group.runs)} | {cells} |")
    return lines


def improvement_table(groups: list[Group]) -> list[str]:
    """Per group: base val loss, final val loss and their difference over the runs that have both."""
    _, table = group_table(groups)
    rows = [g for g in groups if table[g.label].get("improvement") and table[g.label]["improvement"].n]
    if not rows:
        return []
    lines = [
        "## Improvement over the base model", "",
        "Validation loss of the base model (step 0, adapter disabled: `val/loss_base`) minus the final",
        "validation loss of the adapter, per run; mean ± std over the n runs that logged both.", "",
        "| group | n | base val loss | final val loss | improvement (nats) |", "|---|---:|---:|---:|---:|",
    ]
    for group in rows:
        pairs = [s for s in map(run_summary, group.runs) if "improvement" in s]
        base = Stat(float(np.mean([s["base_val_loss"] for s in pairs])), float("nan"), 1)
        final = Stat(float(np.mean([s["final_val_loss"] for s in pairs])), float("nan"), 1)
        lines.append(f"| {group.label} | {len(pairs)} | {base} | {final} | {table[group.label]['improvement']} |")
    return [*lines, ""]


def fad_notes(runs: list[Run]) -> list[str]:
    """Which FAD is which: the CLAP one (its model named) is comparable with published numbers, the
    EnCodec-latent one only across runs of this project; and the reference set."""
    present = {k for run in runs for r in run.records for k in r}
    lines = []
    if "gen/fad_clap" in present:
        models = sorted({str((run.config.get("metrics") or {}).get("clap_model", "?")) for run in runs})
        lines.append(
            f"- **FAD (CLAP)** (`gen/fad_clap`): CLAP audio embeddings of {', '.join(f'`{m}`' for m in models)} "
            "(audio as 16-bit PCM resampled to 48 kHz, one embedding per clip from its first 10 s), as fadtk's "
            "`clap-laion-*` models: comparable with published CLAP FAD values of the same checkpoint (at "
            "similar set sizes: FAD from few clips is biased upwards).")
    if "gen/fad" in present:
        lines.append(
            f"- **FAD (EnCodec latent)** (`gen/fad`): {_latent_embedding(runs)}: comparable only across runs "
            "of this project with the same model, prompts, seeds and reference clips, never with published FAD.")
    if lines:
        lines.append("- Reference set: " + "; ".join(sorted({_reference(run) for run in runs})) + ".")
    return ["## Generation metrics", "", *lines, ""] if lines else []


def _described(run: Run) -> dict:
    return run.manifest.get("generation_metrics") or {}


def _latent_embedding(runs: list[Run]) -> str:
    recorded = sorted({(_described(run).get("gen/fad") or {}).get("embedding") or "" for run in runs} - {""})
    return "; ".join(recorded) if recorded else "a Fréchet distance in the model's own EnCodec encoder latent space"


def _reference(run: Run) -> str:
    counts = [int(r["gen/reference_clips"]) for r in run.records if "gen/reference_clips" in r]
    described = _described(run).get("reference")
    if described is None:
        metrics = run.config.get("metrics") or {}
        described = (f"up to {metrics.get('reference_clips', '?')} held-out clips, first "
                     f"{metrics.get('reference_seconds', '?')} s, decoded by the model's codec from the token cache")
    return described + (f" ({counts[-1]} clips in this run)" if counts else "")


def _run_row(label: str, run: Run) -> str:
    git = run.manifest.get("git") or {}
    commit = (git.get("commit") or "")[:8] + ("-dirty" if git.get("dirty") else "")
    lock = ((run.manifest.get("lock_sha256") or {}).get("uv.lock") or "")[:12]
    device = (run.manifest.get("runtime") or {}).get("device", "")
    if run.url:
        wandb = f"[{run.wandb_id or 'run'}]({run.url})"
    else:
        wandb = f"offline `{run.wandb_id}`" if run.wandb_id else "–"
    steps = max((r["step"] for r in run.records), default=0)
    summary = run_summary(run)
    world = run.manifest.get("world_size") or 1
    return (f"| {label} | {run.seed} | {steps} | {world} | {_fmt(summary.get('final_val_loss'))} | "
            f"{_fmt(summary.get('train_time_s'), '{:.1f}')} | {_fmt(summary.get('wall_time_s'), '{:.1f}')} | "
            f"`{run.source}` | {wandb} | {commit or '–'} | {lock or '–'} | {device or '–'} |")


def runs_section(selection: Selection) -> list[str]:
    lines = [
        "## Runs", "",
        "| group | seed | steps | processes | final val loss | train time (s) | wall time (s) | run | W&B | commit | uv.lock | device |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---|",
        *(_run_row(group.label, run) for group in selection.groups for run in group.runs), "",
    ]
    differing = [g for g in selection.groups if g.differs]
    if differing:
        lines += ["Runs whose configuration differs from their variant's main group are a group of their own:", ""]
        lines += [f"- `{g.label}`: " + ", ".join(f"{k} = {here!r} (main group: {main!r})" for k, (here, main) in g.differs.items())
                  for g in differing]
        lines.append("")
    if selection.duplicates:
        lines += ["Left out as duplicates (same variant, configuration and seed; the latest complete run counts):", ""]
        lines += [f"- `{dup.source}` ({dup.variant}, seed {dup.seed}): `{kept.source}` is used" for dup, kept in selection.duplicates]
        lines.append("")
    if selection.unfinished:
        lines += ["Did not complete (not in the numbers unless `--include-unfinished`):", ""]
        lines += [f"- `{run.source}` ({run.variant}, seed {run.seed}): {state}" for run, state in selection.unfinished]
        lines.append("")
    return lines


NOTES = [
    "Mean ± sample standard deviation (n − 1) over seeds, one run per seed; `runs` is the group's number",
    "of runs, and a value's `(n=k)` says when only k of them logged that metric. Final: the last",
    "evaluation; best: the lowest evaluation of each run (both after step 0). Per-codebook",
    "cross-entropy (nats) at the last evaluation. tokens/s: median over each run's logging intervals.",
    "Train time: the sum of logged training step times (median step time of each logging window times",
    "its steps: no evaluation, sampling, checkpointing or model loading). Wall time: seconds from the",
    "start of tracking to the run's last record, everything included.",
]


def render_markdown(name: str, selection: Selection, *, hypothesis: str, source: str,
                    figures: list[Path], command: str) -> str:
    runs = [run for group in selection.groups for run in group.runs]
    lines = [f"# {name}", "", *(SMOKE_NOTE if any(run.smoke for run in runs) else [])]
    if hypothesis:
        lines += ["## Experiment", "", "```text", hypothesis, "```", ""]
    left_out = len(selection.duplicates) + len(selection.unfinished)
    lines += [
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{command}` from {len(runs)} runs "
        f"({source})" + (f"; {left_out} more listed under Runs and left out." if left_out else "."),
        "", "## Results per variant", "", *results_table(selection.groups), "", *NOTES, "",
        *improvement_table(selection.groups), *fad_notes(runs),
        "## Loss curves", "", *(f"![{figure.stem}]({figure.name})" for figure in figures), "",
        "Line: mean over seeds; band: min–max over seeds; n: runs that logged the curve. Time axis:",
        "training time (logged step times), not wall time.", "",
        *runs_section(selection),
    ]
    return "\n".join(lines)
