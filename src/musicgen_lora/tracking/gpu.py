"""GPU preflight: a machine with an NVIDIA GPU that torch cannot use is an error, not a CPU run.

The locked torch wheels are CUDA 13 builds (torch 2.11.0+cu130), which need an NVIDIA driver
>= 580. On an older driver torch quietly reports no CUDA device, and training used to start on the
CPU of a GPU machine (an Azure job then ran for days). These functions take their inputs (a /dev
folder, a command runner, torch's facts, the environment) so tests can fake any machine.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEV_DIR = Path("/dev")
PROC_VERSION = Path("/proc/driver/nvidia/version")
NVIDIA_SMI = ("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
# Minimum Linux driver of each CUDA major version (NVIDIA's minor-version compatibility table).
MIN_DRIVER = {13: "580", 12: "525.60.13", 11: "450.80.02"}
_HIDDEN = {"", "-1", "none", "nodevfiles"}


class GpuUnusableError(RuntimeError):
    """An NVIDIA GPU is present but torch cannot use it; the message says why and what to do."""


@dataclass(frozen=True)
class TorchCuda:
    version: str
    """torch.__version__, e.g. 2.11.0+cu130."""
    cuda: str | None
    """torch.version.cuda: the CUDA the wheels were built for (None: a CPU-only build)."""
    available: bool
    """torch.cuda.is_available()."""


@dataclass(frozen=True)
class GpuCheck:
    ok: bool
    gpu_present: bool
    reason: str


def torch_cuda() -> TorchCuda:
    import torch

    return TorchCuda(torch.__version__, torch.version.cuda, torch.cuda.is_available())


def nvidia_device_nodes(dev: Path = DEV_DIR) -> list[str]:
    """GPU device nodes (/dev/nvidia0, ...); nvidiactl and nvidia-uvm exist without a GPU too."""
    try:
        return sorted(p.name for p in dev.iterdir() if re.fullmatch(r"nvidia\d+", p.name))
    except OSError:
        return []


Runner = Callable[..., subprocess.CompletedProcess]


def nvidia_smi_driver(run: Runner = subprocess.run, command: tuple[str, ...] = NVIDIA_SMI) -> str | None:
    """The driver version nvidia-smi reports, or None when it is missing or fails."""
    try:
        result = run(list(command), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (result.stdout or "").split()
    return lines[0] if result.returncode == 0 and lines else None


def proc_driver_version(path: Path = PROC_VERSION) -> str | None:
    """The loaded kernel module's version (readable even when nvidia-smi fails on a mismatch)."""
    try:
        match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", path.read_text())
    except OSError:
        return None
    return match.group(1) if match else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def required_driver(cuda: str | None) -> str | None:
    """Minimum driver for torch's CUDA build (None: unknown or a CPU build)."""
    if not cuda:
        return None
    return MIN_DRIVER.get(_version_tuple(cuda)[0])


def assess(nodes: list[str], driver: str | None, torch_info: TorchCuda, visible: str | None) -> GpuCheck:
    """The verdict from what was found; pure, so every machine can be described in a test."""
    if not nodes and driver is None:
        return GpuCheck(True, False, "no NVIDIA GPU (no /dev/nvidia[0-9]* device, nvidia-smi not working): runs use the CPU")
    shown = driver or "unknown"
    if torch_info.available:
        return GpuCheck(True, True, f"torch {torch_info.version} uses the NVIDIA GPU (driver {shown})")
    if visible is not None and visible.strip().lower() in _HIDDEN:
        return GpuCheck(True, True, f"NVIDIA GPU present (driver {shown}) but hidden by CUDA_VISIBLE_DEVICES={visible!r}: runs use the CPU")
    prefix = f"NVIDIA GPU present (driver {shown}) but torch {torch_info.version} cannot use it: "
    if not torch_info.cuda:
        return GpuCheck(False, True, prefix + "it is a CPU-only build; run `uv sync --locked`")
    needed = required_driver(torch_info.cuda)
    if needed and (driver is None or _version_tuple(driver) < _version_tuple(needed)):
        return GpuCheck(False, True, prefix + f"its CUDA {torch_info.cuda} build needs driver >= {needed}; update the NVIDIA driver")
    return GpuCheck(False, True, prefix + f"the driver meets CUDA {torch_info.cuda}'s minimum ({needed or 'unknown'}); "
                    "check that the nvidia kernel module is loaded and matches its libraries (run nvidia-smi)")


def gpu_check(
    *,
    dev: Path | None = None,
    run: Runner = subprocess.run,
    proc_version: Path | None = None,
    torch_info: TorchCuda | None = None,
    environ: Mapping[str, str] | None = None,
) -> GpuCheck:
    """Look at this machine (or the faked parts given) and assess it."""
    nodes = nvidia_device_nodes(dev or DEV_DIR)
    driver = nvidia_smi_driver(run, NVIDIA_SMI) or proc_driver_version(proc_version or PROC_VERSION)
    environ = os.environ if environ is None else environ
    return assess(nodes, driver, torch_info or torch_cuda(), environ.get("CUDA_VISIBLE_DEVICES"))


def require_usable_gpu(allow_cpu: bool, check: GpuCheck | None = None) -> GpuCheck:
    """Raise GpuUnusableError when a GPU is present that torch cannot use, unless CPU is allowed."""
    check = check or gpu_check()
    if check.ok:
        return check
    if allow_cpu:
        log.warning("%s; training on CPU as --train.allow-cpu asks", check.reason)
        return check
    raise GpuUnusableError(f"{check.reason}; refusing to train on the CPU of a GPU machine (pass --train.allow-cpu to do it anyway)")
