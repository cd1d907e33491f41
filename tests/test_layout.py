"""The package layout: imports point one way along the data flow, modules stay small, and every
command's `--help` answers without importing the training stack."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "musicgen_lora"

# package -> the packages its modules may import (itself always allowed). "helpers" is the shared
# helpers module; "cli" the `musicgen-lora` dispatcher; "root" the package's __init__.
ALLOWED = {
    "helpers": set(),
    "modeling": {"helpers"},
    "data": {"helpers", "modeling"},
    "evaluation": {"helpers", "data", "modeling"},
    "tracking": {"helpers", "data", "modeling"},
    "azure": {"helpers"},
    "training": {"helpers", "data", "modeling", "evaluation", "tracking", "azure"},
    "tools": {"helpers", "data", "modeling", "evaluation", "tracking", "training", "azure"},
    "cli": {"helpers", "data", "modeling", "evaluation", "tracking", "training", "tools", "azure"},
    "root": set(),
}
MAX_LINES = 400


def _package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return parts[1].removesuffix(".py")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every musicgen_lora module this file imports, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            # `from musicgen_lora import tools` imports the subpackage itself
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if base == "musicgen_lora"]
    return [(line, name) for line, name in found if name.split(".")[0] == "musicgen_lora"]


def test_layout_walker_sees_every_import_form(tmp_path):
    """The walker itself: absolute, relative, lazy and `from package import module` imports."""
    source = tmp_path / "mod.py"
    source.write_text(
        "import musicgen_lora.training.loop\nfrom ..tools import loops\n"
        "def f():\n    from musicgen_lora import tracking\n"
    )
    names = {name for _, name in _imports(source, "musicgen_lora.data.mod")}
    assert {"musicgen_lora.training.loop", "musicgen_lora.tools", "musicgen_lora.tracking"} <= names


def test_imports_point_one_way():
    modules = _modules()
    assert "musicgen_lora.data.windows" in modules and "musicgen_lora.training.loop" in modules
    reverse = []
    for module, path in modules.items():
        package = _package_of(module)
        assert package in ALLOWED, f"{module}: package {package!r} has no place in the layout"
        for line, imported in _imports(path, module):
            target = _package_of(imported)
            if imported == "musicgen_lora" or target == package:
                continue
            if target not in ALLOWED[package]:
                reverse.append(f"{path.relative_to(REPO_ROOT)}:{line} ({package}) imports {imported} ({target})")
    assert not reverse, "imports against the layout:\n" + "\n".join(reverse)


def test_every_subpackage_says_what_lives_there():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert (doc and "Imports:" in doc) or init.parent.name == "azure", f"{init}: no docstring with its imports rule"


def test_no_module_over_the_size_limit():
    long = {
        str(path.relative_to(REPO_ROOT)): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


HELP_PROBE = """
import contextlib, io, json, runpy, sys
argv = sys.argv[1:]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        if argv[0].endswith(".py"):
            sys.argv = argv
            runpy.run_path(argv[0], run_name="__main__")
        else:
            from musicgen_lora import cli
            cli.main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate", "datasets", "librosa", "wandb") if m in sys.modules)
print(json.dumps({"heavy": heavy, "help": out.getvalue()}))
"""


def _commands() -> list[list[str]]:
    from musicgen_lora.cli import SUBCOMMANDS

    experiments = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "experiments").glob("[0-9]*.py"))
    return [["--help"]] + [[name, "--help"] for name in SUBCOMMANDS] + [[script, "--help"] for script in experiments]


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c))
def test_help_imports_no_heavy_library(command):
    """`--help` must answer fast: parsing never imports torch or the ML stack (they load when a
    command runs). Measured, not timed here: see the README's Code map."""
    result = subprocess.run([sys.executable, "-c", HELP_PROBE, *command], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "usage" in report["help"].lower(), report["help"][:500]
    assert report["heavy"] == [], f"{' '.join(command)} imported {report['heavy']} just to print its help"
