"""The Azure ML launcher, offline: dry runs load back as jobs, guards refuse, secrets stay secret.

Every test builds a throwaway git repository (the real pyproject.toml, uv.lock and
.python-version, plus a stand-in experiment) so nothing depends on experiments/ existing yet and
nothing touches this checkout's git state. No credentials and no Azure endpoint are needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from azure.ai.ml import PyTorchDistribution, load_job
from azure.core.exceptions import ResourceNotFoundError

from musicgen_lora import azure as azure_cli
from musicgen_lora.azure import secrets, workspace
from musicgen_lora.azure.data import asset_name, local_data_asset, resolve_data
from musicgen_lora.azure.environment import (
    LOCK_FILES,
    dockerfile_template,
    environment_spec,
)
from musicgen_lora.azure.guards import SubmitRefused, check_lock_up_to_date
from musicgen_lora.azure.jobs import download_run_dir, offline_wandb_runs
from musicgen_lora.azure.repo import read_repo_state
from musicgen_lora.azure.snapshot import write_code_snapshot
from musicgen_lora.azure.submit import PartialSubmission, SubmitOptions, submit_experiment
from musicgen_lora.azure.workspace import (
    WorkspaceNotConfigured,
    key_vault_url,
    resolve_workspace,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "experiments/01_baseline.py"
FAKE_WANDB_KEY = "wandb-key-0123456789abcdef-must-never-leak"
FAKE_CLIENT_SECRET = "sp-client-secret-fedcba9876543210-must-never-leak"


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed, clean repository shaped like this one, with junk that must not be uploaded."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in (*LOCK_FILES, ".gitignore"):
        shutil.copy2(REPO_ROOT / name, root / name)
    (root / "experiments").mkdir()
    (root / EXPERIMENT).write_text('"""Stand-in experiment: the launcher never imports it."""\n')
    (root / "src" / "musicgen_lora").mkdir(parents=True)
    (root / "src" / "musicgen_lora" / "__init__.py").write_text("")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "initial")
    # Ignored by .gitignore: present on disk, never part of a job's code.
    for junk in (".venv/lib/site.txt", "runs/old/metrics.jsonl", "wandb/run/x", "token_cache/a.pt"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("junk")
    (root / "src" / "musicgen_lora" / "__pycache__").mkdir()
    (root / "src" / "musicgen_lora" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    return root


@pytest.fixture
def loops(tmp_path: Path) -> Path:
    folder = tmp_path / "my loops"
    folder.mkdir()
    (folder / "kick.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    (folder / "metadata.csv").write_text("file_name,text\nkick.wav,techno drum loop\n")
    return folder


def _dry_run(repo: Path, **overrides) -> SubmitOptions:
    settings = {"compute": "gpu-cluster", "dry_run": True, "dry_run_dir": repo / ".azureml-dryrun"}
    return SubmitOptions(**{**settings, **overrides})


def test_dry_run_jobs_load_back_with_command_io_environment_and_distribution(repo, loops):
    options = _dry_run(repo, data=str(loops), instance_count=2, gpus_per_node=4)
    submission = submit_experiment(
        repo / EXPERIMENT, ["r8", "r16"], [0, 1], options, ["--optim.lr", "2e-4"]
    )

    assert [j.display_name for j in submission.jobs] == [
        "01_baseline-r8-s0",
        "01_baseline-r8-s1",
        "01_baseline-r16-s0",
        "01_baseline-r16-s1",
    ]
    env = submission.environment
    data_asset = local_data_asset(loops)
    for submitted in submission.jobs:
        assert (
            submitted.yaml_path.name == f"job_01_baseline_{submitted.variant}_s{submitted.seed}.yml"
        )
        loaded = load_job(submitted.yaml_path)

        doctor, experiment = loaded.command.split(" && ")[-2:]
        assert doctor == "python -m musicgen_lora.cli doctor"
        assert experiment == (
            f"python {EXPERIMENT} --variant {submitted.variant} --seed {submitted.seed} "
            "--output-dir ${{outputs.run_dir}} --data.path ${{inputs.data}} --optim.lr 2e-4"
        )
        data_input = loaded.inputs["data"]
        assert (data_input.type, data_input.mode) == ("uri_folder", "ro_mount")
        assert data_input.path == f"{data_asset.name}:{data_asset.version}"  # "azureml:" dropped
        run_dir = loaded.outputs["run_dir"]
        assert (run_dir.type, run_dir.mode) == ("uri_folder", "rw_mount")
        assert loaded.environment == f"musicgen-lora:{env.version}"
        assert isinstance(loaded.distribution, PyTorchDistribution)
        assert loaded.distribution.process_count_per_instance == 4
        assert loaded.resources.instance_count == 2
        assert loaded.compute == "gpu-cluster"
        assert loaded.experiment_name == "01_baseline"
        assert loaded.display_name == submitted.display_name
        assert loaded.environment_variables["WANDB_RUN_GROUP"] == "01_baseline"
        assert loaded.environment_variables["MUSICGEN_LORA_WANDB_SECRET"] == "wandb-api-key"
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert loaded.tags == {
            "git_commit": commit,
            "git_dirty": "false",
            "uv_lock_sha256": env.lock_sha256,
            "environment": f"musicgen-lora:{env.version}",
            "variant": submitted.variant,
            "seed": str(submitted.seed),
        }
        assert Path(loaded.code) == submission.code.folder
        raw = submitted.yaml_path.read_text()
        assert f"path: azureml:{data_asset.name}:{data_asset.version}" in raw


def test_dry_run_without_data_or_variant_uses_the_experiment_defaults(repo):
    submission = submit_experiment(repo / EXPERIMENT, [], [3], _dry_run(repo))

    (only,) = submission.jobs
    loaded = load_job(only.yaml_path)
    assert only.display_name == "01_baseline-default-s3"
    assert loaded.command.endswith(
        f"python {EXPERIMENT} --seed 3 --output-dir " + "${{outputs.run_dir}}"
    )
    assert not loaded.inputs
    assert loaded.distribution.process_count_per_instance == 1
    assert loaded.resources.instance_count == 1


def test_cli_dry_run_prints_the_plan_and_passes_experiment_flags_through(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    argv = [
        "submit", EXPERIMENT, "--variant", "r4", "--seed", "7", "--compute", "a100",
        "--data", "azureml:loops:2", "--wandb-entity", "lab", "--dry-run",
        "--", "--train.max_steps", "5",
    ]  # fmt: skip
    assert azure_cli.main(argv) == 0

    out = capsys.readouterr().out
    env = environment_spec(repo)
    assert "Dry run: nothing sent to Azure ML" in out
    assert f"musicgen-lora:{env.version}" in out
    assert "azureml:loops:2 (read-only mount)" in out
    assert "01_baseline-r4-s7" in out
    loaded = load_job(repo / ".azureml-dryrun" / "job_01_baseline_r4_s7.yml")
    assert loaded.command.endswith("--data.path ${{inputs.data}} --train.max_steps 5")
    assert loaded.inputs["data"].path == "loops:2"  # load_job drops the "azureml:" prefix
    assert loaded.environment_variables["WANDB_ENTITY"] == "lab"


def test_build_context_holds_exactly_the_dockerfile_and_byte_identical_lock_files(repo):
    submission = submit_experiment(repo / EXPERIMENT, [], [0], _dry_run(repo))

    context = submission.dry_run_dir / "environment"
    assert sorted(p.name for p in context.iterdir()) == sorted(["Dockerfile", *LOCK_FILES])
    for name in LOCK_FILES:
        assert (context / name).read_bytes() == (repo / name).read_bytes()
        assert (context / name).read_bytes() == (REPO_ROOT / name).read_bytes()
    assert (context / "Dockerfile").read_bytes() == dockerfile_template()
    loaded_env = (submission.dry_run_dir / "environment.yml").read_text()
    assert f"version: {submission.environment.version}" in loaded_env


def test_environment_version_changes_with_the_lock_or_dockerfile_and_nothing_else(repo):
    before = environment_spec(repo).version
    assert environment_spec(repo).version == before

    (repo / "README.md").write_text("docs change\n")
    (repo / EXPERIMENT).write_text("print('code change')\n")
    assert environment_spec(repo).version == before

    assert (
        environment_spec(repo, dockerfile=dockerfile_template() + b"\n# tweak\n").version != before
    )

    lock = (repo / "uv.lock").read_bytes()
    (repo / "uv.lock").write_bytes(lock.replace(b'version = "', b'version  = "', 1))
    changed = environment_spec(repo).version
    assert changed != before
    (repo / "uv.lock").write_bytes(lock)
    assert environment_spec(repo).version == before


def test_dockerfile_builds_from_the_lock_without_buildkit_features():
    dockerfile = dockerfile_template().decode()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    base = next(line for line in instructions if line.startswith("FROM "))
    tag = base.rsplit(":", 1)[1]
    assert tag != "latest" and any(ch.isdigit() for ch in tag), base
    assert not any("--mount" in line for line in instructions)
    assert "uv sync --locked --no-install-project --no-dev" in dockerfile
    assert "UV_PYTHON_DOWNLOADS=never" in dockerfile
    assert "UV_PROJECT_ENVIRONMENT=/opt/venv" in dockerfile
    assert "PATH=/opt/venv/bin:$PATH" in dockerfile
    assert "COPY pyproject.toml uv.lock .python-version ./" in dockerfile
    assert "ghcr.io/astral-sh/uv:0.13.9" in dockerfile  # the uv the lock was made with


def test_no_secret_reaches_the_job_yaml_context_or_code(repo, loops, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", FAKE_CLIENT_SECRET)
    (repo / ".env").write_text(f"WANDB_API_KEY={FAKE_WANDB_KEY}\n")  # a local secret file
    with (repo / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write(".env\n")

    submission = submit_experiment(repo / EXPERIMENT, ["r8"], [0], _dry_run(repo, data=str(loops)))
    print(submission.summary())

    written = [p for p in submission.dry_run_dir.rglob("*") if p.is_file()]
    assert len(written) > 5
    for path in written:
        content = path.read_bytes()
        assert FAKE_WANDB_KEY.encode() not in content, path
        assert FAKE_CLIENT_SECRET.encode() not in content, path
    assert FAKE_WANDB_KEY not in capsys.readouterr().out
    env_vars = load_job(submission.jobs[0].yaml_path).environment_variables
    assert not {"WANDB_API_KEY", "AZURE_CLIENT_SECRET"} & set(env_vars)


def test_code_snapshot_is_the_git_tree_without_venvs_caches_outputs_or_git(repo):
    (repo / "src" / "musicgen_lora" / "new_module.py").write_text("")  # untracked, not ignored

    snapshot = write_code_snapshot(repo, repo.parent / "snapshot")

    assert set(snapshot.files) == {
        ".gitignore", *LOCK_FILES, EXPERIMENT,
        "src/musicgen_lora/__init__.py", "src/musicgen_lora/new_module.py",
    }  # fmt: skip
    on_disk = {p.relative_to(snapshot.folder).as_posix() for p in snapshot.folder.rglob("*")}
    assert not {".venv", "runs", "wandb", "token_cache", ".git"} & {
        p.split("/")[0] for p in on_disk
    }
    assert not any("__pycache__" in p for p in on_disk)
    amlignore = (snapshot.folder / ".amlignore").read_text().splitlines()
    assert {".venv/", "runs/", "wandb/", "token_cache/", ".git/"} <= set(amlignore)


def test_dirty_tree_is_refused_unless_overridden_and_the_override_is_tagged(repo):
    (repo / EXPERIMENT).write_text("print('uncommitted edit')\n")

    with pytest.raises(SubmitRefused, match="uncommitted changes") as refused:
        submit_experiment(repo / EXPERIMENT, [], [0], _dry_run(repo))
    assert EXPERIMENT in str(refused.value)
    assert "--allow-dirty" in str(refused.value)
    assert not (repo / ".azureml-dryrun").exists()

    submission = submit_experiment(repo / EXPERIMENT, [], [0], _dry_run(repo, allow_dirty=True))
    loaded = load_job(submission.jobs[0].yaml_path)
    assert loaded.tags["dirty_override"] == "true"
    assert loaded.tags["git_dirty"] == "true"
    assert loaded.environment_variables["MUSICGEN_LORA_GIT_DIRTY"] == "true"
    assert (submission.code.folder / EXPERIMENT).read_text() == "print('uncommitted edit')\n"


def test_renamed_file_is_reported_under_its_new_name(repo):
    _git(repo, "mv", EXPERIMENT, "experiments/01_renamed.py")
    assert read_repo_state(repo).dirty_paths == ("experiments/01_renamed.py",)


def test_untracked_file_counts_as_dirty(repo):
    (repo / "notes.txt").write_text("not committed\n")
    with pytest.raises(SubmitRefused, match=r"notes\.txt"):
        submit_experiment(repo / EXPERIMENT, [], [0], _dry_run(repo))


def test_out_of_date_lock_is_refused(repo, capsys):
    check_lock_up_to_date(repo)  # the copied lock matches the copied pyproject
    pyproject = (repo / "pyproject.toml").read_text()
    (repo / "pyproject.toml").write_text(
        pyproject.replace('"tqdm>=4.67",', '"tqdm>=4.67",\n    "requests>=2.31",', 1)
    )
    _git(repo, "commit", "-qam", "add a dependency without re-locking")

    # Telling "out of date" apart needs the package index (uv re-resolves to compare); on a machine
    # with neither index nor cache uv cannot check at all. Either way the submission is refused.
    refusal = r"uv\.lock is out of date|could not check uv\.lock"
    with pytest.raises(SubmitRefused, match=refusal):
        check_lock_up_to_date(repo)
    # The same refusal through the command line: exit code 2, nothing written.
    assert azure_cli.main(["submit", str(repo / EXPERIMENT), "--compute", "c", "--dry-run"]) == 2
    assert re.search(refusal, capsys.readouterr().err)
    assert not (repo / ".azureml-dryrun").exists()


def test_flags_the_launcher_owns_cannot_be_overridden_after_the_separator(repo):
    with pytest.raises(ValueError, match="--seed is set by the launcher"):
        submit_experiment(repo / EXPERIMENT, [], [0], _dry_run(repo), ["--seed=5"])


def test_local_data_folder_is_versioned_by_content(loops):
    first = local_data_asset(loops)
    assert first == local_data_asset(loops)
    assert first.name == asset_name(loops) == "musicgen-lora-data-my-loops"
    assert (first.file_count, first.total_bytes) == (
        2,
        sum(p.stat().st_size for p in loops.iterdir()),
    )
    (loops / "kick.wav").write_bytes(b"RIFF different audio")
    assert local_data_asset(loops).version != first.version

    assert resolve_data("azureml:loops:3").upload is None
    assert resolve_data("azureml://datastores/blob/paths/loops/").path.startswith("azureml://")
    with pytest.raises(FileNotFoundError, match="neither a local folder"):
        resolve_data(str(loops / "missing"))


def test_workspace_comes_from_flags_then_env_then_config_file(tmp_path):
    project = tmp_path / "project" / "sub"
    project.mkdir(parents=True)
    (tmp_path / "project" / ".azureml").mkdir()
    (tmp_path / "project" / ".azureml" / "config.json").write_text(
        '{"subscription_id": "sub-cfg", "resource_group": "rg-cfg", "workspace_name": "ws-cfg"}'
    )
    (project / "config.json").write_text('{"lora": {"r": 8}}')  # a run's config: not a workspace

    assert resolve_workspace(environ={}, search_from=project) == workspace.WorkspaceRef(
        "sub-cfg", "rg-cfg", "ws-cfg"
    )
    env = {"AZURE_SUBSCRIPTION_ID": "sub-env", "AZUREML_WORKSPACE_NAME": "ws-env"}
    assert resolve_workspace(environ=env, search_from=project) == workspace.WorkspaceRef(
        "sub-env", "rg-cfg", "ws-env"
    )
    assert resolve_workspace(
        workspace_name="ws-flag", environ=env, search_from=project
    ) == workspace.WorkspaceRef("sub-env", "rg-cfg", "ws-flag")

    with pytest.raises(WorkspaceNotConfigured, match=r"--resource-group or \$AZURE_RESOURCE_GROUP"):
        resolve_workspace(subscription_id="s", workspace_name="w", environ={}, search_from=tmp_path)


def test_key_vault_url_from_the_workspace_resource_id():
    resource_id = (
        "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-musicgen"
    )
    assert key_vault_url(resource_id) == "https://kv-musicgen.vault.azure.net/"
    with pytest.raises(ValueError, match="not a Key Vault"):
        key_vault_url("/subscriptions/0000/resourceGroups/rg")


class FakeMLClient:
    """Just enough of MLClient to run a real (non-dry) submission offline."""

    def __init__(self, existing_environments=()):
        self.existing_environments = set(existing_environments)
        self.created_environments = []
        self.created_data = []
        self.submitted = []
        self.context_at_creation = None
        self.workspaces = SimpleNamespace(get=lambda name: SimpleNamespace(
            key_vault=f"/subscriptions/0/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-{name}"
        ))  # fmt: skip
        self.environments = SimpleNamespace(
            get=self._get_environment, create_or_update=self._create_environment
        )
        self.data = SimpleNamespace(get=self._missing, create_or_update=self.created_data.append)
        self.jobs = SimpleNamespace(create_or_update=self._submit, download=None)

    def _get_environment(self, name, version):
        if (name, version) not in self.existing_environments:
            raise ResourceNotFoundError("no such environment")
        return SimpleNamespace(name=name, version=version)

    def _create_environment(self, environment):
        # The build context is a temporary folder: look at it while it exists.
        context = Path(environment.build.path)
        self.context_at_creation = {p.name: p.read_bytes() for p in context.iterdir()}
        self.created_environments.append(environment)
        return environment

    def _missing(self, name, version):
        raise ResourceNotFoundError("no such data")

    def _submit(self, job):
        self.submitted.append(job)
        return SimpleNamespace(name=f"job-{len(self.submitted)}", studio_url="https://studio/x")


def test_real_submission_gets_or_creates_the_environment_and_registers_local_data(
    repo, loops, monkeypatch
):
    client = FakeMLClient()
    monkeypatch.setattr(workspace, "ml_client", lambda ref: client)
    options = SubmitOptions(
        compute="gpu", data=str(loops), subscription="s", resource_group="rg", workspace="ws"
    )

    submission = submit_experiment(repo / EXPERIMENT, ["r8", "r16"], [0], options)

    env = environment_spec(repo)
    (created,) = client.created_environments
    assert (created.name, created.version) == ("musicgen-lora", env.version)
    assert client.context_at_creation == dict(env.files)
    (data,) = client.created_data
    assert (data.name, data.version, data.type) == (
        "musicgen-lora-data-my-loops", local_data_asset(loops).version, "uri_folder"
    )  # fmt: skip
    assert [j.name for j in submission.jobs] == ["job-1", "job-2"]
    assert [j.display_name for j in client.submitted] == ["01_baseline-r8-s0", "01_baseline-r16-s0"]
    for job in client.submitted:
        assert job.environment_variables["MUSICGEN_LORA_KEYVAULT_URL"] == (
            "https://kv-ws.vault.azure.net/"
        )
        assert job.environment == f"azureml:musicgen-lora:{env.version}"
    assert "environment  musicgen-lora:" in submission.summary()
    assert "(created;" in submission.summary()

    # Same lock again: the environment exists, so nothing is rebuilt.
    again = FakeMLClient(existing_environments={("musicgen-lora", env.version)})
    monkeypatch.setattr(workspace, "ml_client", lambda ref: again)
    submit_experiment(repo / EXPERIMENT, [], [0], options)
    assert again.created_environments == []


def test_a_failure_mid_sweep_reports_the_jobs_already_submitted(repo, monkeypatch):
    client = FakeMLClient()
    submit_one = client.jobs.create_or_update

    def fail_on_second(job):
        if client.submitted:
            raise ResourceNotFoundError("compute 'gpu' not found")
        return submit_one(job)

    client.jobs.create_or_update = fail_on_second
    monkeypatch.setattr(workspace, "ml_client", lambda ref: client)
    options = SubmitOptions(compute="gpu", subscription="s", resource_group="rg", workspace="ws")

    with pytest.raises(PartialSubmission, match="submitted 1 of 3 jobs") as stopped:
        submit_experiment(repo / EXPERIMENT, [], [0, 1, 2], options)
    assert [j.name for j in stopped.value.submitted] == ["job-1"]
    assert "01_baseline-default-s0 (job-1)" in str(stopped.value)


def test_download_makes_the_destination_the_run_directory(tmp_path):
    def fake_download(name, *, download_path, output_name):
        run_dir = Path(download_path) / "named-outputs" / output_name
        (run_dir / "wandb" / "offline-run-20260101_000000-abc").mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')

    client = SimpleNamespace(jobs=SimpleNamespace(download=fake_download))
    destination = download_run_dir(client, "job-1", tmp_path / "runs" / "azure" / "job-1")

    assert (destination / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert [p.name for p in offline_wandb_runs(destination)] == ["offline-run-20260101_000000-abc"]
    assert sorted(p.name for p in destination.parent.iterdir()) == ["job-1"]  # no staging left
    with pytest.raises(FileExistsError):
        download_run_dir(client, "job-1", destination)


@pytest.fixture
def wandb_env(monkeypatch):
    """Record the W&B variables so whatever a test sets is undone afterwards."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "AZUREML_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(secrets.KEYVAULT_URL_VAR, raising=False)
    monkeypatch.delenv(secrets.SECRET_NAME_VAR, raising=False)
    return monkeypatch


