"""What git says about the repository a job is submitted from: its root, commit and dirty files."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


class NotAGitRepository(RuntimeError):
    """The launcher needs git: a job records the commit it was submitted from."""


@dataclass(frozen=True)
class RepoState:
    root: Path
    """The repository's top-level directory."""
    commit: str
    """Full sha of HEAD."""
    dirty_paths: tuple[str, ...]
    """Modified, staged, deleted or untracked (not ignored) paths: what makes the tree differ from HEAD."""

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_paths)


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise NotAGitRepository(
            f"`git {' '.join(args)}` failed in {root}: {result.stderr.strip() or 'no output'}"
        )
    return result.stdout


def find_repo_root(start: Path) -> Path:
    """The git top-level directory containing `start` (a file or a folder)."""
    folder = start if start.is_dir() else start.parent
    return Path(_git(folder.resolve(), "rev-parse", "--show-toplevel").strip())


def read_repo_state(root: Path) -> RepoState:
    commit = _git(root, "rev-parse", "--verify", "HEAD").strip()
    # --porcelain lists untracked files too: they would be uploaded with the code but are in no commit.
    status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    return RepoState(root=root, commit=commit, dirty_paths=_paths_from_porcelain(status))


def _paths_from_porcelain(status: str) -> tuple[str, ...]:
    entries = iter(status.split("\0"))
    paths = []
    for entry in entries:
        if not entry:
            continue
        paths.append(entry[3:])  # "XY path"
        if entry[0] in "RC":  # a rename or copy is followed by its source path, without "XY "
            next(entries, None)
    return tuple(paths)


def working_tree_files(root: Path) -> list[str]:
    """Tracked files plus untracked files git does not ignore, as repo-relative POSIX paths.

    This is the code a job gets: whatever .gitignore keeps out of git (virtualenvs, caches, run
    outputs, local secrets such as .env) stays out of the upload too.
    """
    listing = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    paths = sorted({path for path in listing.split("\0") if path})
    # --cached still lists tracked files deleted from the working tree; there is nothing to upload.
    return [path for path in paths if (root / path).is_file()]
