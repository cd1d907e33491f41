"""Submit every variant x seed of an experiment as its own Azure ML job (or write them, dry).

`submit_experiment` is the one entry point, shared by `musicgen-lora azure submit` and the sweep
command. A dry run needs no credentials and sends nothing to Azure: it writes the build context,
the code snapshot and one YAML per job into a folder, where `azure.ai.ml.load_job` (or `az ml job
create -f`) can read them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from musicgen_lora.azure import guards, job, workspace
from musicgen_lora.azure.data import DataSource, get_or_create_data_asset, resolve_data
from musicgen_lora.azure.environment import (
    EnvironmentSpec,
    environment_entity,
    environment_spec,
    get_or_create_environment,
    write_build_context,
)
from musicgen_lora.azure.job import JobSpec
from musicgen_lora.azure.repo import RepoState, find_repo_root, read_repo_state
from musicgen_lora.azure.secrets import DEFAULT_SECRET_NAME
from musicgen_lora.azure.snapshot import CodeSnapshot, write_code_snapshot
from musicgen_lora.helpers import require_folder

DRY_RUN_DIR = ".azureml-dryrun"
DRY_RUN_MARKER = ".musicgen-lora-dry-run"
"""Written into every dry-run folder: a later dry run may replace what it holds there."""
# In a dry run the workspace is never contacted, so its Key Vault is unknown; a real submit fills it in.
DRY_RUN_KEYVAULT_URL = "https://<workspace-key-vault>.vault.azure.net/"


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    compute: str
    """Azure ML compute cluster the jobs run on."""
    data: str | None = None
    """Training audio: azureml:NAME:VERSION, a datastore/storage URI, or a local folder (uploaded
    once as a data asset). Mounted read-only and passed as --data.path. None: the experiment's default."""
    instance_count: int = 1
    """Nodes per job."""
    gpus_per_node: int = 1
    """Processes per node, one per GPU."""
    dry_run: bool = False
    """Write the jobs, build context and code snapshot to --dry-run-dir; send nothing to Azure."""
    dry_run_dir: Path | None = None
    """Where a dry run writes (default: <repo>/.azureml-dryrun)."""
    allow_dirty: bool = False
    """Submit from a tree with uncommitted changes; the jobs are tagged dirty_override=true."""
    wandb_project: str = "musicgen-lora"
    """W&B project (WANDB_PROJECT in the job)."""
    wandb_entity: str | None = None
    """W&B entity (WANDB_ENTITY in the job); None: the key's default entity."""
    keyvault_secret: str = DEFAULT_SECRET_NAME
    """Name of the secret holding the W&B API key in the workspace's Key Vault."""
    subscription: str | None = None
    """Azure subscription id (else $AZURE_SUBSCRIPTION_ID, else config.json)."""
    resource_group: str | None = None
    """Resource group of the workspace (else $AZURE_RESOURCE_GROUP, else config.json)."""
    workspace: str | None = None
    """Azure ML workspace name (else $AZUREML_WORKSPACE_NAME, else config.json)."""


class PartialSubmission(RuntimeError):
    """Submitting stopped part-way through a sweep; `submitted` lists the jobs already running."""

    def __init__(self, submitted: list[SubmittedJob], total: int, cause: Exception) -> None:
        names = ", ".join(f"{j.display_name} ({j.name})" for j in submitted) or "none"
        super().__init__(
            f"submitted {len(submitted)} of {total} jobs, then: {type(cause).__name__}: {cause}\n"
            f"already submitted: {names}"
        )
        self.submitted = submitted


@dataclass(frozen=True)
class SubmittedJob:
    display_name: str
    variant: str
    seed: int
    yaml_path: Path | None = None
    """Dry run: the job's YAML."""
    name: str | None = None
    """Real submit: the Azure ML job name (for status / logs / download)."""
    studio_url: str | None = None


