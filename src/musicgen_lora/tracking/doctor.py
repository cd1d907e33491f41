"""`musicgen-lora doctor`: check that this Python environment is the one uv.lock describes.

Environments broke this project's users in the same few ways: transformers without
`EncoderDecoderCache`, torch without the new pytree API, torchaudio built for another torch, and
packages drifting from what was tested. Each of those is one check here. The sha256 of uv.lock
identifies the environment in run manifests; `run_checks` is the entry point for other code (the
training runner records the report and fails fast on Azure).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import platform
import re
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tyro
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

# Shown in the table, in this order: installed metadata, except torch and torchaudio, whose
# runtime __version__ also carries the build tag (+cu130).
REPORTED_DISTRIBUTIONS = (
    "torch",
    "torchaudio",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "wandb",
    "azure-ai-ml",
)
FIX = "run `uv sync --locked` to install exactly what uv.lock pins"


@dataclass(frozen=True)
class Check:
    """One PASS/FAIL line of the report."""

    name: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class DoctorReport:
    lock_path: Path
    lock_sha256: str
    versions: dict[str, str | None]
    """Python, the reported distributions (None: not installed) and torch's CUDA/cuDNN/device."""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "lock_path": str(self.lock_path),
            "lock_sha256": self.lock_sha256,
            "versions": dict(self.versions),
            "checks": [asdict(check) for check in self.checks],
        }


@dataclass(frozen=True)
class LockFile:
    requires_python: str | None
    packages: dict[str, set[str]]
    """Normalised name -> locked versions (a forked resolution can lock several)."""


# ---- pure helpers -------------------------------------------------------------------------------


def normalize_name(name: str) -> str:
    """PEP 503 name normalisation: `Azure_AI.ml` and `azure-ai-ml` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def same_version(a: str, b: str) -> bool:
    """PEP 440 equality (`1.0` == `1.0.0`, local tags included); plain text if either is invalid."""
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a.strip() == b.strip()


def torch_pair_problem(torch_version: str, torchaudio_version: str) -> str | None:
    """Why torchaudio was not built for this torch, or None when they are a pair.

    torchaudio's wheels do not declare the torch they were compiled against, so the release
    numbers must agree (2.11.0 with 2.11.0) and so must the build tags (+cu130 with +cu130).
    A missing tag is accepted: some platforms' wheels carry none.
    """
    try:
        torch_v, audio_v = Version(torch_version), Version(torchaudio_version)
    except InvalidVersion:
        return f"cannot parse versions torch {torch_version!r}, torchaudio {torchaudio_version!r}"
    if torch_v.release != audio_v.release:
        return f"torch {torch_version} and torchaudio {torchaudio_version} are different releases"
    if torch_v.local and audio_v.local and torch_v.local != audio_v.local:
        return f"torch {torch_version} and torchaudio {torchaudio_version} are different builds"
    return None


def lock_mismatches(locked: dict[str, set[str]], installed: dict[str, str]) -> list[str]:
    """'name installed X, uv.lock pins Y' for every installed distribution whose version differs.

    Locked packages that are not installed are for another platform or an optional group.
    """
    problems = []
    for name, version in sorted(installed.items()):
        pins = locked.get(name)
        if pins and not any(same_version(version, pin) for pin in pins):
            problems.append(f"{name} installed {version}, uv.lock pins {' or '.join(sorted(pins))}")
    return problems


def format_cudnn(version: int | None) -> str | None:
    """torch reports cuDNN as one integer: 91900 is 9.19.0 (cuDNN 9), 8906 is 8.9.6 (cuDNN 8)."""
    if not version:
        return None
    major_unit = 10_000 if version >= 90_000 else 1_000
    major, rest = divmod(version, major_unit)
    return f"{major}.{rest // 100}.{rest % 100}"


# ---- reading the lock and the environment -------------------------------------------------------


def find_lock(start: Path | None = None) -> Path | None:
    """The nearest uv.lock above the working directory, else above this package's source."""
    here = Path(__file__).resolve().parent
    for origin in (Path.cwd() if start is None else start, here):
        for folder in (origin.resolve(), *origin.resolve().parents):
            if (folder / "uv.lock").is_file():
                return folder / "uv.lock"
    return None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_lock(path: Path) -> LockFile:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    packages: dict[str, set[str]] = {}
    for package in data.get("package", []):
        source = package.get("source", {})
        # The project itself (editable/virtual) has no fixed version to compare against.
        if "editable" in source or "virtual" in source or "version" not in package:
            continue
        packages.setdefault(normalize_name(package["name"]), set()).add(str(package["version"]))
    return LockFile(requires_python=data.get("requires-python"), packages=packages)


