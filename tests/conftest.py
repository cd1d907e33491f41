"""Shared fixtures: the tiny offline MusicGen, the demo loops and their token cache.

Everything here runs offline on CPU in seconds; tests never download weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests are offline by construction: never let a hub lookup wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def tiny_model():
    from musicgen_lora.model import build_tiny_musicgen

    return build_tiny_musicgen()


@pytest.fixture(scope="session")
def tokenizer():
    from musicgen_lora.model import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from musicgen_lora.demo import write_demo_loops

    folder = tmp_path_factory.mktemp("demo_loops")
    write_demo_loops(folder, loops_per_style=1)
    return folder


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, demo_dir) -> Path:
    """The demo loops encoded by the tiny model's codec (read-only for tests: copy before changing)."""
    from musicgen_lora.model import audio_format, build_tiny_musicgen, codec_identity
    from musicgen_lora.tokens import codec_encoder, prepare_cache

    model = build_tiny_musicgen()
    fmt = audio_format(model)
    cache = tmp_path_factory.mktemp("demo_cache")
    prepare_cache(
        demo_dir, cache, encoder=codec_encoder(model.audio_encoder, fmt, torch.device("cpu")),
        fmt=fmt, codec_id=codec_identity(model, "tiny"),
    )
    return cache
