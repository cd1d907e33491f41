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

from musicgen_lora.audio import AudioError, decode, find_audio_files, resample
from musicgen_lora.captions import fallback_caption, read_metadata
from musicgen_lora.outputs import require_folder
from musicgen_lora.tokens import atomic_write_bytes, atomic_write_json, file_sha256

log = logging.getLogger(__name__)

ANALYSIS_RATE = 22050
HOP = 256  # 11.6 ms analysis frames
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


@dataclass(frozen=True)
class BeatGrid:
    bpm: float
    beats: np.ndarray
    """Beat times in seconds (tempo-octave corrected)."""
    downbeat_phase: int
    """Index of the first downbeat in `beats`."""


@dataclass(frozen=True)
class Loop:
    start: float
    """Start time in the source, seconds (snapped to the attack)."""
    seconds: float
    index: int
    """Position among the loops the file's grid allows (names stay stable when some are dropped)."""


# ----------------------------------------------------------------------------- analysis


def analyse(mono: np.ndarray, rate: int, beats_per_bar: int, min_bpm: float = 70.0, max_bpm: float = 180.0) -> BeatGrid | None:
    """Beat grid of a mono signal; None when fewer than two beats are found."""
    import librosa

    y = resample(mono[None].astype(np.float32), rate, ANALYSIS_RATE)[0]
    onset = librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=HOP)
    _, frames = librosa.beat.beat_track(onset_envelope=onset, sr=ANALYSIS_RATE, hop_length=HOP, start_bpm=120.0)
    beats = librosa.frames_to_time(frames, sr=ANALYSIS_RATE, hop_length=HOP)
    if len(beats) < 2:
        return None
    beats = fix_tempo_octave(beats, onset, min_bpm, max_bpm)
    if len(beats) < 2:
        return None
    period = float(np.polyfit(np.arange(len(beats)), beats, 1)[0])
    beats, phase = downbeat_phase(y, beats, onset, beats_per_bar, period)
    return BeatGrid(60.0 / period, beats, phase)


def fix_tempo_octave(beats: np.ndarray, onset: np.ndarray, min_bpm: float, max_bpm: float) -> np.ndarray:
    """Double or halve the beat grid until its tempo is within [min_bpm, max_bpm]."""
    for _ in range(4):
        bpm = 60.0 / float(np.median(np.diff(beats)))
        if bpm < min_bpm:
            beats = np.sort(np.concatenate([beats, (beats[:-1] + beats[1:]) / 2]))
        elif bpm > max_bpm and len(beats) >= 4:
            strength = [_at(onset, beats[start::2]).mean() for start in (0, 1)]
            beats = beats[int(np.argmax(strength)) :: 2]
        else:
            break
    return beats


def downbeat_phase(
    y: np.ndarray, beats: np.ndarray, onset: np.ndarray, beats_per_bar: int, period: float
) -> tuple[np.ndarray, int]:
    """(beats, phase): the beat grid and the index (0 .. beats_per_bar - 1) of its first downbeat.

    Grid: the tracker's, or the grid half a beat later when that carries clearly (x1.3) more
    kick-band energy and onset strength: the tracker locked onto off-beats (busy hi-hats).
    Phase: the most kick-band (< 100 Hz) energy minus a quarter of the snare-band (200 Hz - 2 kHz)
    energy, as the kick marks the downbeat and the snare the backbeat. A four-on-the-floor pattern
    without accents leaves beats 1 and 3 alike, and either may be chosen.
    """
    low = _band_energy(y, None, 100.0)
    mid = _band_energy(y, 200.0, 2000.0)
    shifted = beats + period / 2
    shifted = shifted[shifted < len(y) / ANALYSIS_RATE]
    both = np.concatenate([beats, shifted])
    strength = [
        sum(_at(f, g, after=4).mean() / max(_at(f, both, after=4).mean(), 1e-12) for f in (low, onset))
        for g in (beats, shifted)
    ]
    grid = shifted if len(shifted) >= 2 and strength[1] > 1.3 * strength[0] else beats
    kick, snare = _at(low, grid, after=4), _at(mid, grid, after=4)
    scores = [
        kick[p::beats_per_bar].mean() / max(kick.mean(), 1e-12) - 0.25 * snare[p::beats_per_bar].mean() / max(snare.mean(), 1e-12)
        for p in range(min(beats_per_bar, len(grid)))
    ]
    return grid, int(np.argmax(scores))


