"""Peak memory and time of `prepare` against file length (issue 12.1): is memory flat in length?

One stereo 44.1 kHz WAV per length (streamed to disk), encoded by `prepare_cache` with the tiny
codec and with musicgen-small's codec architecture (random weights built from the real config; no
download). Only the codec is built: the text encoder and decoder are not part of encoding. Every
measurement runs in its own process, so ru_maxrss is that measurement's peak.

    uv run benchmarks/prepare_memory.py                       # tiny 1/5/20 min, small 1/5/20 min
    uv run benchmarks/prepare_memory.py --small-minutes 1 5   # when 20 min is too slow on few cores
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Args:
    tiny_minutes: list[float] = field(default_factory=lambda: [1.0, 5.0, 20.0])
    """File lengths measured with the tiny codec."""
    small_minutes: list[float] = field(default_factory=lambda: [1.0, 5.0, 20.0])
    """File lengths measured with musicgen-small's codec architecture."""
    threads: int = 2
    """CPU threads of each measurement."""
    out: Path = REPO / "reports" / "benchmarks" / "prepare_memory_cpu"
    """Results: OUT.json and OUT.md."""


def write_wav(path: Path, minutes: float, rate: int = 44100, block_seconds: float = 30.0) -> None:
    import numpy as np
    import soundfile

    with soundfile.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as handle:
        for index in range(round(minutes * 60 / block_seconds)):
            rng = np.random.default_rng(index)
            t = np.arange(round(block_seconds * rate)) / rate
            music = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.1 * rng.standard_normal(t.shape) * (np.sin(6 * np.pi * t) > 0)
            handle.write(np.stack([music, music[::-1]], axis=1).astype(np.float32))


def measure(arch: str, data: Path, cache: Path) -> dict:
    """In the child process: build the codec, prepare the folder, report peak RSS and seconds."""
    import torch
    from transformers import EncodecModel

    from musicgen_lora.data.tokens import codec_encoder, prepare_cache
    from musicgen_lora.modeling.model import (
        RANDOM_ARCHITECTURES,
        AudioFormat,
        _init_codebooks_from_audio,
    )

    torch.manual_seed(0)
    config = RANDOM_ARCHITECTURES[arch]().audio_encoder
    codec = EncodecModel(config).eval()
    _init_codebooks_from_audio(type("Model", (), {"audio_encoder": codec})())
    fmt = AudioFormat(config.sampling_rate, 1, 50, 640, 4, config.codebook_size, 2.2)
    model_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = prepare_cache(data, cache, encoder=codec_encoder(codec, fmt, torch.device("cpu")), fmt=fmt,
                           codec_id=f"random-{arch}", use_metadata=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"arch": arch, "frames": result.entries[0].frames, "skipped": result.skipped,
            "rss_after_codec_mb": round(model_mb), "peak_rss_mb": round(peak_mb), "seconds": round(seconds, 1)}


def run_one(arch: str, minutes: float, wav_dir: Path, threads: int) -> dict:
    data = wav_dir / f"{minutes:g}min"
    if not data.exists():
        data.mkdir()
        write_wav(data / "song.wav", minutes)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
        done = subprocess.run([sys.executable, __file__, "--child", arch, str(data), cache],
                              capture_output=True, text=True, env=env)
    if done.returncode:
        return {"arch": arch, "minutes": minutes, "error": done.stderr.strip().splitlines()[-1:]}
    return {"minutes": minutes, **json.loads(done.stdout.strip().splitlines()[-1])}


def markdown(rows: list[dict]) -> str:
    lines = [
        "# prepare: peak memory vs file length (CPU)", "",
        f"Stereo 44.1 kHz WAV, one file, `prepare_cache` with the codec alone; {platform.processor() or 'cpu'}, "
        f"torch threads as stated in the JSON. Each row is its own process (ru_maxrss).", "",
        "| codec | minutes | peak RSS (MB) | RSS after building the codec (MB) | seconds | frames |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['arch']} | {row['minutes']:g} | error: {row['error']} | | | |")
        else:
            lines.append(f"| {row['arch']} | {row['minutes']:g} | {row['peak_rss_mb']} | {row['rss_after_codec_mb']} "
                         f"| {row['seconds']} | {row['frames']} |")
    return "\n".join(lines) + "\n"


def main(args: Args) -> None:
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as wav_dir:
        for arch, lengths in (("tiny", args.tiny_minutes), ("small", args.small_minutes)):
            for minutes in lengths:
                rows.append(run_one(arch, minutes, Path(wav_dir), args.threads))
                print(json.dumps(rows[-1]), flush=True)
                save(args, rows)  # after every row: a slow long measurement never loses the others


def save(args: Args, rows: list[dict]) -> None:
    payload = {"threads": args.threads, "chunking": "10 s chunks + 1 s context each side", "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
    else:
        main(tyro.cli(Args))
