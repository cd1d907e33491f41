"""Generation metrics: FAD numerics, EnCodec embeddings, CLAP (tiny random model), the evaluator,
and gen/* records in a real (tiny) training run."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import scipy.linalg
import torch

from conftest import child_env, quick_args, run_baseline, tiny_clap
from musicgen_lora.evaluation.clap import ClapScorer, as_pcm16
from musicgen_lora.evaluation.evaluator import GenerationEvaluator
from musicgen_lora.evaluation.fad import decode_codes, encodec_embedder, frechet_distance


def _correlated(rng, n, d):
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)


def test_fad_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    a = _correlated(rng, 300, 16)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(a, rowvar=False)))
    # Fewer samples than dimensions (rank-deficient covariance): still 0, still finite.
    few = a[:5]
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a[:1], a[:1]) == 0.0


def test_fad_grows_monotonically_with_noise():
    rng = np.random.default_rng(1)
    clean = _correlated(rng, 400, 12)
    noise = rng.standard_normal(clean.shape)
    levels = [0.0, 0.1, 0.3, 1.0, 3.0]
    distances = [frechet_distance(clean, clean + level * noise) for level in levels]
    assert distances[0] == pytest.approx(0.0, abs=1e-9)
    assert all(later > earlier for earlier, later in itertools.pairwise(distances)), distances
    # A mean shift alone adds exactly |shift|^2.
    shift = np.full(12, 0.5)
    assert frechet_distance(clean, clean + shift) == pytest.approx(12 * 0.25, rel=1e-6)


def test_fad_matches_the_textbook_formula():
    rng = np.random.default_rng(2)
    a, b = _correlated(rng, 500, 8), _correlated(rng, 400, 8)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b, ridge=0.0) == pytest.approx(reference, rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-4)  # the default ridge barely moves it
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :4])


def test_encodec_embeddings_and_decoded_codes(tiny_model):
    codec = tiny_model.audio_encoder
    clips = [np.random.default_rng(3).standard_normal((1, 16000)).astype(np.float32) * 0.1]
    frames = encodec_embedder(codec, "frames")(clips)
    pooled = encodec_embedder(codec, "clip")(clips)
    assert frames.shape == (25, 16)  # 0.5 s at 50 frames/s, 16 latent dims
    assert pooled.shape == (1, 32)  # mean + std per dim
    codes = np.random.default_rng(4).integers(0, 2048, size=(4, 10))
    audio = decode_codes(codec, codes)
    assert audio.shape == (1, 10 * 640) and np.isfinite(audio).all()


def test_evaluator_is_deterministic_and_scores_base_and_adapter(tiny_model, tokenizer):
    from musicgen_lora.modeling.model import apply_lora

    codec = tiny_model.audio_encoder
    embed = encodec_embedder(codec)
    reference_codes = np.random.default_rng(5).integers(0, 2048, size=(4, 40))
    evaluator = GenerationEvaluator(
        prompts=("techno drum loop", "house drum loop"), seeds=(0, 1), seconds=0.1, sample_rate=32000,
        reference=embed([decode_codes(codec, reference_codes)]), embed=embed,
    )
    model = apply_lora(tiny_model, r=2, alpha=2, dropout=0.0, targets=("q_proj", "v_proj"))
    first = evaluator(model, tokenizer)
    assert set(first) == {"gen/fad"} and np.isfinite(first["gen/fad"]) and first["gen/fad"] > 0
    assert evaluator(model, tokenizer) == first  # fixed prompts and seeds: the same value every time
    # A fresh adapter (LoRA B = 0) is the base model: identical clips, identical FAD.
    assert evaluator.base_metrics(model, tokenizer) == {"gen/fad_base": first["gen/fad"]}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    assert evaluator(model, tokenizer)["gen/fad"] != first["gen/fad"]
    assert evaluator.base_metrics(model, tokenizer) == {"gen/fad_base": first["gen/fad"]}


def test_clap_unavailable_is_a_notice_not_an_error(tmp_path):
    scorer, notice = ClapScorer.load(str(tmp_path / "no-clap-here"), "auto", "cpu")
    assert scorer is None and "CLAP metrics are skipped" in notice and "hf download" in notice
    assert "gen/fad_clap" in notice  # says that the standard FAD is the one missing
    scorer, notice = ClapScorer.load("laion/clap-htsat-unfused", "off", "cpu")
    assert scorer is None and "off" in notice


def _tiny_clap() -> ClapScorer:
    return ClapScorer(*tiny_clap())


def test_clap_similarity_with_a_tiny_random_clap():
    scorer = _tiny_clap()
    rng = np.random.default_rng(6)
    clips = [rng.standard_normal((1, 16000)).astype(np.float32) * 0.1 for _ in range(2)]
    embeddings = scorer.audio_embeddings(clips, 32000)  # resampled 32 kHz -> 48 kHz inside
    assert embeddings.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    score = scorer.similarity(clips, 32000, ["a drum loop", "a bass line"])
    assert -1.0 <= score <= 1.0
    assert scorer.similarity(clips, 32000, ["a drum loop", "a bass line"]) == pytest.approx(score, abs=1e-6)


def test_standard_clap_fad_next_to_the_latent_one(tiny_model, tokenizer):
    """gen/fad_clap: one CLAP embedding per clip (16-bit PCM, 48 kHz) against the reference's, beside
    the EnCodec-latent gen/fad; the base model is scored the same way."""
    from musicgen_lora.modeling.model import apply_lora

    codec, clap = tiny_model.audio_encoder, _tiny_clap()
    embed = encodec_embedder(codec)
    reference_audio = [decode_codes(codec, np.random.default_rng(s).integers(0, 2048, size=(4, 40))) for s in range(3)]
    evaluator = GenerationEvaluator(
        prompts=("techno drum loop", "house drum loop"), seeds=(0, 1), seconds=0.1, sample_rate=32000,
        reference=embed(reference_audio), embed=embed, clap=clap,
        clap_reference=clap.fad_embeddings(reference_audio, 32000), reference_clips=3,
    )
    assert evaluator.clap_reference.shape == (3, 16)  # one embedding per clip
    model = apply_lora(tiny_model, r=2, alpha=2, dropout=0.0, targets=("q_proj", "v_proj"))
    scores = evaluator(model, tokenizer)
    assert set(scores) == {"gen/fad", "gen/fad_clap", "gen/clap", "gen/reference_clips"}
    assert scores["gen/reference_clips"] == 3 and np.isfinite(scores["gen/fad_clap"]) and scores["gen/fad_clap"] > 0
    clips, _ = evaluator.generate(model, tokenizer)
    expected = frechet_distance(clap.fad_embeddings(clips, 32000), evaluator.clap_reference)
    assert scores["gen/fad_clap"] == pytest.approx(expected, rel=1e-6)
    base = evaluator.base_metrics(model, tokenizer)  # fresh adapter = base model: the same values
    assert base["gen/fad_clap_base"] == pytest.approx(scores["gen/fad_clap"], rel=1e-6)


def test_pcm16_rounding_as_fadtk():
    clip = np.array([[0.5, -2.0, 1e-6, 0.25 + 1e-7]], dtype=np.float32)
    pcm = as_pcm16(clip)
    np.testing.assert_allclose(pcm * 32767, np.round(pcm * 32767), atol=1e-3)  # on the 16-bit grid
    assert pcm[0, 1] == -1.0 and pcm[0, 2] == 0.0 and abs(pcm[0, 0] - 0.5) < 1 / 32767


@pytest.mark.slow
def test_training_run_logs_generation_metrics(tmp_path, demo_dir):
    run_dir = tmp_path / "run"
    args = quick_args(run_dir, tmp_path / "cache", demo_dir, "--metrics.enabled", "--metrics.seeds", "0",
                      "--metrics.seconds", "0.2", "--train.max-steps", "2")
    done = run_baseline(args, env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CLAP metrics are skipped" in done.stderr  # no CLAP weights offline: said once, run goes on
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    gen = [r for r in records if any(key.startswith("gen/") for key in r)]
    assert [r["step"] for r in gen] == [0, 2]
    assert set(gen[0]) >= {"gen/fad_base"} and set(gen[-1]) >= {"gen/fad", "gen/fad_base"}
    assert gen[-1]["gen/fad_base"] == gen[0]["gen/fad_base"]
    assert all(np.isfinite(r[k]) and r[k] >= 0 for r in gen for k in r if k.startswith("gen/"))