def installed_distributions() -> dict[str, str]:
    """Normalised name -> version of every distribution on sys.path; the first one wins, as for
    imports (a stale duplicate further down the path is never imported)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize_name(name), dist.version)
    return found


def _torch_details() -> dict[str, str | None]:
    """torch and torchaudio runtime versions (with the +cuXXX build tag metadata lacks), CUDA,
    cuDNN and the device; None where something does not import."""
    details: dict[str, str | None] = {}
    try:
        import torch

        details["torch"] = torch.__version__
        details["cuda"] = torch.version.cuda
        details["cudnn"] = format_cudnn(torch.backends.cudnn.version())
        if torch.cuda.is_available():
            details["device"] = torch.cuda.get_device_name(0)
        elif torch.backends.mps.is_available():
            details["device"] = "mps"
        else:
            details["device"] = "cpu"
    except Exception:  # a broken torch is reported by the checks, not raised here
        pass
    try:
        import torchaudio

        details["torchaudio"] = torchaudio.__version__
    except Exception:
        pass
    return details


def collect_versions(installed: dict[str, str]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    versions |= {name: installed.get(name) for name in REPORTED_DISTRIBUTIONS}
    versions |= {"cuda": None, "cudnn": None, "device": None}
    versions |= _torch_details()
    return versions


# ---- the checks ---------------------------------------------------------------------------------


def check_python(requires_python: str | None) -> Check:
    version = platform.python_version()
    if not requires_python:
        return Check("python", False, "uv.lock has no requires-python")
    try:
        ok = SpecifierSet(requires_python).contains(version, prereleases=True)
    except InvalidSpecifier:
        return Check("python", False, f"cannot parse requires-python {requires_python!r}")
    verdict = "satisfies" if ok else "does not satisfy"
    return Check("python", ok, f"{version} {verdict} uv.lock requires-python {requires_python}")


def check_torch_pair() -> Check:
    try:
        import torch
        import torchaudio
    except Exception as error:  # e.g. OSError: libtorchaudio.so: undefined symbol
        return Check("torch-pair", False, f"import failed: {type(error).__name__}: {error}")
    problem = torch_pair_problem(torch.__version__, torchaudio.__version__)
    if problem:
        return Check("torch-pair", False, problem)
    return Check(
        "torch-pair",
        True,
        f"torch {torch.__version__} and torchaudio {torchaudio.__version__} are a matched pair",
    )


def check_transformers() -> Check:
    names = ("MusicgenForConditionalGeneration", "EncoderDecoderCache")
    try:
        transformers = importlib.import_module("transformers")
        # hasattr runs transformers' lazy import of each class: that is where a broken install
        # (say, a torch it was not built for) raises instead of returning False.
        missing = [name for name in names if not hasattr(transformers, name)]
    except Exception as error:
        return Check("transformers", False, f"import failed: {type(error).__name__}: {error}")
    version = transformers.__version__
    if missing:
        return Check("transformers", False, f"transformers {version} lacks {', '.join(missing)}")
    return Check("transformers", True, f"transformers {version} has {' and '.join(names)}")


def check_pytree() -> Check:
    try:
        pytree = importlib.import_module("torch.utils._pytree")
    except Exception as error:
        return Check("pytree", False, f"import failed: {type(error).__name__}: {error}")
    # transformers >= 4.4x registers its output classes with this; older torch only has the
    # private `_register_pytree_node`.
    if not hasattr(pytree, "register_pytree_node"):
        return Check("pytree", False, "torch.utils._pytree.register_pytree_node is missing")
    return Check("pytree", True, "torch.utils._pytree.register_pytree_node exists")


def check_lock(lock: LockFile, installed: dict[str, str]) -> Check:
    problems = lock_mismatches(lock.packages, installed)
    if problems:
        return Check("lock", False, "; ".join(problems))
    compared = sum(1 for name in installed if name in lock.packages)
    absent = len(lock.packages.keys() - installed.keys())
    return Check(
        "lock",
        True,
        f"all {compared} installed distributions pinned by uv.lock have the locked version "
        f"({absent} locked for other platforms or groups are not installed)",
    )


def check_gpu() -> Check:
    """FAIL when an NVIDIA GPU is present that torch cannot use (e.g. a driver older than the
    locked CUDA wheels need): an Azure job's `doctor && python ...` then stops before training."""
    from musicgen_lora.tracking.gpu import gpu_check

    try:
        result = gpu_check()
    except Exception as error:  # a broken torch import is the torch-pair check's to report
        return Check("gpu", False, f"cannot check: {type(error).__name__}: {error}")
    return Check("gpu", result.ok, result.reason)


