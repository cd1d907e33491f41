"""The code a job runs: a copy of the repo's working tree as git sees it.

Uploading the repo root directly would also upload whatever sits there untracked and ignored
(.venv, token caches, run outputs, a stray .env). Copying exactly the files git tracks (plus new,
not-ignored ones, which only exist with --allow-dirty) gives a small upload that matches the
commit in the job's tags.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from musicgen_lora.azure.repo import working_tree_files

# Never uploaded, even if a .gitignore forgets them: environments, caches, run outputs, git itself.
EXCLUDED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".cache",
        "runs",
        "wandb",
        "token_cache",
        "outputs",
        ".azureml-dryrun",
    }
)
EXCLUDED_SUFFIXES = (".pyc",)

# Written into the snapshot: Azure ML reads it before uploading (it takes precedence over any
# .gitignore), so the exclusions hold even if someone points a job at the snapshot by hand.
AMLIGNORE = "".join(f"{name}/\n" for name in sorted(EXCLUDED_DIRS)) + "*.pyc\n"


@dataclass(frozen=True)
class CodeSnapshot:
    folder: Path
    files: tuple[str, ...]
    """Repo-relative POSIX paths copied into `folder` (the generated .amlignore not included)."""
    total_bytes: int


def is_uploaded(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return not any(part in EXCLUDED_DIRS for part in parts[:-1]) and not path.endswith(
        EXCLUDED_SUFFIXES
    )


def snapshot_files(repo_root: Path) -> list[str]:
    return [path for path in working_tree_files(repo_root) if is_uploaded(path)]


def write_code_snapshot(repo_root: Path, folder: Path) -> CodeSnapshot:
    """Copy the job's code into an empty (or new) `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"code snapshot folder is not empty: {folder}")
    files = snapshot_files(repo_root)
    total = 0
    for path in files:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / path, target)
        total += target.stat().st_size
    (folder / ".amlignore").write_text(AMLIGNORE)
    return CodeSnapshot(folder=folder, files=tuple(files), total_bytes=total)
