"""Output paths: refuse, before writing, anything that could delete or overwrite the user's files.

Commands that write an `--out` folder check it here first: an existing file where a folder is
expected is an error (exit 2, one line), and a folder about to be replaced must not be, contain or
lie inside a run directory or an adapter.
"""

from __future__ import annotations

import os
from pathlib import Path

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
