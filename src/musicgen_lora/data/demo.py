"""Built-in demo data: deterministic synthesized drum loops with captions, so nothing is downloaded.

Each style has a tempo and 16-step kick/snare/hat patterns; variations change the seed of the noise
and the ghost notes. Loops are two bars long, written as 16-bit WAV with a `metadata.csv` in the
Hugging Face audiofolder convention (file_name, text), exactly like a user's own folder.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import tyro

from musicgen_lora.helpers import OutputPathError, require_folder


@dataclass(frozen=True)
class DrumStyle:
    name: str
    bpm: int
    kick: str  # 16 steps, "x" = hit
    snare: str
    hat: str


STYLES = (
    DrumStyle("techno", 128, "x...x...x...x...", "....x.......x...", "..x...x...x...x."),
    DrumStyle("house", 124, "x...x...x...x...", "....x.......x...", "xxxxxxxxxxxxxxxx"),
    DrumStyle("hip hop", 90, "x......x..x.....", "....x.......x...", "x.x.x.x.x.x.x.x."),
    DrumStyle("drum and bass", 172, "x.........x.....", "....x.......x...", "x.x.x.x.x.x.x.x."),
    DrumStyle("trap", 140, "x.....x...x.....", "........x.......", "xxxxxxxxxxxxxxxx"),
    DrumStyle("rock", 110, "x.......x.x.....", "....x.......x...", "x.x.x.x.x.x.x.x."),
)


def _kick(rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.35 * rate)) / rate
    pitch = 45 + 90 * np.exp(-t * 30)  # falling sine sweep
    return np.sin(2 * np.pi * np.cumsum(pitch) / rate) * np.exp(-t * 9) * rng.uniform(0.85, 1.0)


def _snare(rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.2 * rate)) / rate
    body = np.sin(2 * np.pi * 190 * t) * np.exp(-t * 25)
    noise = rng.standard_normal(t.size) * np.exp(-t * 18)
    return 0.5 * body + 0.45 * noise


def _hat(rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.05 * rate)) / rate
    noise = np.diff(rng.standard_normal(t.size + 1))  # differencing tilts the noise to the highs
    return 0.25 * noise * np.exp(-t * 90)


def drum_loop(style: DrumStyle, variation: int, sample_rate: int = 32000, bars: int = 2) -> np.ndarray:
    """A mono float32 loop of `bars` bars in `style`; the same arguments give the same samples."""
    rng = np.random.default_rng([sum(map(ord, style.name)), variation])
    step = 60.0 / style.bpm / 4  # sixteenth notes
    length = round(bars * 16 * step * sample_rate)
    out = np.zeros(length + sample_rate, dtype=np.float64)  # room for the last hit's tail
    for bar in range(bars):
        for index in range(16):
            start = round((bar * 16 + index) * step * sample_rate)
            for pattern, voice in ((style.kick, _kick), (style.snare, _snare), (style.hat, _hat)):
                ghost = variation > 0 and voice is _hat and rng.random() < 0.15 * variation
                if pattern[index] == "x" or ghost:
                    hit = voice(sample_rate, rng) * (0.5 if ghost else 1.0)
                    out[start : start + hit.size] += hit
    # Fold the tail back onto the start so the loop repeats seamlessly.
    loop = out[:length]
    loop[: sample_rate] += out[length:]
    return (0.8 * loop / np.abs(loop).max()).astype(np.float32)


def caption(style: DrumStyle) -> str:
    return f"{style.name} drum loop, {style.bpm} bpm"


def write_demo_loops(folder: Path, loops_per_style: int = 2, sample_rate: int = 32000) -> list[Path]:
    """Write the demo loops and their metadata.csv into `folder`; returns the audio paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, paths = [], []
    for style in STYLES:
        for variation in range(loops_per_style):
            name = f"{style.name.replace(' ', '_')}_{style.bpm}bpm_v{variation}.wav"
            soundfile.write(folder / name, drum_loop(style, variation, sample_rate), sample_rate, subtype="PCM_16")
            rows.append({"file_name": name, "text": caption(style)})
            paths.append(folder / name)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return paths


@dataclass(frozen=True)
class DemoArgs:
    """Write the built-in demo drum loops (WAV + metadata.csv) to a folder."""

    out: Path
    """Folder to write into (created if missing)."""
    loops_per_style: int = 2
    """Variations per style (6 styles)."""
    sample_rate: int = 32000
    """Sample rate of the written WAV files."""


DEMO_FILE = re.compile(r"[a-z0-9_]+_\d+bpm_v\d+\.wav|metadata\.csv")


def check_out(out: Path) -> None:
    """Refuse a file, or a folder whose metadata.csv is the user's (it holds other files): writing
    the demo loops would replace their captions."""
    require_folder("--out", out)
    foreign = sorted(p.name for p in out.iterdir() if not DEMO_FILE.fullmatch(p.name)) if out.is_dir() else []
    if foreign and (out / "metadata.csv").exists():
        raise OutputPathError(f"--out {out} holds your files ({', '.join(foreign[:3])}) and a metadata.csv the demo "
                              "loops would replace; choose a new or empty folder")


def main(argv: list[str]) -> int:
    args = tyro.cli(DemoArgs, args=argv, prog="musicgen-lora demo-data")
    try:
        check_out(args.out)
        if args.loops_per_style < 1 or args.sample_rate < 1:
            raise ValueError(f"--loops-per-style and --sample-rate must be >= 1 (got {args.loops_per_style}, {args.sample_rate})")
    except ValueError as error:  # OutputPathError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = write_demo_loops(args.out, args.loops_per_style, args.sample_rate)
    print(f"wrote {len(paths)} loops and metadata.csv to {args.out}")
    return 0
