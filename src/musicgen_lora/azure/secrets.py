"""The W&B key inside an Azure ML job: from the workspace Key Vault, never from the job spec.

The launcher puts only the vault URL and the secret's name into the job. At the start of a run the
training runner calls `configure_wandb_for_job`, which reads the key with the compute's managed
identity and keeps it in this process's environment. If that fails, W&B logs offline into the
run's output folder, which survives the job; `musicgen-lora azure sync-wandb JOB` uploads it later.
This module imports nothing from Azure until it is inside a job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

# Set by Azure ML in every job's processes.
AZUREML_JOB_MARKERS = ("AZUREML_RUN_ID",)
KEYVAULT_URL_VAR = "MUSICGEN_LORA_KEYVAULT_URL"
SECRET_NAME_VAR = "MUSICGEN_LORA_WANDB_SECRET"
DEFAULT_SECRET_NAME = "wandb-api-key"
# Azure ML sets this to the client id of the compute's managed identity (needed for user-assigned).
IDENTITY_CLIENT_ID_VAR = "DEFAULT_IDENTITY_CLIENT_ID"

WandbSetup = Literal["local", "online", "offline"]


def running_in_azure_ml() -> bool:
    return any(os.environ.get(marker) for marker in AZUREML_JOB_MARKERS)


def read_key_vault_secret(vault_url: str, secret_name: str) -> str:
    """The secret's value, read with the compute's managed identity."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    credential = ManagedIdentityCredential(client_id=os.environ.get(IDENTITY_CLIENT_ID_VAR) or None)
    with credential, SecretClient(vault_url=vault_url, credential=credential) as client:
        value = client.get_secret(secret_name).value
    if not value:
        raise ValueError(f"secret {secret_name!r} in {vault_url} is empty")
    return value


def configure_wandb_for_job(output_dir: Path) -> WandbSetup:
    """Make W&B usable in this process; call once per run, before W&B starts.

    Returns "local" outside Azure ML (nothing changed), "online" when a W&B key is in the
    environment, or "offline" when W&B will write into `output_dir` for a later sync.
    The key is only ever placed in os.environ: never printed, logged or written anywhere.
    """
    if not running_in_azure_ml():
        return "local"
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    vault_url = os.environ.get(KEYVAULT_URL_VAR, "")
    secret_name = os.environ.get(SECRET_NAME_VAR) or DEFAULT_SECRET_NAME
    try:
        if not vault_url.startswith("https://"):
            raise ValueError(f"${KEYVAULT_URL_VAR} is not a vault URL: {vault_url!r}")
        os.environ["WANDB_API_KEY"] = read_key_vault_secret(vault_url, secret_name)
    except Exception as error:  # any failure: train anyway, log offline, sync later
        _log_offline(output_dir, f"{type(error).__name__}: {error}", secret_name)
        return "offline"
    log.info("W&B key read from Key Vault secret %r; W&B logs online.", secret_name)
    return "online"


def _log_offline(output_dir: Path, reason: str, secret_name: str) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = "offline"
    # W&B writes its offline run under $WANDB_DIR/wandb/: inside the job's output, so it survives.
    os.environ["WANDB_DIR"] = str(output_dir)
    job = os.environ.get("AZUREML_RUN_ID", "JOB")
    log.warning(
        "No W&B key from Key Vault secret %r (%s). W&B logs offline into %s; upload it later "
        "with `musicgen-lora azure sync-wandb %s`.",
        secret_name,
        reason,
        output_dir,
        job,
    )