def test_wandb_outside_azure_ml_is_left_alone(wandb_env, tmp_path):
    assert secrets.configure_wandb_for_job(tmp_path / "run") == "local"
    assert "WANDB_MODE" not in os.environ
    assert not (tmp_path / "run").exists()


def test_wandb_in_a_job_falls_back_to_offline_in_the_output_dir(wandb_env, tmp_path, caplog):
    wandb_env.setenv("AZUREML_RUN_ID", "job-42")
    wandb_env.setenv(secrets.KEYVAULT_URL_VAR, "https://kv-test.vault.azure.net/")
    asked = []

    def vault_unreachable(vault_url, secret_name):
        asked.append((vault_url, secret_name))
        raise PermissionError("identity has no get permission on secrets")

    wandb_env.setattr(secrets, "read_key_vault_secret", vault_unreachable)
    run_dir = tmp_path / "outputs" / "run"

    assert secrets.configure_wandb_for_job(run_dir) == "offline"
    assert asked == [("https://kv-test.vault.azure.net/", "wandb-api-key")]
    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_DIR"] == str(run_dir)
    assert run_dir.is_dir()
    assert "WANDB_API_KEY" not in os.environ
    assert "musicgen-lora azure sync-wandb job-42" in caplog.text


def test_wandb_in_a_job_without_a_vault_url_goes_offline(wandb_env, tmp_path):
    wandb_env.setenv("AZUREML_RUN_ID", "job-43")
    assert secrets.configure_wandb_for_job(tmp_path) == "offline"
    assert os.environ["WANDB_DIR"] == str(tmp_path)


