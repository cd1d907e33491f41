"""`musicgen-lora doctor` passes on this repo's uv.lock and names what differs from a changed one."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from musicgen_lora.tracking import doctor

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "uv.lock"


def _lock_with_version(tmp_path: Path, package: str, version: str) -> Path:
    """A copy of uv.lock where `package` is pinned to `version` instead."""
    text = LOCK.read_text(encoding="utf-8")
    pattern = rf'(\[\[package\]\]\nname = "{package}"\nversion = )"[^"]+"'
    changed, count = re.subn(pattern, rf'\1"{version}"', text)
    assert count == 1, f"{package} is not locked exactly once"
    path = tmp_path / "uv.lock"
    path.write_text(changed, encoding="utf-8")
    return path


# ---- the command, in-process (torch and transformers are imported once for the whole file) ------


def test_doctor_passes_on_the_repo_lock_and_prints_its_sha256(capsys):
    assert doctor.main(["--lock", str(LOCK)]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256(LOCK.read_bytes()).hexdigest() in out
    assert "FAIL" not in out
    for name in ("python", "torch-pair", "transformers", "pytree", "lock"):
        assert re.search(rf"PASS  {name}\s", out), name
    for name in (
        "torch",
        "torchaudio",
        "transformers",
        "peft",
        "accelerate",
        "datasets",
        "wandb",
        "azure-ai-ml",
    ):
        assert re.search(rf"^  {name}\s+\d", out, re.MULTILINE), f"no version shown for {name}"
    assert "cuDNN" in out and "device" in out


def test_doctor_json_is_the_report(capsys):
    assert doctor.main(["--lock", str(LOCK), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert data["lock_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert data["versions"]["torch"].startswith(importlib.metadata.version("torch"))
    assert data["versions"]["transformers"] == importlib.metadata.version("transformers")
    assert {check["name"] for check in data["checks"]} == {
        "python",
        "torch-pair",
        "transformers",
        "pytree",
        "lock",
        "gpu",
    }


def test_doctor_fails_and_names_the_package_on_a_changed_lock(tmp_path, capsys):
    installed = importlib.metadata.version("tqdm")
    lock = _lock_with_version(tmp_path, "tqdm", "4.0.0")
    assert doctor.main(["--lock", str(lock)]) == 1
    out = capsys.readouterr().out
    assert f"tqdm installed {installed}, uv.lock pins 4.0.0" in out
    assert re.search(r"FAIL  lock\s", out)
    assert "uv sync --locked" in out
    # The sha256 identifies the lock actually read, not the repo's.
    assert hashlib.sha256(lock.read_bytes()).hexdigest() in out


def test_run_checks_reports_only_the_lock_check_as_failed(tmp_path):
    lock = _lock_with_version(tmp_path, "numpy", "1.0.0")
    report = doctor.run_checks(lock)
    assert not report.ok
    assert [check.name for check in report.failed] == ["lock"]
    assert "numpy installed" in report.failed[0].reason
    assert report.to_dict()["ok"] is False


def test_python_outside_requires_python_fails(tmp_path):
    text = LOCK.read_text(encoding="utf-8").replace(
        'requires-python = "==3.11.*"', 'requires-python = "==3.10.*"', 1
    )
    assert 'requires-python = "==3.10.*"' in text
    (tmp_path / "uv.lock").write_text(text, encoding="utf-8")
    report = doctor.run_checks(tmp_path / "uv.lock")
    assert [check.name for check in report.failed] == ["python"]
    assert "does not satisfy" in report.failed[0].reason


def test_missing_lock_is_a_usage_error(tmp_path, capsys):
    assert doctor.main(["--lock", str(tmp_path / "uv.lock")]) == 2
    assert "no uv.lock found" in capsys.readouterr().err


def test_unparsable_lock_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "uv.lock").write_text("[[package]\n", encoding="utf-8")
    assert doctor.main(["--lock", str(tmp_path / "uv.lock")]) == 2
    assert "cannot read" in capsys.readouterr().err


# ---- the console script, once, as a user runs it ------------------------------------------------


@pytest.mark.slow
def test_cli_finds_the_lock_from_the_working_directory():
    result = subprocess.run(
        [sys.executable, "-m", "musicgen_lora.cli", "doctor"],
        cwd=REPO / "src",  # the lock is found by walking up
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sha256        {hashlib.sha256(LOCK.read_bytes()).hexdigest()}" in result.stdout


# ---- pure helpers -------------------------------------------------------------------------------


def test_read_lock_skips_the_editable_project_and_keeps_forked_versions(tmp_path):
    (tmp_path / "uv.lock").write_text(
        """version = 1