def run_checks(lock_path: Path) -> DoctorReport:
    """Every check against `lock_path`; raises OSError / tomllib.TOMLDecodeError on a bad lock."""
    lock = read_lock(lock_path)
    installed = installed_distributions()
    checks = [
        check_python(lock.requires_python),
        check_torch_pair(),
        check_transformers(),
        check_pytree(),
        check_lock(lock, installed),
        check_gpu(),
    ]
    return DoctorReport(
        lock_path=lock_path.resolve(),
        lock_sha256=file_sha256(lock_path),
        versions=collect_versions(installed),
        checks=checks,
    )


# ---- the command --------------------------------------------------------------------------------


def format_report(report: DoctorReport) -> str:
    v = report.versions
    torch_extra = (
        f"CUDA {v.get('cuda') or 'none'}, cuDNN {v.get('cudnn') or 'none'}, "
        f"device {v.get('device') or 'unknown'}"
    )
    rows = [("python", f"{v['python']} ({sys.executable})")]
    for name in REPORTED_DISTRIBUTIONS:
        shown = v.get(name) or "not installed"
        rows.append(
            (name, f"{shown} ({torch_extra})" if name == "torch" and v.get(name) else shown)
        )
    rows += [("uv.lock", str(report.lock_path)), ("sha256", report.lock_sha256)]
    width = max(len(name) for name, _ in rows)
    lines = ["environment", *(f"  {name:<{width}}  {value}" for name, value in rows), "", "checks"]
    width = max(len(check.name) for check in report.checks)
    lines += [
        f"  {'PASS' if check.ok else 'FAIL'}  {check.name:<{width}}  {check.reason}"
        for check in report.checks
    ]
    lines.append("")
    if report.ok:
        lines.append(f"OK: this environment matches uv.lock {report.lock_sha256}")
    else:
        names = ", ".join(check.name for check in report.failed)
        # A driver too old for the wheels is fixed on the machine, not in the environment.
        fix = "see the gpu line above" if [c.name for c in report.failed] == ["gpu"] else FIX
        lines.append(f"FAILED: {names}. Fix: {fix}.")
    return "\n".join(lines)


@dataclass(frozen=True)
class DoctorArgs:
    """Check that this Python environment matches uv.lock; exit 0 only if every check passes."""

    lock: Path | None = None
    """uv.lock to compare against; default: the nearest above the working directory or the package."""
    json: bool = False
    """Print the report as JSON instead of a table."""


def main(argv: list[str]) -> int:
    args = tyro.cli(DoctorArgs, args=argv, prog="musicgen-lora doctor")
    lock_path = args.lock or find_lock()
    if lock_path is None or not lock_path.is_file():
        where = lock_path or "none above the working directory or the package"
        print(f"error: no uv.lock found ({where}); pass --lock PATH", file=sys.stderr)
        return 2
    try:
        report = run_checks(lock_path)
    except (OSError, tomllib.TOMLDecodeError) as error:
        print(f"error: cannot read {lock_path}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1
