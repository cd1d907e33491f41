"""The job environment: a Docker build context made from the repo's lock, versioned by its hash.

Same Dockerfile + pyproject.toml + uv.lock + .python-version -> same version -> Azure ML reuses
the image it already built. Any change to one of them -> a new version -> a new image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Environment

ENVIRONMENT_NAME = "musicgen-lora"
# Copied byte-for-byte from the repo root: the files `uv sync --locked` reads.
LOCK_FILES = ("pyproject.toml", "uv.lock", ".python-version")
_VERSION_HEX_CHARS = 16


def dockerfile_template() -> bytes:
    return resources.files("musicgen_lora.azure").joinpath("Dockerfile").read_bytes()


@dataclass(frozen=True)
class EnvironmentSpec:
    files: Mapping[str, bytes]
    """Build context: file name -> exact bytes. Exactly the Dockerfile plus LOCK_FILES."""

    @property
    def name(self) -> str:
        return ENVIRONMENT_NAME

    @property
    def version(self) -> str:
        return context_hash(self.files)[:_VERSION_HEX_CHARS]

    @property
    def lock_sha256(self) -> str:
        """sha256 of uv.lock, as `musicgen-lora doctor` prints it and the run manifest records it."""
        return hashlib.sha256(self.files["uv.lock"]).hexdigest()

    @property
    def reference(self) -> str:
        """How a job names this environment."""
        return f"azureml:{self.name}:{self.version}"


def environment_spec(repo_root: Path, dockerfile: bytes | None = None) -> EnvironmentSpec:
    """The build context for `repo_root`; `dockerfile` replaces the packaged template (tests)."""
    missing = [name for name in LOCK_FILES if not (repo_root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the job image is built from {', '.join(LOCK_FILES)}; missing in {repo_root}: "
            f"{', '.join(missing)}"
        )
    files = {"Dockerfile": dockerfile_template() if dockerfile is None else dockerfile}
    files.update({name: (repo_root / name).read_bytes() for name in LOCK_FILES})
    return EnvironmentSpec(files=files)


def context_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over the context's names and bytes, in a fixed order.

    Names and lengths are hashed too, so moving bytes from one file to another changes the hash.
    """
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def write_build_context(spec: EnvironmentSpec, folder: Path) -> Path:
    """Write exactly the context's files into an empty (or new) `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"build context folder is not empty: {folder}")
    for name, content in spec.files.items():
        (folder / name).write_bytes(content)
    return folder


def environment_entity(spec: EnvironmentSpec, context_folder: Path) -> Environment:
    from azure.ai.ml.entities import BuildContext, Environment

    return Environment(
        name=spec.name,
        version=spec.version,
        build=BuildContext(path=str(context_folder)),
        description="musicgen-lora: uv sync --locked of the repo's uv.lock; version = hash of the context.",
        tags={"uv_lock_sha256": spec.lock_sha256},
    )


def get_or_create_environment(
    ml_client: MLClient, spec: EnvironmentSpec, context_folder: Path
) -> tuple[Environment, bool]:
    """The registered environment for `spec`, creating it first if needed. Returns (env, created)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return ml_client.environments.get(name=spec.name, version=spec.version), False
    except ResourceNotFoundError:
        pass
    created = ml_client.environments.create_or_update(environment_entity(spec, context_folder))
    return created, True
