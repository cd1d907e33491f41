"""`musicgen-lora` command line: one subcommand per concern, each owned by its module.

Every subcommand module exposes `main(argv: list[str]) -> int` and parses its own arguments
(tyro over a dataclass), so `musicgen-lora doctor` never imports the training stack and
`musicgen-lora azure` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line summary). Modules are imported only when their command runs.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("musicgen_lora.tracking.doctor", "check that this environment matches uv.lock"),
    "prepare": ("musicgen_lora.training.prepare", "encode an audio folder once into the token cache"),
    "generate": ("musicgen_lora.tools.generate", "generate audio with a base model and a LoRA adapter"),
    "demo-data": ("musicgen_lora.data.demo", "write the built-in demo drum loops to a folder"),
    "sweep": ("musicgen_lora.tools.sweep", "run every variant x seed of an experiment"),
    "report": ("musicgen_lora.tracking.report", "compare runs: reports/NN_name.md + plots"),
    "azure": ("musicgen_lora.azure", "submit and manage runs on Azure ML"),
    "loops": ("musicgen_lora.tools.loops", "cut beat-aligned loops out of longer audio"),
    "caption": ("musicgen_lora.tools.caption", "caption an audio folder: tempo, key, CLAP tags -> metadata.jsonl"),
    "export": ("musicgen_lora.tools.export", "export an adapter, alone or merged into the base model"),
    "estimate": ("musicgen_lora.tools.estimate", "predict peak training memory from the architecture (no weights)"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items())
    return f"usage: musicgen-lora COMMAND [ARGS...]\n\ncommands:\n{rows}\n\n`musicgen-lora COMMAND --help` documents each command."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"musicgen-lora: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