def test_wandb_key_from_key_vault_goes_to_the_environment_only(wandb_env, tmp_path, caplog, capsys):
    wandb_env.setenv("AZUREML_RUN_ID", "job-44")
    wandb_env.setenv(secrets.KEYVAULT_URL_VAR, "https://kv-test.vault.azure.net/")
    wandb_env.setenv(secrets.SECRET_NAME_VAR, "team-wandb-key")
    wandb_env.setattr(
        secrets,
        "read_key_vault_secret",
        lambda url, name: FAKE_WANDB_KEY if name == "team-wandb-key" else "",
    )

    with caplog.at_level("DEBUG"):
        assert secrets.configure_wandb_for_job(tmp_path) == "online"

    assert os.environ["WANDB_API_KEY"] == FAKE_WANDB_KEY
    assert "WANDB_MODE" not in os.environ
    captured = capsys.readouterr()
    assert FAKE_WANDB_KEY not in caplog.text + captured.out + captured.err
    assert list(tmp_path.iterdir()) == []


def test_wandb_key_already_in_the_job_is_used_without_key_vault(wandb_env, tmp_path):
    wandb_env.setenv("AZUREML_RUN_ID", "job-45")
    wandb_env.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    wandb_env.setattr(secrets, "read_key_vault_secret", pytest.fail)
    assert secrets.configure_wandb_for_job(tmp_path) == "online"


