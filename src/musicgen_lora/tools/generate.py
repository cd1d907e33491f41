"""`musicgen-lora generate`: text prompts (or a JSONL batch of them) -> WAV files, with a base
MusicGen and optionally a LoRA adapter (a folder or a Hub repo), merged into the base for speed;
`--continue FILE` continues an audio prompt. Argument parsing stays light; the model stack is
imported when the command runs."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from musicgen_lora.training.validation import ConfigValueError, check_generation_seconds

DEFAULT_MODEL = "facebook/musicgen-small"


def output_paths(out: Path, count: int) -> list[Path]:
    """One prompt -> `out` itself; several -> out_0.wav, out_1.wav, ... (or files in a folder)."""
    if count == 1 and out.suffix == ".wav":
        return [out]
    if out.suffix == ".wav":
        return [out.with_name(f"{out.stem}_{i}.wav") for i in range(count)]
    return [out / f"sample_{i}.wav" for i in range(count)]


@dataclass(frozen=True)
class GenerateArgs:
    """Generate audio from text prompts with a base MusicGen and a LoRA adapter: --prompt for a few
    clips (generated together, in one batch), or --batch prompts.jsonl for one WAV per line (plus
    index.jsonl) in the --out folder. The adapter is merged into the base weights unless --no-merge;
    the model runs in bf16 on GPUs that support it (fp16 on older ones) and fp32 on CPU."""

    out: Path
    """Output WAV (one prompt), a .wav stem / folder for several prompts, or the folder of a batch."""
    prompt: tuple[str, ...] = ()
    """One or more text prompts (or use --batch)."""
    batch: Path | None = None
    """JSONL file, one object per line: prompt (required), seconds, seed, guidance, name (optional;
    defaults: the flags below). Bad lines are reported with their line number and skipped."""
    adapter: str | None = None
    """Adapter folder (a run's adapter/), or a Hub repo id (user/repo: downloaded once into the Hugging
    Face cache, read from there when offline); None generates with the base model alone."""
    model: str | None = None
    """Base model; default: the one named in the adapter's config."""
    seconds: float = 8.0
    """Length of each clip in seconds."""
    guidance: float = 3.0
    """Classifier-free guidance scale (1: none)."""
    top_k: int = 250
    """Top-k sampling."""
    temperature: float = 1.0
    """Sampling temperature."""
    seed: int = 0
    """Random seed: the same seed gives the same audio."""
    greedy: bool = False
    """Greedy decoding instead of sampling."""
    device: str | None = None
    """cuda or cpu; default: cuda when available."""
    revision: str | None = None
    """Hub revision of the base model; default: the one recorded with the adapter (--model.revision of its run)."""
    melody: Path | None = None
    """MusicGen-Melody models only: an audio file whose melody (chroma of its first --seconds)
    conditions every clip, as each training window was conditioned on its own audio. With --prompt."""
    continue_: Annotated[Path | None, tyro.conf.arg(name="continue")] = None
    """Audio file to continue: its last --prompt-seconds are encoded with the model's EnCodec and
    start the generation. Each output holds that prompt (as EnCodec re-synthesises it) followed by
    --seconds of new audio, so it lasts prompt + --seconds."""
    prompt_seconds: float | None = None
    """With --continue: how many seconds from the end of the file prompt the model (rounded down to
    whole codec frames); default: the whole file. Prompt + --seconds must fit the model's window."""
    merge: bool = True
    """Merge the LoRA weights into the base model before generating (same audio, faster);
    --no-merge keeps the adapter separate."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Inference dtype of the decoder and text encoder (EnCodec stays fp32); auto: bfloat16 on GPUs
    that support it, float16 on older GPUs, float32 on CPU."""


