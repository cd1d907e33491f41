"""Which Azure ML workspace to talk to, and an authenticated client for it.

Nothing is hard-coded. Each of subscription, resource group and workspace comes from, in order:
a command-line flag, an environment variable, or the standard Azure ML `config.json` (in the
current folder or a parent, directly or under `.azureml/`, as the portal's "download config.json"
and `MLClient.from_config` use it). Credentials come from azure-identity's default chain
(`az login`, a managed identity, or AZURE_CLIENT_ID/AZURE_TENANT_ID/... of a service principal).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

ENV_VARS = {
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZURE_RESOURCE_GROUP",
    "workspace_name": "AZUREML_WORKSPACE_NAME",
}
_FLAGS = {
    "subscription_id": "--subscription",
    "resource_group": "--resource-group",
    "workspace_name": "--workspace",
}
_CONFIG_CANDIDATES = ("config.json", ".azureml/config.json")


class WorkspaceNotConfigured(RuntimeError):
    """Some part of the workspace's identity was found nowhere."""


@dataclass(frozen=True)
class WorkspaceRef:
    subscription_id: str
    resource_group: str
    workspace_name: str


def find_config_file(start: Path) -> Path | None:
    """The nearest Azure ML workspace config.json at or above `start`."""
    for folder in (start.resolve(), *start.resolve().parents):
        for candidate in _CONFIG_CANDIDATES:
            path = folder / candidate
            if path.is_file() and _read_config(path):
                return path
    return None


def _read_config(path: Path) -> dict[str, str]:
    """The workspace fields of `path`, or {} if it is some other config.json (a run's, say)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict):
        return {}
    fields = {key: content.get(key) for key in ENV_VARS}
    return {key: value for key, value in fields.items() if isinstance(value, str) and value}


def resolve_workspace(
    *,
    subscription_id: str | None = None,
    resource_group: str | None = None,
    workspace_name: str | None = None,
    environ: Mapping[str, str] | None = None,
    search_from: Path | None = None,
) -> WorkspaceRef:
    environ = os.environ if environ is None else environ
    flags = {
        "subscription_id": subscription_id,
        "resource_group": resource_group,
        "workspace_name": workspace_name,
    }
    config_path = find_config_file(search_from or Path.cwd())
    from_config = _read_config(config_path) if config_path else {}
    resolved = {
        key: flags[key] or environ.get(ENV_VARS[key]) or from_config.get(key) for key in ENV_VARS
    }
    missing = [key for key, value in resolved.items() if not value]
    if missing:
        hints = "\n".join(f"  {key}: {_FLAGS[key]} or ${ENV_VARS[key]}" for key in missing)
        raise WorkspaceNotConfigured(
            "no Azure ML workspace given; missing:\n"
            f"{hints}\n"
            "or put the workspace's config.json (Azure ML studio: workspace menu -> Download "
            "config file) in this folder, a parent, or .azureml/."
        )
    return WorkspaceRef(**resolved)  # type: ignore[arg-type]


def ml_client(workspace: WorkspaceRef) -> MLClient:
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(
        credential=DefaultAzureCredential(),
        subscription_id=workspace.subscription_id,
        resource_group_name=workspace.resource_group,
        workspace_name=workspace.workspace_name,
    )


_KEY_VAULT_ID = re.compile(r"/providers/Microsoft\.KeyVault/vaults/([^/]+)/?$", re.IGNORECASE)


def key_vault_url(resource_id: str) -> str:
    """`.../providers/Microsoft.KeyVault/vaults/<name>` -> `https://<name>.vault.azure.net/`."""
    match = _KEY_VAULT_ID.search(resource_id.strip())
    if match is None:
        raise ValueError(f"not a Key Vault resource id: {resource_id!r}")
    return f"https://{match.group(1)}.vault.azure.net/"


def workspace_key_vault_url(client: MLClient, workspace: WorkspaceRef) -> str:
    """The URL of the Key Vault that belongs to the workspace (where the W&B key is kept)."""
    resource = client.workspaces.get(workspace.workspace_name)
    if not resource.key_vault:
        raise WorkspaceNotConfigured(f"workspace {workspace.workspace_name} reports no Key Vault")
    return key_vault_url(resource.key_vault)
