"""Beat analysis for cutting loops: the beat grid and its tempo octave, the downbeat phase from kick
and snare energy, loop starts snapped to the attack, and the loudness and silence checks (see
`tools.loops` for the method)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from musicgen_lora.data.audio import resample

ANALYSIS_RATE = 22050
HOP = 256  # 11.6 ms analysis frames


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