requires-python = "==3.11.*"

[[package]]
name = "Some_Package"
version = "1.0"
source = { registry = "https://example.invalid/simple" }

[[package]]
name = "some-package"
version = "2.0"
source = { registry = "https://example.invalid/simple" }

[[package]]
name = "musicgen-lora"
version = "0.1.0"
source = { editable = "." }
""",
        encoding="utf-8",
    )
    lock = doctor.read_lock(tmp_path / "uv.lock")
    assert lock.requires_python == "==3.11.*"
    assert lock.packages == {"some-package": {"1.0", "2.0"}}


def test_lock_mismatches_compares_only_installed_distributions():
    locked = {"numpy": {"2.3.1"}, "torch": {"2.11.0"}, "pywin32": {"311"}, "forked": {"1.0", "2.0"}}
    installed = {"numpy": "2.3.1", "torch": "2.11.0", "forked": "2.0", "not-locked": "0.1"}
    assert doctor.lock_mismatches(locked, installed) == []
    installed["numpy"] = "2.2.0"
    installed["forked"] = "3.0"
    assert doctor.lock_mismatches(locked, installed) == [
        "forked installed 3.0, uv.lock pins 1.0 or 2.0",
        "numpy installed 2.2.0, uv.lock pins 2.3.1",
    ]


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Azure_AI.ml", "azure-ai-ml"),
        ("typing_extensions", "typing-extensions"),
        ("PyYAML", "pyyaml"),
        ("a--b__c", "a-b-c"),
    ],
)
def test_normalize_name(raw, normalized):
    assert doctor.normalize_name(raw) == normalized


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("1.0", "1.0.0", True),
        ("2024.01", "2024.1", True),
        ("2.11.0+cu130", "2.11.0+cu130", True),
        ("2.11.0+cu130", "2.11.0", False),
        ("1.0rc1", "1.0", False),
        ("not a version", "not a version", True),
        ("not a version", "1.0", False),
    ],
)
def test_same_version(a, b, equal):
    assert doctor.same_version(a, b) is equal


@pytest.mark.parametrize(
    ("torch_version", "torchaudio_version", "problem"),
    [
        ("2.11.0", "2.11.0", None),
        ("2.11.0+cu130", "2.11.0+cu130", None),
        ("2.11.0+cu130", "2.11.0", None),  # some platforms' wheels carry no build tag
        ("2.11.0", "2.1.0", "different releases"),
        ("2.1.0+cu121", "2.11.0+cu130", "different releases"),
        ("2.11.0+cu130", "2.11.0+cpu", "different builds"),
        ("2.11.0", "garbage!", "cannot parse"),
    ],
)
def test_torch_pair_problem(torch_version, torchaudio_version, problem):
    found = doctor.torch_pair_problem(torch_version, torchaudio_version)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize(
    ("raw", "shown"), [(91900, "9.19.0"), (90100, "9.1.0"), (8906, "8.9.6"), (None, None)]
)
def test_format_cudnn(raw, shown):
    assert doctor.format_cudnn(raw) == shown


def test_find_lock_walks_up_from_the_start(tmp_path):
    (tmp_path / "uv.lock").write_text("version = 1\n", encoding="utf-8")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert doctor.find_lock(nested) == (tmp_path / "uv.lock").resolve()


def test_find_lock_falls_back_to_the_package_location(tmp_path):
    # No uv.lock above a fresh temporary folder: the one above the package source is used.
    assert doctor.find_lock(tmp_path) == LOCK
