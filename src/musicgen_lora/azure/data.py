"""Training data for a job: an existing Azure ML data asset/URI, or a local folder to upload once.

A local folder becomes a `uri_folder` data asset named after the folder, versioned by a hash of
its contents: submitting the same folder again reuses the asset instead of uploading it again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

# Already in Azure: a registered asset (azureml:name:version), a datastore path or a storage URL.
_REMOTE_PREFIXES = ("azureml:", "https://", "http://", "wasbs://", "abfss://", "adl://")
_VERSION_HEX_CHARS = 16
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalDataAsset:
    folder: Path
    name: str
    version: str
    file_count: int
    total_bytes: int

    @property
    def reference(self) -> str:
        return f"azureml:{self.name}:{self.version}"


@dataclass(frozen=True)
class DataSource:
    path: str
    """What the job's `data` input points at (azureml:name:version or a URI)."""
    upload: LocalDataAsset | None = None
    """The local folder that must be registered first, when the data came from this machine."""


def resolve_data(argument: str) -> DataSource:
    """Turn `--data` into the job's input: remote references pass through, folders get hashed."""
    if argument.startswith(_REMOTE_PREFIXES):
        return DataSource(path=argument)
    folder = Path(argument).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--data {argument!r} is neither a local folder nor an Azure ML reference "
            "(azureml:NAME:VERSION, azureml://datastores/..., https://...)"
        )
    asset = local_data_asset(folder.resolve())
    return DataSource(path=asset.reference, upload=asset)


def local_data_asset(folder: Path) -> LocalDataAsset:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not files:
        raise FileNotFoundError(f"--data folder {folder} contains no files")
    digest = hashlib.sha256()
    total = 0
    for path in files:
        relative = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        digest.update(f"{relative}\0{size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        total += size
    return LocalDataAsset(
        folder=folder,
        name=asset_name(folder),
        version=digest.hexdigest()[:_VERSION_HEX_CHARS],
        file_count=len(files),
        total_bytes=total,
    )


def asset_name(folder: Path) -> str:
    """`musicgen-lora-data-<folder name>`, in the characters Azure ML allows in asset names."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", folder.name).strip("-_") or "data"
    return f"musicgen-lora-data-{slug}"[:255]


def get_or_create_data_asset(ml_client: MLClient, asset: LocalDataAsset) -> bool:
    """Register (and upload) `asset` unless that exact version exists. Returns True if created."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data
    from azure.core.exceptions import ResourceNotFoundError

    try:
        ml_client.data.get(name=asset.name, version=asset.version)
        return False
    except ResourceNotFoundError:
        pass
    ml_client.data.create_or_update(
        Data(
            name=asset.name,
            version=asset.version,
            type=AssetTypes.URI_FOLDER,
            path=str(asset.folder),
            description=f"Uploaded by musicgen-lora from {asset.folder.name}/ ({asset.file_count} files).",
        )
    )
    return True
