"""Checks that refuse a submission which could not be reproduced later.

Each takes the repository path (so tests can run it on a temporary repository) and raises
`SubmitRefused` with a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from musicgen_lora.azure.repo import RepoState

_MAX_LISTED_PATHS = 10


class SubmitRefused(RuntimeError):
    """A guard found a reason not to submit."""


def check_lock_up_to_date(root: Path) -> None:
    """Refuse when uv.lock no longer matches pyproject.toml.

    The job image is built from uv.lock with `uv sync --locked`, which would fail on Azure after a
    full upload and image build; failing here costs a second instead of a cloud round trip.
    """
    uv = shutil.which("uv")
    if uv is None:
        raise SubmitRefused(
            "`uv` is not on PATH: it is needed to check that uv.lock is up to date."
        )
    result = subprocess.run(
        [uv, "lock", "--check"], cwd=root, capture_output=True, text=True, check=False
    )
    if result.returncode == 0:
        return
    detail = (result.stderr or result.stdout).strip().replace("\n", "\n  ")
    if "needs to be updated" in detail:
        raise SubmitRefused(
            f"uv.lock is out of date with pyproject.toml in {root}:\n  {detail}\n"
            "Run `uv lock`, review the diff, commit both files, then submit again."
        )
    raise SubmitRefused(
        f"could not check uv.lock in {root} (`uv lock --check` failed):\n  {detail}"
    )


def check_clean_tree(state: RepoState, *, allow_dirty: bool) -> None:
    """Refuse when the working tree differs from HEAD, unless explicitly overridden.

    A job's tags record the commit it ran; uncommitted changes would make that record a lie.
    With `allow_dirty` the job still runs, and its tags say the override was used.
    """
    if not state.dirty or allow_dirty:
        return
    listed = "\n".join(f"  {path}" for path in state.dirty_paths[:_MAX_LISTED_PATHS])
    more = len(state.dirty_paths) - _MAX_LISTED_PATHS
    if more > 0:
        listed += f"\n  ... and {more} more"
    raise SubmitRefused(
        f"the git tree at {state.root} has uncommitted changes, so the job could not be traced "
        f"back to commit {state.commit[:12]}:\n{listed}\n"
        "Commit (or stash) them and submit again, or pass --allow-dirty to submit anyway "
        "(the job is then tagged dirty_override=true)."
    )