def check_args(args: GenerateArgs) -> None:
    """Ranges and the output path, before any model is loaded (the longest clip needs the model)."""
    if not args.seconds > 0:
        raise ConfigValueError(f"--seconds must be > 0 (got {args.seconds!r})")
    if not args.guidance > 0:
        raise ConfigValueError(f"--guidance must be > 0 (1: no guidance) (got {args.guidance!r})")
    if args.top_k < 0:
        raise ConfigValueError(f"--top-k must be >= 0 (0: no top-k filtering) (got {args.top_k!r})")
    if not args.temperature > 0:
        raise ConfigValueError(f"--temperature must be > 0 (got {args.temperature!r})")
    if args.melody is not None and not args.melody.expanduser().is_file():
        raise ConfigValueError(f"--melody {args.melody} is not a file")
    if args.melody is not None and args.batch is not None:
        raise ConfigValueError("--melody works with --prompt (one melody for the prompts), not with --batch")
    if args.prompt_seconds is not None and args.continue_ is None:
        raise ConfigValueError("--prompt-seconds needs --continue FILE")
    if args.prompt_seconds is not None and not args.prompt_seconds > 0:
        raise ConfigValueError(f"--prompt-seconds must be > 0 (got {args.prompt_seconds!r})")
    out = args.out.expanduser()
    single_file = args.batch is None and out.suffix == ".wav"
    if single_file and len(args.prompt) == 1 and out.is_dir():
        raise ConfigValueError(f"--out {args.out} is an existing folder; give a .wav file, or a folder name without .wav")
    if not single_file and out.exists() and not out.is_dir():
        raise ConfigValueError(f"--out {args.out} is an existing file; {'--batch' if args.batch else 'several prompts'} "
                               "write a folder (or give a .wav stem)")