@dataclass(frozen=True)
class Submission:
    experiment: PurePosixPath
    environment: EnvironmentSpec
    environment_created: bool | None
    """None in a dry run: whether it would be created is only known to the workspace."""
    code: CodeSnapshot
    data: DataSource | None
    data_created: bool | None
    compute: str
    instance_count: int
    gpus_per_node: int
    dry_run_dir: Path | None
    jobs: list[SubmittedJob] = field(default_factory=list)

    def summary(self) -> str:
        env_state = {None: "get-or-create", True: "created", False: "exists, reused"}
        lines = [
            (
                f"Dry run: nothing sent to Azure ML. Files in {self.dry_run_dir}"
                if self.dry_run_dir
                else "Submitted to Azure ML."
            ),
            f"  environment  {self.environment.name}:{self.environment.version} "
            f"({env_state[self.environment_created]}; build context: "
            f"{', '.join(sorted(self.environment.files))})",
            f"  uv.lock      sha256 {self.environment.lock_sha256}",
            f"  code         {len(self.code.files)} files, {_size(self.code.total_bytes)}",
            f"  compute      {self.compute}: {self.instance_count} node(s) x "
            f"{self.gpus_per_node} process(es)",
        ]
        if self.data is None:
            lines.append("  data         none: the experiment's built-in default")
        elif self.data.upload is None:
            lines.append(f"  data         {self.data.path} (read-only mount)")
        else:
            upload = self.data.upload
            action = {None: "would upload", True: "uploaded", False: "already uploaded"}
            lines.append(
                f"  data         {upload.folder} ({upload.file_count} files, "
                f"{_size(upload.total_bytes)}) {action[self.data_created]} as "
                f"{upload.name}:{upload.version} (read-only mount)"
            )
        lines.append(f"  jobs         {len(self.jobs)} in experiment {self.experiment.stem}")
        width = max((len(j.display_name) for j in self.jobs), default=0)
        for submitted in self.jobs:
            where = submitted.yaml_path or f"{submitted.name}  {submitted.studio_url}"
            lines.append(f"    {submitted.display_name:<{width}}  {where}")
        return "\n".join(lines)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 100_000 else f"{n_bytes / 1e3:.1f} kB"


def submit_experiment(
    experiment: Path,
    variants: Sequence[str | None],
    seeds: Sequence[int],
    options: SubmitOptions,
    experiment_args: Sequence[str] = (),
) -> Submission:
    """Submit (or, with options.dry_run, write) one job per variant x seed.

    `variants` empty: the experiment's default variant. Raises guards.SubmitRefused when the lock
    is stale or the tree is dirty (without allow_dirty), before anything is written or uploaded.
    """
    plan = _plan(experiment, seeds, options, tuple(experiment_args))
    runs = [(variant, seed) for variant in (list(variants) or [None]) for seed in seeds]
    if options.dry_run:
        folder = (options.dry_run_dir or plan.root / DRY_RUN_DIR).resolve()
        _clear_dry_run_outputs(folder, owned=folder == (plan.root / DRY_RUN_DIR).resolve())
        return _write_dry_run(plan, runs, folder)
    with tempfile.TemporaryDirectory(prefix="musicgen-lora-submit-") as staging:
        return _submit_to_workspace(plan, runs, Path(staging))


@dataclass(frozen=True)
class _Plan:
    """What every job of one submission shares, checked before anything is written."""

    root: Path
    experiment: PurePosixPath
    state: RepoState
    environment: EnvironmentSpec
    data: DataSource | None
    options: SubmitOptions
    experiment_args: tuple[str, ...]

    def job_spec(self, variant: str | None, seed: int, code: Path, keyvault_url: str) -> JobSpec:
        label = variant or job.DEFAULT_VARIANT
        return JobSpec(
            experiment=self.experiment,
            variant=variant,
            seed=seed,
            code_folder=code,
            environment=self.environment.reference,
            compute=self.options.compute,
            instance_count=self.options.instance_count,
            processes_per_node=self.options.gpus_per_node,
            data=self.data.path if self.data else None,
            experiment_args=self.experiment_args,
            environment_variables=job.job_environment_variables(
                experiment_name=self.experiment.stem,
                wandb_project=self.options.wandb_project,
                wandb_entity=self.options.wandb_entity,
                keyvault_url=keyvault_url,
                keyvault_secret=self.options.keyvault_secret,
                git_commit=self.state.commit,
                git_dirty=self.state.dirty,
            ),
            tags=job.job_tags(
                git_commit=self.state.commit,
                git_dirty=self.state.dirty,
                lock_sha256=self.environment.lock_sha256,
                environment=f"{self.environment.name}:{self.environment.version}",
                variant=label,
                seed=seed,
                allow_dirty=self.options.allow_dirty,
            ),
        )


def _plan(
    experiment: Path, seeds: Sequence[int], options: SubmitOptions, experiment_args: tuple[str, ...]
) -> _Plan:
    experiment = experiment.resolve()
    if not experiment.is_file():
        raise FileNotFoundError(f"no experiment script at {experiment}")
    if not seeds:
        raise ValueError("at least one seed is needed")
    if options.instance_count < 1 or options.gpus_per_node < 1:
        raise ValueError("--instance-count and --gpus-per-node must be at least 1")
    job.check_experiment_args(experiment_args)
    root = find_repo_root(experiment)
    state = read_repo_state(root)
    guards.check_clean_tree(state, allow_dirty=options.allow_dirty)
    guards.check_lock_up_to_date(root)
    return _Plan(
        root=root,
        experiment=PurePosixPath(experiment.relative_to(root).as_posix()),
        state=state,
        environment=environment_spec(root),
        data=resolve_data(options.data) if options.data else None,
        options=options,
        experiment_args=experiment_args,
    )


