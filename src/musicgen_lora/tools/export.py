"""`musicgen-lora export`: a trained adapter alone (PEFT format) or merged into its base model as a
standalone MusicGen checkpoint (safetensors + processor + generation config), with a model card.

The card states the base model, the training data (from the run's config.json and its token cache:
files, total duration, sample captions), the training configuration and the license of the base
weights: Meta's MusicGen checkpoints are CC-BY-NC 4.0, and an adapter or a merged model made from
them is for non-commercial use as well.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from musicgen_lora.helpers import (
    OutputPathError,
    refuse_overlap,
    require_folder,
    respect_umask,
    run_directory,
)
from musicgen_lora.tools.model_card import data_description, model_card

EXPORT_RECORD = ".musicgen-lora-export.json"
"""Written into every export: the files it wrote, which a later --overwrite may delete (only those)."""


class ExportError(RuntimeError):
    """The export cannot be made; the message says what to change."""


def export(
    adapter: Path,
    out: Path,
    *,
    merge: bool = False,
    model_name: str | None = None,
    run_dir: Path | None = None,
    cache_dir: Path | None = None,
    overwrite: bool = False,
    revision: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write the adapter (or the merged model), the processor (tokenizer + feature extractor
    config) and README.md to `out`; returns `out`. `adapter` is a folder or a Hub repo id.

    `run_dir` (default: the adapter's run directory, see outputs.run_directory) and `cache_dir`
    (default: the token cache that run used, when it is found) only feed the model card, whose usage
    names `repo_id` when the export goes to the Hub. The base model is loaded at `revision`, default
    the one the adapter recorded (--model.revision).
    """
    from musicgen_lora.modeling.generate import base_of
    from musicgen_lora.modeling.hub import ADAPTER_FILES, resolve_adapter

    adapter, out = resolve_adapter(adapter), Path(out).expanduser()
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise ExportError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    if not (model_name or json.loads(config_path.read_text()).get("base_model_name_or_path")):
        raise ExportError(f"{config_path} does not name its base model; pass --model")
    base, revision = base_of(adapter, model_name, revision)
    run_dir = run_dir or run_directory(adapter)
    try:
        _prepare_out(out, adapter, run_dir, overwrite)
    except OutputPathError as error:
        raise ExportError(str(error)) from None
    run_config = json.loads((run_dir / "config.json").read_text()) if run_dir and (run_dir / "config.json").is_file() else None

    out.mkdir(parents=True, exist_ok=True)
    try:
        if merge:
            model_config = _save_merged(adapter, base, out, revision)
        else:
            for name in ADAPTER_FILES:
                if (adapter / name).is_file():
                    shutil.copy2(adapter / name, out / name)  # byte-identical: the adapter as trained
            model_config = _base_config(base, revision)
            _save_base_processor(base, revision, out)
        data = data_description(run_config, model_config, base, cache_dir)
        card = model_card(base, merged=merge, run_config=run_config, data=data, revision=revision,
                          architecture=_architecture(model_config), location=repo_id or "PATH")
        (out / "README.md").write_text(card)
    finally:  # even a failed export lists what it wrote, so --overwrite can replace it
        _record_export(out)
    return out


def _prepare_out(out: Path, adapter: Path, run_dir: Path | None, overwrite: bool) -> None:
    """Refuse an --out that would clobber the adapter, its run or the user's files; with
    --overwrite, remove the files a previous export wrote there (and nothing else)."""
    require_folder("--out", out)
    refuse_overlap("--out", out, {"adapter folder": adapter})
    if overwrite:  # replacing must never reach the run that produced the adapter
        refuse_overlap("--out", out, {"run directory": run_dir})
    if not (out.exists() and any(out.iterdir())):
        return
    if not overwrite:
        raise OutputPathError(f"--out {out} exists and is not empty; pass --overwrite or choose another folder")
    for name in _previous_export(out):
        (out / name).unlink(missing_ok=True)
    (out / EXPORT_RECORD).unlink()


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _previous_export(out: Path) -> set[str]:
    """The files an earlier export recorded in `out`; refuses a folder holding anything else."""
    record = out / EXPORT_RECORD
    if not record.is_file():
        raise OutputPathError(f"--out {out} is not empty and was not written by musicgen-lora export; "
                              "--overwrite replaces only a previous export: choose an empty or new folder")
    written = set(json.loads(record.read_text())["files"])
    foreign = sorted(_files(out) - written - {EXPORT_RECORD})
    if foreign:
        raise OutputPathError(f"--out {out} holds files no export wrote ({', '.join(foreign[:3])}); "
                              "move them or choose another folder")
    return written


def _record_export(out: Path) -> None:
    """List what this export wrote, so a later --overwrite deletes exactly that."""
    files = sorted(_files(out) - {EXPORT_RECORD})
    respect_umask(out / name for name in files)  # copies and safetensors would keep 0600
    (out / EXPORT_RECORD).write_text(json.dumps({"files": files}, indent=2) + "\n")


def _save_merged(adapter: Path, base: str, out: Path, revision: str | None = None):
    """Base + adapter with the LoRA update merged into the weights, saved as a plain MusicGen."""
    from musicgen_lora.modeling.families import is_melody
    from musicgen_lora.modeling.generate import load_with_adapter
    from musicgen_lora.modeling.model import audio_format

    model, tokenizer = load_with_adapter(adapter, base, device="cpu", revision=revision)
    merged = model.merge_and_unload()
    merged.save_pretrained(out)  # safetensors + config.json + generation_config.json
    _save_processor(tokenizer, audio_format(merged), out, melody=is_melody(merged))
    return merged.config