def main(argv: list[str]) -> int:
    args = tyro.cli(GenerateArgs, args=argv, prog="musicgen-lora generate")
    # the model stack loads only once the arguments parsed (`--help` stays instant)
    from musicgen_lora.modeling.generate import generate_audio, max_seconds, write_wav
    from musicgen_lora.modeling.hub import resolve_adapter
    from musicgen_lora.modeling.model import ModelLoadError, audio_format
    from musicgen_lora.tools.audio_prompt import read_source

    if bool(args.prompt) == (args.batch is not None):
        print("error: give either --prompt (one or more prompts) or --batch prompts.jsonl, not both and not neither",
              file=sys.stderr)
        return 2
    try:
        check_args(args)
        source = read_source(args.continue_) if args.continue_ is not None else None  # before any model loads
        if args.adapter is not None:
            args = dataclasses.replace(args, adapter=str(resolve_adapter(args.adapter)))
        if args.batch is not None:
            return _main_batch(args, source)
        model, tokenizer = _load(args)
        audio_prompt, prompt = _audio_prompt(args, source, model, args.seconds)
        check_generation_seconds("--seconds", args.seconds, maximum=max_seconds(model) - prompt, model=_model_name(args))
        melody = _melody(args, model)
    except (ConfigValueError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rate = audio_format(base).sample_rate
    audio = generate_audio(
        model,
        tokenizer,
        list(args.prompt),
        seconds=args.seconds,
        guidance=args.guidance,
        top_k=args.top_k,
        temperature=args.temperature,
        seed=args.seed,
        greedy=args.greedy,
        melody=melody,
        audio_prompt=audio_prompt,
    )
    continued = f"  ({prompt:g} s of {args.continue_} + {args.seconds:g} s new)" if source is not None else ""
    for path, clip, text in zip(output_paths(args.out, len(args.prompt)), audio, args.prompt, strict=True):
        write_wav(path, clip, rate)
        print(f"{path}  {clip.shape[-1] / rate:.2f} s  {text!r}{continued}")
    return 0


def _melody(args: GenerateArgs, model):
    """The --melody file's chroma for `model`; ConfigValueError for a text-only model or a bad file."""
    if args.melody is None:
        return None
    from musicgen_lora.data.audio import AudioError
    from musicgen_lora.data.chroma import chroma_settings, melody_features

    settings = chroma_settings(model)
    if settings is None:
        raise ConfigValueError(f"--melody needs a MusicGen-Melody model; {_model_name(args)} is text-only "
                               "(MusicgenForConditionalGeneration)")
    try:
        return melody_features(args.melody.expanduser(), settings, args.seconds)
    except AudioError as error:
        raise ConfigValueError(f"--melody {args.melody}: {error}") from None


def _model_name(args: GenerateArgs) -> str:
    from musicgen_lora.modeling.generate import base_of

    return base_of(args.adapter, args.model)[0] if args.adapter is not None else (args.model or DEFAULT_MODEL)


def _load(args: GenerateArgs):
    """The model ready to generate: base (+ adapter, merged unless --no-merge) on the device, in
    the inference dtype. Loaded and merged in fp32 on the CPU, then moved and cast."""
    import torch

    from musicgen_lora.modeling.generate import (
        inference_dtype,
        load_with_adapter,
        prepare_for_inference,
    )
    from musicgen_lora.modeling.model import load_musicgen

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.adapter is not None:
        model, tokenizer = load_with_adapter(args.adapter, args.model, "cpu", args.revision)
    else:
        model, tokenizer = load_musicgen(args.model or DEFAULT_MODEL, revision=args.revision)
    model = prepare_for_inference(model, merge=args.merge, device=device, dtype=inference_dtype(device, args.dtype))
    return model, tokenizer


def _audio_prompt(args: GenerateArgs, source, model, seconds: float):
    """(the prompt audio at the model's rate or None, its seconds); checks it and `seconds` fit."""
    from musicgen_lora.modeling.generate import max_seconds
    from musicgen_lora.modeling.model import audio_format
    from musicgen_lora.tools.audio_prompt import check_fits, prompt_audio, prompt_seconds

    if source is None:
        return None, 0.0
    fmt = audio_format(model.get_base_model() if hasattr(model, "get_base_model") else model)
    prompt = prompt_seconds(source, args.prompt_seconds, fmt.frame_rate)
    check_fits(source, prompt, seconds, maximum=max_seconds(model), frame_rate=fmt.frame_rate,
               model=_model_name(args), requested=args.prompt_seconds)
    return prompt_audio(source, prompt, fmt.sample_rate, fmt.channels, fmt.hop_length), prompt


# ----------------------------------------------------------------------------- batch mode

BATCH_FIELDS = ("prompt", "seconds", "seed", "guidance", "name")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class BatchJob:
    line: int
    prompt: str
    seconds: float
    seed: int
    guidance: float
    name: str
    """Output file stem: the line's `name`, else line<NNNN>."""


BatchError = tuple[int, str]
"""(line number, what is wrong with it)."""


def parse_batch(lines: Iterable[str], *, seconds: float, seed: int, guidance: float) -> tuple[list[BatchJob], list[BatchError]]:
    """(jobs, errors) for the lines of a prompts file. Blank lines are ignored; fields a line
    omits take the given defaults."""
    jobs: list[BatchJob] = []
    errors: list[BatchError] = []
    names: set[str] = set()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            job = _parse_line(text, number, seconds, seed, guidance)
            if job.name in names:
                raise ValueError(f"duplicate name {job.name!r}")
        except ValueError as error:
            errors.append((number, str(error)))
            continue
        names.add(job.name)
        jobs.append(job)
    return jobs, errors


def _parse_line(text: str, number: int, seconds: float, seed: int, guidance: float) -> BatchJob:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError('expected a JSON object such as {"prompt": "techno drum loop", "seconds": 8}')
    unknown = sorted(set(record) - set(BATCH_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(BATCH_FIELDS)})")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' is missing or not a non-empty string")
    name = record.get("name", f"line{number:04d}")
    if not isinstance(name, str) or not _NAME.match(name.removesuffix(".wav")):
        raise ValueError(f"'name' {name!r} must be a plain file name (letters, digits, . _ -)")
    return BatchJob(
        line=number,
        prompt=prompt.strip(),
        seconds=_number(record, "seconds", seconds, minimum=0.0),
        seed=int(_number(record, "seed", seed, minimum=0, integer=True)),
        guidance=_number(record, "guidance", guidance, minimum=0.0),
        name=name.removesuffix(".wav"),
    )


def _number(record: dict, key: str, default: float, *, minimum: float, integer: bool = False) -> float:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{key}' must be a number, got {value!r}")
    if integer and value != int(value):
        raise ValueError(f"'{key}' must be an integer, got {value!r}")
    if value < minimum or (not integer and value == minimum):
        raise ValueError(f"'{key}' must be {'at least' if integer else 'more than'} {minimum:g}, got {value!r}")
    return value