def _stage(plan: _Plan, folder: Path) -> tuple[Path, CodeSnapshot]:
    """Write the build context and the code snapshot under `folder`."""
    context = write_build_context(plan.environment, folder / "environment")
    code = write_code_snapshot(plan.root, folder / "code")
    if plan.experiment.as_posix() not in code.files:
        raise FileNotFoundError(
            f"{plan.experiment} is ignored by git, so it would not be uploaded; add it to the repo"
        )
    return context, code


def _clear_dry_run_outputs(folder: Path, owned: bool = False) -> None:
    """Remove what an earlier dry run wrote (only that), so no stale job file is left behind.

    A folder the user chose is cleared only when a dry run marked it (a `code/` or
    `environment.yml` of their own is refused, never deleted); the default folder is ours by name.
    """
    require_folder("--dry-run-dir", folder)
    ours = [folder / "environment", folder / "code", folder / "environment.yml", *folder.glob("job_*.yml")]
    found = [path.name for path in ours if path.exists()]
    if found and not owned and not (folder / DRY_RUN_MARKER).is_file():
        raise FileExistsError(f"--dry-run-dir {folder} holds {', '.join(found)} that no dry run wrote; choose another folder")
    for name in ("environment", "code"):
        shutil.rmtree(folder / name, ignore_errors=True)
    for stale in [folder / "environment.yml", *folder.glob("job_*.yml")]:
        stale.unlink(missing_ok=True)


def _write_dry_run(plan: _Plan, runs: list[tuple[str | None, int]], folder: Path) -> Submission:
    context, code = _stage(plan, folder)
    # For inspection, or for `az ml environment create -f` by hand.
    environment_entity(plan.environment, context).dump(folder / "environment.yml")
    (folder / DRY_RUN_MARKER).write_text("written by musicgen-lora azure submit --dry-run; it may replace this folder's files\n")
    jobs = []
    for variant, seed in runs:
        spec = plan.job_spec(variant, seed, code.folder, DRY_RUN_KEYVAULT_URL)
        path = folder / spec.file_name
        job.build_job(spec).dump(path)
        jobs.append(SubmittedJob(spec.display_name, spec.variant_label, seed, yaml_path=path))
    return _submission(plan, code, jobs, dry_run_dir=folder)


def _submit_to_workspace(
    plan: _Plan, runs: list[tuple[str | None, int]], staging: Path
) -> Submission:
    options = plan.options
    ref = workspace.resolve_workspace(
        subscription_id=options.subscription,
        resource_group=options.resource_group,
        workspace_name=options.workspace,
    )
    client = workspace.ml_client(ref)
    keyvault_url = workspace.workspace_key_vault_url(client, ref)
    context, code = _stage(plan, staging)
    _, env_created = get_or_create_environment(client, plan.environment, context)
    data_created = None
    if plan.data is not None and plan.data.upload is not None:
        data_created = get_or_create_data_asset(client, plan.data.upload)
    jobs: list[SubmittedJob] = []
    for variant, seed in runs:
        spec = plan.job_spec(variant, seed, code.folder, keyvault_url)
        try:
            created = client.jobs.create_or_update(job.build_job(spec))
        except Exception as error:
            raise PartialSubmission(jobs, len(runs), error) from error
        jobs.append(
            SubmittedJob(
                spec.display_name,
                spec.variant_label,
                seed,
                name=created.name,
                studio_url=created.studio_url,
            )
        )
    return _submission(plan, code, jobs, env_created=env_created, data_created=data_created)


def _submission(
    plan: _Plan,
    code: CodeSnapshot,
    jobs: list[SubmittedJob],
    *,
    dry_run_dir: Path | None = None,
    env_created: bool | None = None,
    data_created: bool | None = None,
) -> Submission:
    return Submission(
        experiment=plan.experiment,
        environment=plan.environment,
        environment_created=env_created,
        code=code,
        data=plan.data,
        data_created=data_created,
        compute=plan.options.compute,
        instance_count=plan.options.instance_count,
        gpus_per_node=plan.options.gpus_per_node,
        dry_run_dir=dry_run_dir,
        jobs=jobs,
    )