def _band_energy(y: np.ndarray, low: float | None, high: float) -> np.ndarray:
    """Frame energy (hop HOP) of `y` band-passed to [low, high] Hz (low-passed when low is None)."""
    import librosa
    from scipy.signal import butter, sosfiltfilt

    if low is None:
        sos = butter(8, high, btype="low", fs=ANALYSIS_RATE, output="sos")
    else:
        sos = butter(4, [low, high], btype="band", fs=ANALYSIS_RATE, output="sos")
    return librosa.feature.rms(y=sosfiltfilt(sos, y), frame_length=1024, hop_length=HOP)[0] ** 2


def _at(feature: np.ndarray, times: np.ndarray, after: int = 1) -> np.ndarray:
    """Max of a frame-rate feature in [time - 1 frame, time + `after` frames] for each time."""
    frames = np.round(np.asarray(times) * ANALYSIS_RATE / HOP).astype(int)
    return np.array([feature[max(0, f - 1) : f + after + 1].max(initial=0.0) for f in frames])


def snap_to_attack(mono: np.ndarray, rate: int, time: float, radius: float = 0.05, min_rise_db: float = 6.0) -> float:
    """The attack nearest `time`: start of the largest rise of short-time (1.5 ms) energy within
    `radius` seconds, if it rises by `min_rise_db` or more; otherwise `time` unchanged."""
    frame = max(1, round(0.0015 * rate))
    lo = max(0, round((time - radius) * rate))
    hi = min(len(mono), round((time + radius) * rate))
    count = (hi - lo) // frame
    if count < 3:
        return time
    energy = (mono[lo : lo + count * frame].reshape(count, frame).astype(np.float64) ** 2).mean(1)
    rise = np.diff(10 * np.log10(energy + 1e-10))
    best = int(np.argmax(rise))
    if rise[best] < min_rise_db:
        return time
    return (lo + (best + 1) * frame) / rate


def plan_loops(grid: BeatGrid, mono: np.ndarray, rate: int, bars: int, overlap: int, beats_per_bar: int) -> list[Loop]:
    """Loops of `bars` bars starting on every (bars - overlap)-th downbeat that fit in the file."""
    seconds = bars * beats_per_bar * 60.0 / grid.bpm
    duration = len(mono) / rate
    loops = []
    step = (bars - overlap) * beats_per_bar
    for index, beat in enumerate(range(grid.downbeat_phase, len(grid.beats), step)):
        start = snap_to_attack(mono, rate, float(grid.beats[beat]))
        if start + seconds <= duration + 1e-9:
            loops.append(Loop(start, seconds, index))
    return loops


def loudness_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64))) + 1e-12))


def longest_silence(mono: np.ndarray, rate: int, threshold_db: float = -60.0) -> float:
    """Longest run of 50 ms frames quieter than `threshold_db` dBFS RMS, as a share of the clip
    (the gaps between sparse drum hits are short; a track that stops mid-loop is not)."""
    frame = max(1, round(0.05 * rate))
    count = len(mono) // frame
    if count == 0:
        return 1.0
    rms = np.sqrt((mono[: count * frame].reshape(count, frame).astype(np.float64) ** 2).mean(1))
    longest = run = 0
    for silent in 20 * np.log10(rms + 1e-12) < threshold_db:
        run = run + 1 if silent else 0
        longest = max(longest, run)
    return longest / count


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
    audio, rate = decode(path)
    if not np.isfinite(audio).all():
        raise AudioError("contains NaN or Inf samples")
    mono = audio.mean(0)
    grid = analyse(mono, rate, settings.beats_per_bar, settings.min_bpm, settings.max_bpm)
    if grid is None:
        raise AudioError("no beats found")
    loops = plan_loops(grid, mono, rate, settings.bars, settings.overlap, settings.beats_per_bar)
    if settings.percussive and loops:
        from musicgen_lora.percussive import percussive_emphasis

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