def generate_batch(model, tokenizer, jobs: list[BatchJob], out: Path, *, top_k: int = 250, temperature: float = 1.0,
                   greedy: bool = False, audio_prompt=None, continued: dict | None = None) -> tuple[list[dict], list[BatchError]]:
    """One WAV per job in `out` and index.jsonl listing what was written; (index rows, errors).

    Each line is generated on its own with its own seed, so its audio does not depend on the other
    lines: lines are never batched together, because one generate() call draws every row's samples
    from one random stream (a line's audio would depend on its neighbours and lose its seed). A
    line that fails is reported and skipped; the batch goes on. With `audio_prompt` every line
    continues it; `continued` (what was continued) is added to each index row.
    """
    from tqdm.auto import tqdm

    from musicgen_lora.modeling.generate import generate_audio, write_wav
    from musicgen_lora.modeling.model import audio_format

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rate = audio_format(base).sample_rate
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    errors: list[BatchError] = []
    with open(out / "index.jsonl", "w", encoding="utf-8") as index:
        for job in tqdm(jobs, desc="generate", unit="clip", disable=None):  # disable=None: no bar in logs
            try:
                clip = generate_audio(
                    model, tokenizer, [job.prompt], seconds=job.seconds, guidance=job.guidance,
                    top_k=top_k, temperature=temperature, seed=job.seed, greedy=greedy, audio_prompt=audio_prompt,
                )[0]
                path = out / f"{job.name}.wav"
                write_wav(path, clip, rate)
            except Exception as error:  # one failed line never aborts the batch
                errors.append((job.line, f"generation failed: {type(error).__name__}: {error}"))
                continue
            row = {
                "file": path.name, "prompt": job.prompt, "seconds": job.seconds, "seed": job.seed,
                "guidance": job.guidance, "duration": round(clip.shape[-1] / rate, 4), "line": job.line,
                **(continued or {}),
            }
            index.write(json.dumps(row, ensure_ascii=False) + "\n")
            index.flush()
            rows.append(row)
            tqdm.write(f"{path}  {row['duration']:.2f} s  {job.prompt!r}")
    return rows, errors


def _fits(jobs: list[BatchJob], maximum: float, model: str, prompt: float = 0.0) -> tuple[list[BatchJob], list[BatchError]]:
    """(jobs the model can generate in one go, errors for the lines asking for more seconds)."""
    maximum -= prompt
    after = f" after the {prompt:g} s prompt" if prompt else ""
    errors = [(job.line, f"'seconds' must be at most {maximum:g} for {model}{after} (got {job.seconds!r})")
              for job in jobs if job.seconds > maximum + 1e-9]
    return [job for job in jobs if job.seconds <= maximum + 1e-9], errors


def _main_batch(args: GenerateArgs, source=None) -> int:
    from musicgen_lora.modeling.generate import max_seconds

    try:
        lines = args.batch.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        print(f"error: cannot read {args.batch}: {error}", file=sys.stderr)
        return 2
    jobs, errors = parse_batch(lines, seconds=args.seconds, seed=args.seed, guidance=args.guidance)
    rows: list[dict] = []
    if jobs:
        model, tokenizer = _load(args)
        audio_prompt, prompt = _audio_prompt(args, source, model, seconds=0.0)  # lines are checked one by one
        jobs, too_long = _fits(jobs, max_seconds(model), _model_name(args), prompt)
        errors += too_long
    if jobs:
        continued = {"continue": str(args.continue_), "prompt_seconds": prompt} if source is not None else None
        rows, failed = generate_batch(
            model, tokenizer, jobs, args.out, top_k=args.top_k, temperature=args.temperature, greedy=args.greedy,
            audio_prompt=audio_prompt, continued=continued,
        )
        errors += failed
    for line, error in sorted(errors):
        print(f"{args.batch}:{line}: {error}", file=sys.stderr)
    print(f"{len(rows)} of {len(rows) + len(errors)} lines written to {args.out} (index.jsonl); {len(errors)} skipped")
    return 0 if rows else 1
