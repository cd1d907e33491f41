"""Issue 11.11: a GPU machine whose torch cannot use the GPU fails doctor, the Azure job and training
(unless --train.allow-cpu); a machine without a GPU trains on CPU as before."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import torch

from conftest import REPO_ROOT
from musicgen_lora.tracking import doctor, gpu
from musicgen_lora.tracking.gpu import (
    GpuUnusableError,
    TorchCuda,
    assess,
    gpu_check,
    require_usable_gpu,
)
from musicgen_lora.training.config import RunConfig

CU130_NO_DEVICE = TorchCuda("2.11.0+cu130", "13.0", available=False)


def fake_nvidia_smi(folder: Path, driver: str = "550.54.15", code: int = 0) -> Path:
    """An `nvidia-smi` that prints a driver version, as the real one does for --query-gpu."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho {driver}\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def gpu_machine(tmp_path, monkeypatch):
    """This process sees a machine with /dev/nvidia0, an old driver, and a torch that finds no GPU."""
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidia0").touch()
    smi = fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setattr(gpu, "DEV_DIR", dev)
    monkeypatch.setattr(gpu, "NVIDIA_SMI", (str(smi),))
    monkeypatch.setattr(gpu, "torch_cuda", lambda: CU130_NO_DEVICE)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tmp_path


def test_old_driver_fails_with_the_driver_found_and_the_one_required(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidia0").touch()
    smi = fake_nvidia_smi(tmp_path / "bin")
    result = gpu_check(dev=dev, run=lambda cmd, **kw: subprocess.run([str(smi)], **kw), torch_info=CU130_NO_DEVICE, environ={})
    assert not result.ok and result.gpu_present
    assert "driver 550.54.15" in result.reason and "needs driver >= 580" in result.reason and "CUDA 13.0" in result.reason


def test_driver_read_from_the_kernel_module_when_nvidia_smi_fails(tmp_path):
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.104.05  Release Build\n")
    failing = fake_nvidia_smi(tmp_path / "bin", driver="Failed to initialize NVML", code=9)
    result = gpu_check(dev=tmp_path / "nodev", run=lambda cmd, **kw: subprocess.run([str(failing)], **kw),
                       proc_version=proc, torch_info=CU130_NO_DEVICE, environ={})
    assert not result.ok and "driver 535.104.05" in result.reason and ">= 580" in result.reason


@pytest.mark.parametrize(
    ("nodes", "driver", "torch_info", "visible", "ok", "words"),
    [
        ([], None, CU130_NO_DEVICE, None, True, "no NVIDIA GPU"),
        (["nvidia0"], "580.65.06", TorchCuda("2.11.0+cu130", "13.0", True), None, True, "uses the NVIDIA GPU"),
        (["nvidia0"], "550.54.15", CU130_NO_DEVICE, "", True, "hidden by CUDA_VISIBLE_DEVICES"),
        (["nvidia0"], "550.54.15", TorchCuda("2.11.0+cpu", None, False), None, False, "CPU-only build"),
        (["nvidia0"], "580.95.05", CU130_NO_DEVICE, None, False, "kernel module"),
        (["nvidia0"], None, CU130_NO_DEVICE, None, False, "driver unknown"),
    ],
)
def test_assess(nodes, driver, torch_info, visible, ok, words):
    result = assess(nodes, driver, torch_info, visible)
    assert result.ok is ok and words in result.reason


def test_device_nodes_ignore_control_devices(tmp_path):
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-modeset", "nvidia1", "nvidia0"):
        (tmp_path / name).touch()
    assert gpu.nvidia_device_nodes(tmp_path) == ["nvidia0", "nvidia1"]


def test_missing_nvidia_smi_is_no_driver():
    assert gpu.nvidia_smi_driver(command=("/nonexistent/nvidia-smi",)) is None


def test_doctor_fails_on_a_gpu_machine_torch_cannot_use(gpu_machine, capsys):
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if " gpu " in line)
    assert line.strip().startswith("FAIL") and "550.54.15" in line and ">= 580" in line
    assert "FAILED: gpu" in out


def test_training_refuses_cpu_on_such_a_machine_before_creating_the_run(gpu_machine, tmp_path, capsys):
    from musicgen_lora.training.experiment import main

    run_dir = tmp_path / "run"
    assert main(RunConfig(), {"default": {}}, script="01_baseline.py", argv=["--smoke", "--output-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: NVIDIA GPU present (driver 550.54.15)") and "--train.allow-cpu" in err
    assert err.count("\n") == 1 and not run_dir.exists()


def test_allow_cpu_lets_training_start_on_such_a_machine(gpu_machine, tmp_path, demo_dir, capsys):
    from musicgen_lora.training.experiment import main

    # A LoRA target that matches nothing fails inside train(), so reaching it proves the preflight let it through.
    argv = ["--smoke", "--train.allow-cpu", "--output-dir", str(tmp_path / "run"), "--data.path", str(demo_dir),
            "--data.cache-dir", str(tmp_path / "cache"), "--lora.targets", "nope"]
    assert main(RunConfig(), {"default": {}}, script="01_baseline.py", argv=argv) == 2
    assert "LoRA target 'nope' matches no module" in capsys.readouterr().err
    with pytest.raises(GpuUnusableError, match="allow-cpu"):
        require_usable_gpu(False)


def test_this_machine_passes_and_training_is_not_blocked():
    result = gpu_check()
    assert result.ok, result.reason  # a GPU-less machine, or one whose GPU torch uses
    if not result.gpu_present:
        assert result.reason.startswith("no NVIDIA GPU")
    assert require_usable_gpu(False).ok
    assert any(check.name == "gpu" and check.ok for check in doctor.run_checks(REPO_ROOT / "uv.lock").checks)


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch uses this machine's GPU: nothing to fake")
def test_azure_job_command_stops_at_doctor_before_training(tmp_path):
    """The job's own shell command, run here with an nvidia-smi on PATH that reports a GPU torch cannot use."""
    from musicgen_lora.azure.job import RUN_DIR_BINDING, JobSpec, experiment_command

    spec = JobSpec(PurePosixPath("experiments/01_baseline.py"), None, 0, REPO_ROOT, "azureml:env:1", "gpu",
                   experiment_args=("--smoke",))
    run_dir = tmp_path / "outputs"
    command = experiment_command(spec).replace(RUN_DIR_BINDING, shlex.quote(str(run_dir)))
    fake_nvidia_smi(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  gpu" in result.stdout and "550.54.15" in result.stdout
    assert not run_dir.exists()  # the experiment never started


def test_inputs_as_read_on_a_real_h200_machine(tmp_path):
    """/dev, /proc and nvidia-smi as an H200 machine of this project showed them (driver 580.159.04)."""
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-caps"):
        (tmp_path / name).touch()
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)  \n"
                    "GCC version:  gcc version 15.3.0 (GCC) \n")
    assert gpu.nvidia_device_nodes(tmp_path) == ["nvidia0"]
    assert gpu.proc_driver_version(proc) == "580.159.04"
    smi = fake_nvidia_smi(tmp_path / "bin", driver="580.159.04")
    assert gpu.nvidia_smi_driver(command=(str(smi),)) == "580.159.04"
    result = assess(["nvidia0"], "580.159.04", TorchCuda("2.11.0+cu130", "13.0", True), None)
    assert result.ok and result.reason == "torch 2.11.0+cu130 uses the NVIDIA GPU (driver 580.159.04)"