def _save_processor(tokenizer, fmt, out: Path, melody: bool = False) -> None:
    """The processor files (tokenizer + feature extractor config): what
    `AutoProcessor.from_pretrained(out)` needs to prepare text, audio prompts and melodies."""
    from transformers import (
        EncodecFeatureExtractor,
        MusicgenMelodyFeatureExtractor,
        MusicgenMelodyProcessor,
        MusicgenProcessor,
    )

    if melody:  # the melody models' processor reads the chroma of a melody file
        extractor, processor = MusicgenMelodyFeatureExtractor(sampling_rate=fmt.sample_rate), MusicgenMelodyProcessor
    else:
        extractor, processor = EncodecFeatureExtractor(feature_size=fmt.channels, sampling_rate=fmt.sample_rate), MusicgenProcessor
    try:
        processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    except (TypeError, ValueError):  # a tokenizer class the processor does not accept
        tokenizer.save_pretrained(out)
        extractor.save_pretrained(out)


def _save_base_processor(base: str, revision: str | None, out: Path) -> None:
    """The base model's processor next to an adapter, so the export (or its Hub repo) is usable
    with AutoProcessor alone; an ExportError when it cannot be read (offline and not cached)."""
    from transformers import AutoProcessor

    from musicgen_lora.modeling.model import (
        audio_format,
        build_tiny_musicgen,
        hub_unreachable,
        tiny_tokenizer,
    )
    from musicgen_lora.modeling.tiny import is_tiny

    if is_tiny(base):  # every tiny family: its processor is built in code, like the model
        return _save_processor(tiny_tokenizer(), audio_format(build_tiny_musicgen(name=base)), out, melody="melody" in base)
    try:
        processor = AutoProcessor.from_pretrained(base, revision=revision, local_files_only=hub_unreachable())
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot read the processor (tokenizer + feature extractor) of the base model {base!r}: "
                          f"{type(error).__name__}; run where the Hub is reachable or the base model is in the "
                          "local Hugging Face cache") from None
    processor.save_pretrained(out)


def _architecture(model_config) -> str:
    """The transformers class of the base (MusicGen or MusicGen-Melody) for the card's usage code."""
    from musicgen_lora.modeling.families import FAMILIES, MUSICGEN

    return FAMILIES.get(getattr(model_config, "model_type", None), MUSICGEN).architecture


def _base_config(base: str, revision: str | None = None):
    """The base model's config (no weights), or None when it cannot be read offline."""
    from musicgen_lora.modeling.model import is_tiny

    if is_tiny(base):
        from musicgen_lora.modeling.model import build_tiny_musicgen

        return build_tiny_musicgen(name=base).config
    from transformers import AutoConfig

    try:  # MusicgenConfig or MusicgenMelodyConfig, as the checkpoint says
        return AutoConfig.from_pretrained(base, revision=revision, local_files_only=True)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ExportArgs:
    """Export a trained LoRA adapter, alone or merged into its base model, with the base model's
    processor config and a model card; optionally push the export to a Hugging Face Hub repo."""

    adapter: str
    """Adapter folder (a run's adapter/), or a Hub repo id (user/repo)."""
    out: Path | None = None
    """Output folder; with --push-to-hub it may be left out (the export is then made in a temporary folder)."""
    merge: bool = False
    """Merge the adapter into the base weights and save a standalone MusicGen checkpoint."""
    model: str | None = None
    """Base model; default: the one named in the adapter's config."""
    run_dir: Path | None = None
    """Run directory for the card (config, data); default: the adapter's parent folder."""
    cache: Path | None = None
    """Token cache of the training data for the card; default: the one the run used, if found here."""
    overwrite: bool = False
    """Replace a previous export in the output folder (only files an export wrote there; never the
    adapter's folder or its run directory)."""
    revision: str | None = None
    """Hub revision of the base model; default: the one recorded with the adapter (--model.revision of its run)."""
    push_to_hub: str | None = None
    """Upload the export (adapter or merged model, processor config, model card) to this Hub model
    repo (user/name or org/name), created PRIVATE unless --public. The token comes from `hf auth
    login` or the HF_TOKEN environment variable, never from a flag."""
    public: bool = False
    """With --push-to-hub: create the repo public, and allow pushing to an existing public repo."""


def main(argv: list[str]) -> int:
    args = tyro.cli(ExportArgs, args=argv, prog="musicgen-lora export")
    import tempfile

    from musicgen_lora.modeling.model import ModelLoadError  # after parsing: `--help` stays instant
    from musicgen_lora.tools.hub import HubPushError, push_folder

    if args.out is None and args.push_to_hub is None:
        print("error: give --out FOLDER (or --push-to-hub REPO, which may leave it out)", file=sys.stderr)
        return 2
    if args.public and args.push_to_hub is None:
        print("error: --public only applies to --push-to-hub REPO", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="musicgen-lora-export-") as scratch:
        try:
            out = export(
                args.adapter, args.out or Path(scratch) / "export", merge=args.merge, model_name=args.model,
                run_dir=args.run_dir, cache_dir=args.cache, overwrite=args.overwrite, revision=args.revision,
                repo_id=args.push_to_hub,
            )
            if args.out is not None:
                print(f"{'merged model' if args.merge else 'adapter'} and model card written to {out}")
            if args.push_to_hub is not None:
                pushed = push_folder(out, args.push_to_hub, private=not args.public, exclude=(EXPORT_RECORD,))
                print(f"pushed {len(pushed.files)} files to {pushed.url} ({'private' if pushed.private else 'public'}): "
                      + ", ".join(pushed.files))
        except (ExportError, ModelLoadError, HubPushError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0