def test_dry_run_never_deletes_a_code_folder_it_did_not_write(repo, tmp_path):
    """Issue 11.6: --dry-run-dir pointed at a project folder refuses instead of replacing its code/."""
    mine = tmp_path / "project"
    (mine / "code").mkdir(parents=True)
    (mine / "code" / "train.py").write_text("print('mine')\n")
    with pytest.raises(FileExistsError, match="no dry run wrote"):
        submit_experiment(repo / EXPERIMENT, [], [0], _dry_run(repo, dry_run_dir=mine), [])
    assert (mine / "code" / "train.py").read_text() == "print('mine')\n"
    # Its own folder is replaced on the next dry run, as before.
    fresh = tmp_path / "dry"
    submit_experiment(repo / EXPERIMENT, [], [0], _dry_run(repo, dry_run_dir=fresh), [])
    stale = fresh / "job_stale.yml"
    stale.write_text("old")
    submit_experiment(repo / EXPERIMENT, [], [0], _dry_run(repo, dry_run_dir=fresh), [])
    assert not stale.exists() and (fresh / "code").is_dir()


def test_download_into_an_existing_file_is_refused(tmp_path):
    file = tmp_path / "run"
    file.write_text("keep me")
    with pytest.raises(FileExistsError, match="is an existing file"):
        download_run_dir(SimpleNamespace(), "job", file)
    assert file.read_text() == "keep me"
