"""`musicgen-lora report`: compare the runs of one experiment -> reports/NN_name.md + PNG plots.

Sources: the local run directories of an experiment (found under runs/ by the `experiment` field
of their config.json; works offline), explicit run directories, or a W&B project (full histories
through the public API's scan_history, never the sampled history). Runs are grouped by variant and
configuration, one per seed (musicgen_lora.tracking.report_stats); per group: final and best validation loss,
improvement over the base model, per-codebook validation cross-entropy, generation metrics,
tokens/s, training and wall time as mean ± std over the runs that have each metric; loss curves
against step and training time with a min-max band over seeds (musicgen_lora.tracking.report_markdown).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from musicgen_lora.helpers import require_folder
from musicgen_lora.tracking.report_markdown import plot_curves, render_markdown
from musicgen_lora.tracking.report_stats import (  # noqa: F401  (re-exported: the report's public names)
    Run,
    Selection,
    Stat,
    aggregate,
    curve,
    group_table,
    run_summary,
    select_runs,
)
from musicgen_lora.tracking.trackers import WANDB_RUN_FILE, WANDB_STEP, read_metrics

PROG = "musicgen-lora report"


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
    """Also use runs that did not complete (failed, interrupted, killed, running); default: left out,
    and listed with their outcome."""


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


# ---- plots and Markdown: musicgen_lora.tracking.report_markdown ------------------------------------------


# ---- W&B Report ---------------------------------------------------------------------------------


def publish_wandb_report(entity: str, project: str, experiment: str, title: str, description: str) -> str:
    """A W&B Report with train/val loss, per-codebook CE and throughput grouped by variant; its URL."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as error:
        raise RuntimeError(
            "--wandb-report needs the wandb-workspaces package (it is in uv.lock: run `uv sync --locked`)"
        ) from error
    from musicgen_lora.tracking.trackers import wandb_credentials_present

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
    from musicgen_lora.helpers import load_experiment

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


def write_report(args: ReportArgs, command: str = PROG) -> tuple[Path, str, list[Run]]:
    """Write <out>/<name>.md and its plots; returns (path, experiment name, runs used)."""
    experiment, module, runs, source = collect_runs(args)
    if not runs:
        where = f"W&B project {args.wandb_project}" if args.wandb_project else str(args.runs_root)
        raise ValueError(f"no runs found ({where}); run the experiment first, e.g. `musicgen-lora sweep ...`")
    experiment = experiment or runs[0].experiment
    name = args.name or experiment
    selection = select_runs(runs, list(module.VARIANTS) if module else None, args.include_unfinished)
    if not selection.groups:
        raise ValueError(f"none of the {len(runs)} runs completed (use --include-unfinished to report them anyway)")
    figures = [
        plot_curves(selection.groups, "step", args.out / f"{name}_loss_vs_step.png", f"{name}: loss vs step"),
        plot_curves(selection.groups, "time", args.out / f"{name}_loss_vs_time.png", f"{name}: loss vs training time"),
    ]
    markdown = render_markdown(
        name, selection, hypothesis=((module.__doc__ or "") if module else "").strip(), source=source,
        figures=figures, command=command,
    )
    path = args.out / f"{name}.md"
    path.write_text(markdown)
    return path, experiment, [run for group in selection.groups for run in group.runs]


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
