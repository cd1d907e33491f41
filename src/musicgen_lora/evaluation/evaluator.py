"""Generation metrics: Frechet audio distance (FAD) to held-out clips and CLAP text-audio similarity.

All are computed on a fixed prompt set with fixed seeds, so values compare across steps and runs.

Two FADs. `gen/fad_clap` is the standard one, comparable with published numbers: LAION CLAP audio
embeddings computed as fadtk's `clap-laion-*` models do (audio as 16-bit PCM, resampled to 48 kHz,
one embedding per clip from its first 10 s), logged whenever CLAP weights are available. fadtk and
frechet-audio-distance themselves do not fit the lock (together they pin transformers 4.x, numpy
1.x and huggingface-hub 0.x), so the embedding is computed here with transformers' ClapModel.
`gen/fad` is a latent FAD, comparable only across runs of this project:

its embedding, default `encodec`, is the model's own EnCodec *encoder* latents (the continuous
(B, D, frames) output before quantisation), needing no download. With `frames` pooling every
latent frame (50 per second) is one sample of the Gaussian, as the original FAD (Kilgour et al.)
used frame-level VGGish embeddings: a few short clips already give hundreds of samples in D = 128
dimensions. `clip` pooling gives one sample per clip (mean and std over its frames, 2D dims),
which needs many more clips than dimensions to mean anything. Stereo is mixed to mono first.

FAD with few samples is biased upwards and the covariance may be rank deficient: a ridge of
`ridge * mean variance` is added to both covariances (it cancels exactly for identical sets), and
the matrix square root is taken by symmetric eigendecompositions in float64, with negative
round-off eigenvalues clipped, instead of a general `sqrtm` of a non-symmetric product. Compare
FAD values only between runs with the same prompts, seeds, seconds and reference clips.

CLAP (transformers `ClapModel`) needs weights that are not bundled; without them the CLAP metrics
(gen/clap and the standard gen/fad_clap) are skipped with one notice per run, never an error.
A CLAP FAD from a few dozen clips in 512 dimensions is biased upwards (rank-deficient covariance):
compare it between runs with the same prompts, seeds and reference, and with published values only
at comparable set sizes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from musicgen_lora.evaluation.clap import ClapScorer
from musicgen_lora.evaluation.fad import Embedder, frechet_distance
from musicgen_lora.modeling.generate import generate_audio

log = logging.getLogger(__name__)



@dataclass
class GenerationEvaluator:
    """Generates `prompts` x `seeds` and scores them: gen/fad (vs `reference`), gen/fad_clap (vs
    `clap_reference`) and gen/clap."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    seconds: float
    sample_rate: int
    reference: np.ndarray | None
    """Embeddings of the held-out clips; None skips FAD."""
    embed: Embedder | None
    clap: ClapScorer | None = None
    guidance: float = 3.0
    top_k: int = 250
    temperature: float = 1.0
    clap_reference: np.ndarray | None = None
    """CLAP embeddings (ClapScorer.fad_embeddings) of the same held-out clips; None skips gen/fad_clap."""
    reference_clips: int = 0
    """How many clips the references hold (logged as gen/reference_clips when > 0)."""

    def generate(self, model, tokenizer) -> tuple[list[np.ndarray], list[str]]:
        clips, texts = [], []
        for seed in self.seeds:
            audio = generate_audio(
                model, tokenizer, list(self.prompts), seconds=self.seconds, guidance=self.guidance,
                top_k=self.top_k, temperature=self.temperature, seed=seed,
            )
            clips.extend(audio)
            texts.extend(self.prompts)
        return clips, texts

    def __call__(self, model, tokenizer, suffix: str = "") -> dict[str, float]:
        """Metrics of `model` as gen/fad{suffix}, gen/fad_clap{suffix}, gen/clap{suffix} (those that
        are available)."""
        clips, texts = self.generate(model, tokenizer)
        metrics = {}
        if self.reference is not None and self.embed is not None:
            metrics[f"gen/fad{suffix}"] = frechet_distance(self.embed(clips), self.reference)
        if self.clap is not None and self.clap_reference is not None:
            metrics[f"gen/fad_clap{suffix}"] = frechet_distance(self.clap.fad_embeddings(clips, self.sample_rate), self.clap_reference)
        if self.clap is not None:
            metrics[f"gen/clap{suffix}"] = self.clap.similarity(clips, self.sample_rate, texts)
        if metrics and self.reference_clips:
            metrics["gen/reference_clips"] = float(self.reference_clips)
        return metrics

    def base_metrics(self, model, tokenizer) -> dict[str, float]:
        """The same metrics with the LoRA adapter switched off: gen/fad_base, gen/clap_base."""
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return self(model, tokenizer, suffix="_base")
        return self(model, tokenizer, suffix="_base")
