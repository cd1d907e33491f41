"""One Azure ML command job: one experiment variant with one seed.

The job runs the very command a researcher runs locally (`python experiments/NN_name.py --variant V
--seed S ...`), after `doctor` has checked that the image matches uv.lock. Its run directory is the
job's `run_dir` output, a read-write mount, so everything the run writes outlives the job.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from musicgen_lora.azure.secrets import KEYVAULT_URL_VAR, SECRET_NAME_VAR

if TYPE_CHECKING:
    from azure.ai.ml.entities import CommandJob

DEFAULT_VARIANT = "default"
RUN_DIR_OUTPUT = "run_dir"
DATA_INPUT = "data"
# Azure ML replaces these with the mounted paths when the job starts.
RUN_DIR_BINDING = "${{outputs.run_dir}}"
DATA_BINDING = "${{inputs.data}}"
# The launcher sets these flags itself; passing them again after `--` would contradict the job.
RESERVED_FLAGS = ("--variant", "--seed", "--output-dir", "--data.path")

# The project is not installed in the image (only its dependencies are), so the job imports it
# from the uploaded code: src/ on PYTHONPATH, keeping whatever the runtime already put there.
_PYTHONPATH_SETUP = 'export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"'
# The preflight: exits non-zero, failing the job before training, if the image differs from uv.lock.
PREFLIGHT = "python -m musicgen_lora.cli doctor"


@dataclass(frozen=True)
class JobSpec:
    """Everything that makes one job; built without Azure credentials."""

    experiment: PurePosixPath
    """The experiment script, relative to the repo root (e.g. experiments/02_lora_rank.py)."""
    variant: str | None
    """Passed as --variant; None leaves the experiment's default variant."""
    seed: int
    code_folder: Path
    environment: str
    """azureml:NAME:VERSION of the job image."""
    compute: str
    instance_count: int = 1
    processes_per_node: int = 1
    data: str | None = None
    """Input folder for --data.path: azureml:NAME:VERSION or a URI; None: the experiment's default."""
    experiment_args: tuple[str, ...] = ()
    """Extra experiment flags, appended verbatim (shell-quoted)."""
    environment_variables: Mapping[str, str] | None = None
    tags: Mapping[str, str] | None = None

    @property
    def experiment_name(self) -> str:
        return self.experiment.stem

    @property
    def variant_label(self) -> str:
        return self.variant or DEFAULT_VARIANT

    @property
    def display_name(self) -> str:
        return f"{self.experiment_name}-{self.variant_label}-s{self.seed}"

    @property
    def file_name(self) -> str:
        """Where a dry run writes this job's YAML."""
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.variant_label)
        return f"job_{self.experiment_name}_{label}_s{self.seed}.yml"


def check_experiment_args(args: Sequence[str]) -> None:
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in RESERVED_FLAGS:
            raise ValueError(
                f"{flag} is set by the launcher; pass it to `submit` instead of after `--`"
            )


def experiment_command(spec: JobSpec) -> str:
    """`doctor && python experiments/... --variant V --seed S --output-dir ... [--data.path ...]`."""
    check_experiment_args(spec.experiment_args)
    args = ["python", spec.experiment.as_posix()]
    if spec.variant is not None:
        args += ["--variant", spec.variant]
    args += ["--seed", str(spec.seed)]
    parts = [shlex.join(args), "--output-dir", RUN_DIR_BINDING]
    if spec.data is not None:
        parts += ["--data.path", DATA_BINDING]
    if spec.experiment_args:
        parts.append(shlex.join(spec.experiment_args))
    return f"{_PYTHONPATH_SETUP} && {PREFLIGHT} && {' '.join(parts)}"


def build_job(spec: JobSpec) -> CommandJob:
    from azure.ai.ml import Input, Output, PyTorchDistribution
    from azure.ai.ml.entities import CommandJob, JobResourceConfiguration

    inputs = {}
    if spec.data is not None:
        inputs[DATA_INPUT] = Input(type="uri_folder", path=spec.data, mode="ro_mount")
    return CommandJob(
        command=experiment_command(spec),
        code=str(spec.code_folder),
        environment=spec.environment,
        compute=spec.compute,
        inputs=inputs,
        outputs={RUN_DIR_OUTPUT: Output(type="uri_folder", mode="rw_mount")},
        # Azure ML starts processes_per_node copies of the command on every node, with RANK,
        # WORLD_SIZE, MASTER_ADDR, ... set: accelerate picks those up, no launcher needed.
        distribution=PyTorchDistribution(process_count_per_instance=spec.processes_per_node),
        resources=JobResourceConfiguration(instance_count=spec.instance_count),
        environment_variables=dict(spec.environment_variables or {}),
        experiment_name=spec.experiment_name,
        display_name=spec.display_name,
        tags=dict(spec.tags or {}),
    )


def job_environment_variables(
    *,
    experiment_name: str,
    wandb_project: str,
    wandb_entity: str | None,
    keyvault_url: str,
    keyvault_secret: str,
    git_commit: str,
    git_dirty: bool,
) -> dict[str, str]:
    """What the job's processes see. Names and locations only: no secret ever goes here."""
    variables = {
        "WANDB_PROJECT": wandb_project,
        "WANDB_RUN_GROUP": experiment_name,
        KEYVAULT_URL_VAR: keyvault_url,
        SECRET_NAME_VAR: keyvault_secret,
        # The uploaded code has no .git: these let the run's manifest record where it came from.
        "MUSICGEN_LORA_GIT_COMMIT": git_commit,
        "MUSICGEN_LORA_GIT_DIRTY": str(git_dirty).lower(),
    }
    if wandb_entity:
        variables["WANDB_ENTITY"] = wandb_entity
    return variables


def job_tags(
    *,
    git_commit: str,
    git_dirty: bool,
    lock_sha256: str,
    environment: str,
    variant: str,
    seed: int,
    allow_dirty: bool,
) -> dict[str, str]:
    tags = {
        "git_commit": git_commit,
        "git_dirty": str(git_dirty).lower(),
        "uv_lock_sha256": lock_sha256,
        "environment": environment,
        "variant": variant,
        "seed": str(seed),
    }
    if allow_dirty:
        tags["dirty_override"] = "true"
    return tags
