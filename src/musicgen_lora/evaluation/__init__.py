"""Scoring generated audio: Frechet audio distance on EnCodec or CLAP embeddings, CLAP text-audio
similarity, and the evaluator that generates from fixed prompts and scores against held-out audio.

Imports: helpers, data and modeling only.
"""
