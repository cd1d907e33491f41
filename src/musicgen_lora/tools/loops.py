"""`musicgen-lora loops`: cut beat-aligned loops out of longer audio, ready to train on.

Per source file (mono analysis at 22.05 kHz, the cut at the file's own rate and channels):
1. beats: librosa's beat tracker; the tempo is the slope of a line fitted through the beat times
   (the grid is assumed steady over the file), moved into 70-180 bpm by doubling (beats
   interpolated) or halving (the stronger half of the beats kept);
2. downbeats: the phase among `beats_per_bar` candidates with the most kick-band and the least
   snare-band energy (the kick marks beat 1, the snare the backbeat); a grid the tracker put on
   the off-beats is moved by half a beat. A heuristic: right for most drum-led music, not for
   every piece (an unaccented four-on-the-floor may start on beat 3);
3. loops: `bars` bars (bars * beats_per_bar * 60 / bpm seconds) from every downbeat
   `bars - overlap` bars apart; each start is snapped to the attack (the largest rise in
   short-time energy within 50 ms of the tracked beat), so loops start on the hit, not before it;
4. loops quieter than `min_loudness_db` dBFS RMS, or silent for more than `max_silence` of their
   length in one stretch (the track stopped), are dropped.

Outputs `<out>/<sub folder of the source>/<stem>_<NNN>.wav` (NNN: the loop's position in the file,
stable across runs), a `metadata.jsonl` per output folder (file_name, text, source, bpm, start,
seconds; the caption says the tempo) that training reads as captions, and `loops_manifest.json`
recording every source's content hash and settings: a re-run skips unchanged sources, and
re-cuts a source whose content or settings changed (its old loops are replaced).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import soundfile
import tyro
from tqdm.auto import tqdm

from musicgen_lora.data.captions import fallback_caption, read_metadata
from musicgen_lora.helpers import atomic_write_bytes, atomic_write_json, file_sha256, require_folder

log = logging.getLogger(__name__)

MANIFEST = "loops_manifest.json"
METADATA = "metadata.jsonl"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class LoopSettings:
    """Everything that changes the loops cut from a file (recorded per source in the manifest)."""

    bars: int = 4
    beats_per_bar: int = 4
    overlap: int = 0
    min_bpm: float = 70.0
    max_bpm: float = 180.0
    min_loudness_db: float = -40.0
    max_silence: float = 0.5
    percussive: bool = False
    harmonic_gain: float = 0.0
    caption_template: str = "{folder} loop"

    def __post_init__(self):
        if self.bars < 1 or self.beats_per_bar < 1:
            raise ValueError("--bars and --beats-per-bar must be at least 1")
        if not 0 <= self.overlap < self.bars:
            raise ValueError(f"--overlap must be 0 .. bars - 1 ({self.bars - 1}), not {self.overlap}")
        if not 0 < self.min_bpm < self.max_bpm / 1.9:
            raise ValueError("need 0 < min_bpm and max_bpm / min_bpm of about 2 or more (one tempo octave)")


# ----------------------------------------------------------------------------- folders


@dataclass
class LoopsResult:
    processed: list[str]
    """Sources cut by this run."""
    unchanged: list[str]
    """Sources skipped because the manifest has them with the same content and settings."""
    written: int
    dropped: int
    """Loops dropped as too quiet or mostly silent."""
    failed: dict[str, str]
    """Sources that gave no loops, with the reason."""

    def summary(self) -> str:
        return (
            f"loops: {len(self.processed)} sources cut, {len(self.unchanged)} unchanged (skipped), "
            f"{self.written} loops written, {self.dropped} dropped as quiet/silent, {len(self.failed)} without loops"
        )


def extract_loops(in_dir: Path, out_dir: Path, settings: LoopSettings = LoopSettings()) -> LoopsResult:
    """Cut loops from every audio file under `in_dir` into `out_dir` (idempotent; see module doc)."""
    from musicgen_lora.data.audio import AudioError, find_audio_files

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"version": MANIFEST_VERSION, "sources": {}}
    sources = manifest["sources"]
    wanted = asdict(settings)
    out_real = os.path.realpath(out_dir)
    files = [p for p in find_audio_files(in_dir) if not os.path.realpath(p).startswith(out_real + os.sep)]
    captions, problems = read_metadata(in_dir)
    for problem in problems:  # each skipped row with its line; its file gets the fallback caption
        log.warning("%s", problem)
    names = _output_stems(files, in_dir)
    result = LoopsResult([], [], 0, 0, {})
    touched: set[str] = set()
    for path in tqdm(files, desc="loops", unit="file", disable=None):  # disable=None: no bar in logs
        source = path.relative_to(in_dir).as_posix()
        sha = file_sha256(path)
        known = sources.get(source)
        if known and known["sha256"] == sha and known["settings"] == wanted:
            result.unchanged.append(source)
            continue
        if known:  # changed content or settings: replace its loops
            for row in known["loops"]:
                (out_dir / row["path"]).unlink(missing_ok=True)
            touched.add(known["folder"])
        folder = Path(source).parent.as_posix()
        base_caption = captions.get(Path(os.path.realpath(path))) or fallback_caption(path, in_dir, settings.caption_template)
        try:
            rows, dropped = _cut_file(path, out_dir / folder, names[path], base_caption, source, settings)
            reason = None if rows else "no loop fits the file, or every loop was too quiet"
        except Exception as error:  # one unusable file never stops the others; the reason is kept
            rows, dropped, reason = [], 0, f"{type(error).__name__}: {error}" if not isinstance(error, AudioError) else str(error)
        if reason:
            result.failed[source] = reason
        sources[source] = {
            "sha256": sha, "settings": wanted, "folder": folder, "reason": reason,
            "loops": [{**row, "path": (Path(folder) / row["file_name"]).as_posix()} for row in rows],
        }
        touched.add(folder)
        result.processed.append(source)
        result.written += len(rows)
        result.dropped += dropped
        # The manifest is written after every source, so an interrupted run resumes where it stopped.
        atomic_write_json(manifest_path, manifest)
    for folder in sorted(touched):
        _write_metadata(out_dir, folder, sources)
    return result


def _output_stems(files: list[Path], in_dir: Path) -> dict[Path, str]:
    """File stem, or stem + extension where two files of one folder share a stem (a.wav, a.flac)."""
    counts: dict[tuple[Path, str], int] = defaultdict(int)
    for path in files:
        counts[(path.parent, path.stem)] += 1
    return {
        path: path.stem if counts[(path.parent, path.stem)] == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        for path in files
    }


def _cut_file(path: Path, folder: Path, stem: str, base_caption: str, source: str, settings: LoopSettings) -> tuple[list[dict], int]:
    from musicgen_lora.data.audio import AudioError, decode
    from musicgen_lora.tools.beat_analysis import analyse, longest_silence, loudness_db, plan_loops

    audio, rate = decode(path)
    if not np.isfinite(audio).all():
        raise AudioError("contains NaN or Inf samples")
    mono = audio.mean(0)
    grid = analyse(mono, rate, settings.beats_per_bar, settings.min_bpm, settings.max_bpm)
    if grid is None:
        raise AudioError("no beats found")
    loops = plan_loops(grid, mono, rate, settings.bars, settings.overlap, settings.beats_per_bar)
    if settings.percussive and loops:
        from musicgen_lora.data.percussive import percussive_emphasis

        audio = percussive_emphasis(audio, settings.harmonic_gain)
    caption = base_caption if re.search(r"\bbpm\b", base_caption, re.IGNORECASE) else f"{base_caption}, {round(grid.bpm)} bpm"
    rows, dropped = [], 0
    for loop in loops:
        start = round(loop.start * rate)
        clip = audio[:, start : start + round(loop.seconds * rate)]
        if loudness_db(clip) < settings.min_loudness_db or longest_silence(clip.mean(0), rate) > settings.max_silence:
            dropped += 1
            continue
        name = f"{stem}_{loop.index:03d}.wav"
        _write_wav(folder / name, _fade_out(clip, rate), rate)
        rows.append({
            "file_name": name, "text": caption, "source": source, "bpm": round(grid.bpm, 2),
            "start": round(loop.start, 4), "seconds": round(loop.seconds, 4),
        })
    return rows, dropped


def _fade_out(clip: np.ndarray, rate: int, seconds: float = 0.005) -> np.ndarray:
    """A 5 ms fade at the end: the cut lands just before the next downbeat, so no click remains."""
    n = min(clip.shape[-1], max(1, round(seconds * rate)))
    clip = clip.copy()
    clip[:, -n:] *= np.linspace(1.0, 0.0, n, dtype=clip.dtype)
    return clip


def _write_wav(path: Path, clip: np.ndarray, rate: int) -> None:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(clip.T, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buffer.getvalue())


def _write_metadata(out_dir: Path, folder: str, sources: dict) -> None:
    rows = [
        {k: v for k, v in row.items() if k != "path"}
        for entry in sources.values() if entry["folder"] == folder
        for row in entry["loops"]
    ]
    rows.sort(key=lambda row: row["file_name"])
    path = out_dir / folder / METADATA
    if rows or path.exists():
        atomic_write_bytes(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())


# ----------------------------------------------------------------------------- CLI


@dataclass(frozen=True)
class LoopsArgs:
    """Cut beat-aligned loops (downbeat to downbeat) out of longer audio, with captions that say the tempo."""

    in_dir: Annotated[Path, tyro.conf.arg(name="in")]
    """Folder of audio files (searched recursively; metadata.csv / .jsonl captions are reused)."""
    out: Path
    """Output folder: loops, a metadata.jsonl per sub folder, and loops_manifest.json."""
    bars: int = 4
    """Bars per loop."""
    beats_per_bar: int = 4
    """Beats per bar (4 for 4/4, 3 for 3/4)."""
    overlap: int = 0
    """Bars shared by consecutive loops (0: loops follow each other; bars - 1: a loop per bar)."""
    min_bpm: float = 70.0
    """Tempo range the beat grid is moved into by doubling or halving (tempo-octave errors)."""
    max_bpm: float = 180.0
    """Upper end of the tempo range."""
    min_loudness_db: float = -40.0
    """Loops quieter than this RMS level in dBFS are dropped."""
    max_silence: float = 0.5
    """Loops silent (< -60 dBFS) for more than this share of their length in one stretch are dropped."""
    percussive: bool = False
    """Write percussive-emphasised loops (harmonic-percussive separation, computed once here)."""
    harmonic_gain: float = 0.0
    """With --percussive: share of the harmonic part kept (0: drums only)."""
    caption_template: str = "{folder} loop"
    """Caption of a source without a metadata caption ({folder}, {stem}); ', <bpm> bpm' is appended."""


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = tyro.cli(LoopsArgs, args=argv, prog="musicgen-lora loops")
    fields = {k: v for k, v in asdict(args).items() if k not in {"in_dir", "out"}}
    try:
        require_folder("--out", args.out)
        result = extract_loops(args.in_dir, args.out, LoopSettings(**fields))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for source, reason in sorted(result.failed.items()):
        print(f"  {source}: {reason}", file=sys.stderr)
    print(result.summary())
    return 0 if result.written or result.unchanged else 1
