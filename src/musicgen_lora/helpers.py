"""Small helpers every package uses: atomic file writes, file hashing, dotted config names, and
output-path guards.

Output paths: refuse, before writing, anything that could delete or overwrite the user's files.

Commands that write an `--out` folder check it here first: an existing file where a folder is
expected is an error (exit 2, one line), and a folder about to be replaced must not be, contain or
lie inside a run directory or an adapter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

RUN_FILES = ("config.json", "manifest.json")


class OutputPathError(ValueError):
    """An output path would clobber something; the one-line message names the option and the path."""


def _real(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def overlaps(a: Path, b: Path) -> bool:
    """a is b, lies inside b, or contains b (symlinks resolved)."""
    a, b = _real(a), _real(b)
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def run_directory(adapter: Path) -> Path | None:
    """The run directory an adapter belongs to: the folder above `checkpoints/` for a checkpoint's
    adapter, else the adapter's parent when it holds config.json or manifest.json."""
    adapter = _real(adapter)
    for folder in adapter.parents:
        if folder.name == "checkpoints":
            return folder.parent
    if any((adapter.parent / name).is_file() for name in RUN_FILES):
        return adapter.parent
    return None


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it,
    and setting it to read it races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(paths) -> None:
    """Give files the mode a plain open() would (0666 & ~umask). safetensors (0.8) writes through a
    private temporary file and leaves 0600, unreadable to the group that shares the runs."""
    wanted = 0o666 & ~current_umask()
    for path in paths:
        if Path(path).is_file() and not Path(path).is_symlink():
            os.chmod(path, wanted)


def require_folder(option: str, path: Path) -> Path:
    """`path` as a folder to write into: new or an existing folder, never an existing file."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is an existing file; give a folder (new or existing)")
    return path


def refuse_overlap(option: str, out: Path, protected: dict[str, Path | None]) -> None:
    """Raise when `out` is, contains or lies inside one of `protected` (what -> path)."""
    for what, path in protected.items():
        if path is not None and overlaps(out, path):
            raise OutputPathError(f"{option} {out} is, contains or lies inside the {what} {path}; choose a folder outside it")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see a half-written file.

    mkstemp creates the file 0600; it gets the mode a plain open() would give (0666 & ~umask), so
    run files and the token cache stay readable to a shared group.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"max_steps": 3}} -> {"train.max_steps": 3}: the dotted names flags use."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_experiment(path: Path) -> ModuleType:
    """Import an experiment script as a module (its `if __name__ == "__main__"` block does not run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment script at {path}")
    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("CONFIG", "VARIANTS"):
        if not hasattr(module, name):
            raise ValueError(f"{path} defines no {name}: not an experiment script")
    return module
