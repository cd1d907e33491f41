"""`musicgen-lora azure ...`: submit, status, logs, download, sync-wandb."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import tyro

from musicgen_lora.azure.guards import SubmitRefused
from musicgen_lora.azure.repo import NotAGitRepository
from musicgen_lora.azure.submit import PartialSubmission, SubmitOptions, submit_experiment
from musicgen_lora.azure.workspace import WorkspaceNotConfigured, ml_client, resolve_workspace

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

PROG = "musicgen-lora azure"
_Flat = tyro.conf.OmitArgPrefixes
_JobName = Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="JOB")]


@dataclass(frozen=True, kw_only=True)
class Submit:
    """Submit every variant x seed of an experiment as its own Azure ML job.

    Experiment flags after `--` are passed to every job verbatim, e.g.
    `musicgen-lora azure submit experiments/02_lora_rank.py --variant r8 r16 --seed 0 1
    --compute gpu-a100 --data azureml:loops:1 --dry-run -- --optim.lr 2e-4`.
    """

    experiment: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="EXPERIMENT")]
    """Experiment script, e.g. experiments/02_lora_rank.py."""
    variant: tuple[str, ...] = ()
    """Variants, one job each; none given: the experiment's default variant."""
    seed: tuple[int, ...] = (0,)
    """Seeds, one job each."""
    launch: Annotated[SubmitOptions, _Flat]


@dataclass(frozen=True, kw_only=True)
class WorkspaceFlags:
    subscription: str | None = None
    """Azure subscription id (else $AZURE_SUBSCRIPTION_ID, else config.json)."""
    resource_group: str | None = None
    """Resource group of the workspace (else $AZURE_RESOURCE_GROUP, else config.json)."""
    workspace: str | None = None
    """Azure ML workspace name (else $AZUREML_WORKSPACE_NAME, else config.json)."""

    def client(self) -> MLClient:
        return ml_client(
            resolve_workspace(
                subscription_id=self.subscription,
                resource_group=self.resource_group,
                workspace_name=self.workspace,
            )
        )


@dataclass(frozen=True, kw_only=True)
class Status:
    """Print a job's status, compute, tags and studio link."""

    job: _JobName
    """Azure ML job name, as `submit` printed it."""
    azure: Annotated[WorkspaceFlags, _Flat] = WorkspaceFlags()


@dataclass(frozen=True, kw_only=True)
class Logs:
    """Stream a job's output until it ends."""

    job: _JobName
    """Azure ML job name."""
    azure: Annotated[WorkspaceFlags, _Flat] = WorkspaceFlags()


@dataclass(frozen=True, kw_only=True)
class Download:
    """Download a finished job's run directory (config, manifest, metrics, adapter, samples)."""

    job: _JobName
    """Azure ML job name."""
    to: Path
    """Folder that becomes the run directory; must not exist or be empty."""
    azure: Annotated[WorkspaceFlags, _Flat] = WorkspaceFlags()


@dataclass(frozen=True, kw_only=True)
class SyncWandb:
    """Upload the offline W&B runs of a job that had no W&B key (downloads its run dir first)."""

    job: _JobName
    """Azure ML job name."""
    to: Path | None = None
    """Run directory to download into, or reuse if already downloaded (default: runs/azure/JOB)."""
    azure: Annotated[WorkspaceFlags, _Flat] = WorkspaceFlags()


COMMANDS = {
    "submit": Submit,
    "status": Status,
    "logs": Logs,
    "download": Download,
    "sync-wandb": SyncWandb,
}


def main(argv: list[str]) -> int:
    own, experiment_args = _split_passthrough(argv)
    command = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=own, prog=PROG)
    if experiment_args and not isinstance(command, Submit):
        print(f"{PROG}: arguments after `--` only apply to `submit`", file=sys.stderr)
        return 2
    from azure.core.exceptions import AzureError

    try:
        return _run(command, experiment_args)
    except (
        SubmitRefused,
        NotAGitRepository,
        WorkspaceNotConfigured,
        FileNotFoundError,
        FileExistsError,
        ValueError,
    ) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except PartialSubmission as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except AzureError as error:  # not logged in, no permission, no such job, ...
        print(f"{PROG}: Azure ML said: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" not in argv:
        return list(argv), []
    cut = argv.index("--")
    return list(argv[:cut]), list(argv[cut + 1 :])


def _run(command: object, experiment_args: list[str]) -> int:
    from musicgen_lora.azure import jobs

    if isinstance(command, Submit):
        submission = submit_experiment(
            command.experiment, command.variant, command.seed, command.launch, experiment_args
        )
        print(submission.summary())
        return 0
    if isinstance(command, Status):
        print(jobs.describe_job(command.azure.client(), command.job))
        return 0
    if isinstance(command, Logs):
        jobs.stream_logs(command.azure.client(), command.job)
        return 0
    if isinstance(command, Download):
        run_dir = jobs.download_run_dir(command.azure.client(), command.job, command.to)
        print(f"run directory: {run_dir}")
        return 0
    if isinstance(command, SyncWandb):
        return _sync_wandb(command)
    raise TypeError(f"unhandled command {command!r}")


def _sync_wandb(command: SyncWandb) -> int:
    from musicgen_lora.azure import jobs

    run_dir = command.to or Path("runs") / "azure" / command.job
    if not (run_dir.is_dir() and any(run_dir.iterdir())):
        jobs.download_run_dir(command.azure.client(), command.job, run_dir)
    offline = jobs.offline_wandb_runs(run_dir)
    if not offline:
        print(f"no offline W&B runs in {run_dir}: the job logged online, or W&B was off.")
        return 0
    print(f"syncing {len(offline)} offline W&B run(s) from {run_dir}")
    return jobs.sync_wandb_runs(offline)
