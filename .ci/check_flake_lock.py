"""Check that every input flake.nix declares is locked in flake.lock with a narHash.

`nix flake lock` needs network access to GitHub, so flake.lock is written by hand from known pins;
this catches an input added to flake.nix without a lock entry, or an entry that no longer matches
its URL (either would make `nix develop` re-lock, i.e. not be reproducible).

The inputs are read by evaluating flake.nix as a plain Nix expression (no flakes feature, no
store, no network), so this runs with Debian's nix-bin.

Usage: python .ci/check_flake_lock.py [REPO_ROOT]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

NAR_HASH = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")
GITHUB_URL = re.compile(r"^github:(?P<owner>[^/?]+)/(?P<repo>[^/?]+)(?:/(?P<ref>[^?]+))?(?:\?.*)?$")


def flake_inputs(root: Path) -> dict[str, Any]:
    """flake.nix's `inputs` attribute set, as JSON."""
    result = subprocess.run(
        # dummy:// store: evaluating a literal needs no store and no daemon (and non-root users
        # of Debian's nix-bin cannot reach the daemon).
        [
            "nix-instantiate",
            "--store",
            "dummy://",
            "--eval",
            "--strict",
            "--json",
            "--expr",
            "(import ./flake.nix).inputs",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"cannot evaluate flake.nix inputs:\n{result.stderr}")
    return json.loads(result.stdout)


def github_original(url: str) -> dict[str, str] | None:
    """The `original` attributes nix records for a github: URL (None for other URL types)."""
    match = GITHUB_URL.match(url)
    if not match:
        return None
    original = {"type": "github", "owner": match["owner"], "repo": match["repo"]}
    if match["ref"]:
        original["ref"] = match["ref"]
    return original


def lock_problems(inputs: dict[str, Any], lock: dict[str, Any]) -> list[str]:
    problems = []
    if lock.get("version") != 7:
        problems.append(f"flake.lock version is {lock.get('version')!r}, expected 7")
    nodes = lock.get("nodes", {})
    root_inputs = nodes.get(lock.get("root", "root"), {}).get("inputs", {})
    if set(root_inputs) != set(inputs):
        problems.append(
            f"flake.nix declares {sorted(inputs)}, flake.lock's root has {sorted(root_inputs)}"
        )

    for name, spec in sorted(inputs.items()):
        ref = root_inputs.get(name)
        if ref is None:
            continue  # already reported above
        if "follows" in spec:
            if ref != spec["follows"].split("/"):
                problems.append(f"{name}: follows {spec['follows']!r} but flake.lock has {ref!r}")
            continue
        if not isinstance(ref, str) or ref not in nodes:
            problems.append(f"{name}: flake.lock's root points at missing node {ref!r}")
            continue
        wanted = github_original(spec.get("url", ""))
        if wanted is not None and nodes[ref].get("original") != wanted:
            problems.append(
                f"{name}: flake.lock's original {nodes[ref].get('original')} does not match url {spec['url']!r}"
            )
        # `X.inputs.Y.follows = "Z"` is recorded as ["Z"] in X's node.
        for child, child_spec in spec.get("inputs", {}).items():
            locked_child = nodes[ref].get("inputs", {}).get(child)
            if "follows" in child_spec and locked_child != child_spec["follows"].split("/"):
                problems.append(
                    f"{name}.inputs.{child}: follows {child_spec['follows']!r} but flake.lock has {locked_child!r}"
                )

    for node_name, node in sorted(nodes.items()):
        if node_name == lock.get("root", "root"):
            continue
        locked = node.get("locked", {})
        if not NAR_HASH.match(str(locked.get("narHash", ""))):
            problems.append(f"node {node_name!r} has no valid narHash")
        if locked.get("type") == "github" and not re.fullmatch(
            r"[0-9a-f]{40}", str(locked.get("rev", ""))
        ):
            problems.append(f"node {node_name!r} has no full git rev")
        for child, target in node.get("inputs", {}).items():
            if isinstance(target, str) and target not in nodes:
                problems.append(
                    f"node {node_name!r} input {child!r} points at missing node {target!r}"
                )
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else ".").resolve()
    inputs = flake_inputs(root)
    lock = json.loads((root / "flake.lock").read_text(encoding="utf-8"))
    problems = lock_problems(inputs, lock)
    if problems:
        print("flake.lock does not lock flake.nix:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    for name in sorted(inputs):
        ref = lock["nodes"][lock["root"]]["inputs"][name]
        if isinstance(ref, list):
            print(f"  {name}: follows {'/'.join(ref)}")
        else:
            locked = lock["nodes"][ref]["locked"]
            print(f"  {name}: {locked.get('rev', '?')} {locked['narHash']}")
    print(f"flake.lock locks all {len(inputs)} input(s) of flake.nix")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
