"""One run per run directory: an exclusive lock held by the process that trains in it.

The lock is an advisory `flock` on `run_dir/run.lock`, so the kernel releases it when its owner
dies (kill -9 included): a stale lock is simply taken over. The file names the owner (pid, host,
start time) so a refused second process can say who holds the directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = "run.lock"


class RunDirLockedError(RuntimeError):
    """Another live process trains in this run directory."""


@dataclass
class RunDirLock:
    path: Path
    _handle: object | None = None

    @classmethod
    def acquire(cls, run_dir: Path) -> RunDirLock:
        """Take the lock or raise RunDirLockedError naming its owner."""
        path = Path(run_dir) / LOCK_FILE
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115  (held open for the whole run)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # A filesystem without flock (some network mounts): fall back to the owner's pid.
                _refuse_if_owner_alive(path, handle)
            else:
                owner = _read_owner(handle)
                handle.close()
                raise RunDirLockedError(_locked_message(run_dir, owner)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_owner_record()) + "\n")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None


def _owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat(timespec="seconds")}


def _read_owner(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}


def _refuse_if_owner_alive(path: Path, handle) -> None:
    owner = _read_owner(handle)
    if owner.get("host") == socket.gethostname() and owner.get("pid") and pid_alive(int(owner["pid"])):
        handle.close()
        raise RunDirLockedError(_locked_message(path.parent, owner))


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _locked_message(run_dir: Path, owner: dict) -> str:
    who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {owner.get('since', '?')})"
    return (
        f"run directory {run_dir} is in use by {who}; wait for that run to end, or pass another "
        "--output-dir to start a separate run"
    )
