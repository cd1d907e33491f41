"""What a caption says about a clip: tempo and key (librosa), genre / instrument / mood tags
(zero-shot CLAP), and the template that turns them into a caption. No file handling here.

Key: the mean chroma of the clip is correlated with the Krumhansl-Kessler major and minor
profiles rotated to each of the 12 tonics; the best of the 24 is the key. Tempo: librosa's beat
tracker, with the tempo fitted through the beat times (see `beat_analysis.analyse`), so a steady loop's
bpm is not rounded to the tracker's tempo grid.

Tags: CLAP embeds the audio and one text prompt per candidate tag ("techno music", "the sound of
drums"); within a category the cosine similarities, scaled by CLAP's own logit scale, are turned
into probabilities by a softmax. These scores say how a tag ranks against the other candidates, not
an absolute probability that it is present.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import torch

from musicgen_lora.data.audio import resample

ANALYSIS_RATE = 22050
NOTES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

VOCABULARY: dict[str, tuple[str, ...]] = {
    "genre": ("techno", "house", "hip hop", "trap", "drum and bass", "breakbeat", "dubstep", "rock", "metal",
              "funk", "jazz", "pop", "reggae", "latin", "ambient", "lo-fi", "classical", "electronic"),
    "instrument": ("drums", "kick drum", "snare", "hi-hats", "percussion", "bass", "synth", "piano", "guitar",
                   "strings", "brass", "vocals", "pads"),
    "mood": ("energetic", "dark", "chill", "happy", "sad", "aggressive", "dreamy", "groovy", "tense"),
}
PROMPTS = {"genre": "{} music", "instrument": "the sound of {}", "mood": "{} music"}
MAX_TAGS = {"genre": 1, "instrument": 3, "mood": 1}
"""Tags kept per category (those at or above the threshold, best first)."""
FIELDS = ("genre", "instruments", "mood", "bpm", "key", "folder", "stem")
"""Placeholders a caption template may use."""


def estimate_bpm(mono: np.ndarray, rate: int) -> float | None:
    """Tempo in bpm (moved into 70-180 by octave), or None when no beat is found."""
    from musicgen_lora.tools.beat_analysis import analyse

    grid = analyse(mono, rate, beats_per_bar=4)
    return None if grid is None else float(grid.bpm)


def estimate_key(mono: np.ndarray, rate: int) -> tuple[str | None, float]:
    """("A major" / "F# minor", correlation), or (None, 0) for a clip without pitch content."""
    import librosa

    y = resample(mono[None].astype(np.float32), rate, ANALYSIS_RATE)[0]
    if not np.abs(y).max() > 0:
        return None, 0.0
    chroma = librosa.feature.chroma_cqt(y=y, sr=ANALYSIS_RATE).mean(axis=1)
    if np.ptp(chroma) < 1e-6:
        return None, 0.0
    best = (None, -2.0)
    for mode, profile in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(np.roll(profile, tonic), chroma)[0, 1])
            if r > best[1]:
                best = (f"{NOTES[tonic]} {mode}", r)
    return best


@dataclass
class ClapTagger:
    """Zero-shot tags from a `evaluation.clap.ClapScorer`; the prompts are embedded once."""

    scorer: object
    vocabulary: dict[str, tuple[str, ...]] | None = None

    def __post_init__(self):
        self.vocabulary = self.vocabulary or VOCABULARY
        self.text = {c: self.scorer.text_embeddings([PROMPTS[c].format(t) for t in tags])
                     for c, tags in self.vocabulary.items()}
        scale = getattr(self.scorer.model, "logit_scale_a", None)
        self.scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0

    def scores(self, audio: np.ndarray, rate: int) -> dict[str, dict[str, float]]:
        """{category: {tag: probability among the category's candidates}} for one clip."""
        embedding = self.scorer.audio_embeddings([audio], rate)[0]
        result = {}
        for category, tags in self.vocabulary.items():
            logits = self.scale * (self.text[category] @ embedding)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            result[category] = {tag: float(p) for tag, p in zip(tags, probs, strict=True)}
        return result


def keep_tags(scores: dict[str, dict[str, float]], threshold: float) -> dict[str, dict[str, float]]:
    """The best tags per category (MAX_TAGS) with a score >= threshold, rounded for the file."""
    kept = {}
    for category, tag_scores in scores.items():
        best = sorted(tag_scores.items(), key=lambda item: -item[1])[: MAX_TAGS.get(category, 1)]
        kept[category] = {tag: round(score, 3) for tag, score in best if score >= threshold}
    return kept


def template_fields(template: str) -> list[str]:
    """The placeholders of `template`; ValueError naming an unknown one."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    unknown = [name for name in names if name not in FIELDS]
    if unknown or any(not name for name in names):
        raise ValueError(f"--template: unknown placeholder {unknown or ['{}']}; use {', '.join('{' + f + '}' for f in FIELDS)}")
    return names


def render(template: str, values: dict[str, str | None]) -> str:
    """Fill the template; a comma-separated part whose placeholders have no value is left out
    (no "None bpm", no dangling commas when tags are off or below the threshold)."""
    parts = []
    for part in template.split(","):
        names = template_fields(part)
        if any(not values.get(name) for name in names):
            continue
        text = " ".join(part.format(**{name: values[name] for name in names}).split())
        if text:
            parts.append(text)
    return ", ".join(parts)
