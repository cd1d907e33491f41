"""Shared fixtures: the tiny offline MusicGen, the demo loops and their token cache.

Everything here runs offline on CPU in seconds; tests never download weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
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
    from musicgen_lora.modeling.model import build_tiny_musicgen

    return build_tiny_musicgen()


@pytest.fixture(scope="session")
def tokenizer():
    from musicgen_lora.modeling.model import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from musicgen_lora.data.demo import write_demo_loops

    folder = tmp_path_factory.mktemp("demo_loops")
    write_demo_loops(folder, loops_per_style=1)
    return folder


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, demo_dir) -> Path:
    """The demo loops encoded by the tiny model's codec (read-only for tests: copy before changing)."""
    from musicgen_lora.data.tokens import codec_encoder, prepare_cache
    from musicgen_lora.modeling.model import audio_format, build_tiny_musicgen, codec_identity

    model = build_tiny_musicgen()
    fmt = audio_format(model)
    cache = tmp_path_factory.mktemp("demo_cache")
    prepare_cache(
        demo_dir, cache, encoder=codec_encoder(model.audio_encoder, fmt, torch.device("cpu")),
        fmt=fmt, codec_id=codec_identity(model, "tiny"),
    )
    return cache


# --- issue 6 (reliability): the tiny codec as a cache encoder, and quick runs of the experiment script.

BASELINE = REPO_ROOT / "experiments" / "01_baseline.py"


@dataclass(frozen=True)
class TinyCodec:
    """What `prepare_cache` needs to encode with the tiny model's EnCodec."""

    encoder: object
    fmt: object
    codec_id: str

    def prepare(self, data_dir: Path, cache_dir: Path, **kwargs):
        from musicgen_lora.data.tokens import prepare_cache

        return prepare_cache(data_dir, cache_dir, encoder=self.encoder, fmt=self.fmt, codec_id=self.codec_id, **kwargs)


@pytest.fixture(scope="session")
def tiny_codec() -> TinyCodec:
    from musicgen_lora.data.tokens import codec_encoder
    from musicgen_lora.modeling.model import (
        TINY_MODEL,
        audio_format,
        build_tiny_musicgen,
        codec_identity,
    )

    model = build_tiny_musicgen()
    fmt = audio_format(model)
    encoder = codec_encoder(model.audio_encoder, fmt, torch.device("cpu"))
    return TinyCodec(encoder, fmt, codec_identity(model, TINY_MODEL))


def quick_args(run_dir: Path, cache_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    """Flags of the experiment script for a seconds-long CPU run of the tiny model on `data_dir`."""
    return [
        "--smoke",
        "--output-dir", str(run_dir),
        "--data.path", str(data_dir),
        "--data.cache-dir", str(cache_dir),
        "--data.window-seconds", "0.5",
        "--data.val-fraction", "0",
        "--train.batch-size", "2",
        "--train.log-every", "1",
        "--train.eval-every", "0",
        "--sample.no-base-model",
        "--metrics.no-enabled",
        "--sample.seconds", "0.04",
        *extra,
    ]


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child training process: offline, one thread (deterministic, shares the cores)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_baseline(args: list[str], *, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run experiments/01_baseline.py to completion in a child process with the venv's python."""
    return subprocess.run(
        [sys.executable, str(BASELINE), *args], env=env or child_env(), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=timeout,
    )


# Runs the experiment script; with PAUSE_AT set, hangs in the PAUSE_AT-th training forward pass
# (after the checkpoint before it is complete) and says so in PAUSE_FILE: the moment to kill it.
PAUSING = textwrap.dedent("""
    import os, runpy, sys, time
    from pathlib import Path
    import musicgen_lora.training.loop as train

    pause_at, calls, forward_loss = int(os.environ.get("PAUSE_AT", "0")), [], train.forward_loss
    def pausing_forward_loss(model, *args, **kwargs):
        calls.append(model.training)  # evaluation passes do not count
        if sum(calls) == pause_at and model.training:
            Path(os.environ["PAUSE_FILE"]).touch()
            # Short sleeps: a SIGINT the kernel hands to another thread (torch's) does not wake
            # one long sleep, and the interrupt would wait for it (a CI run timed out so).
            for _ in range(6000):
                time.sleep(0.1)
        return forward_loss(model, *args, **kwargs)
    train.forward_loss = pausing_forward_loss
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def tiny_clap():
    """(model, processor) of a random small CLAP (ByT5 tokenizer: no files), for offline tests."""
    from transformers import (
        ByT5Tokenizer,
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
    )

    torch.manual_seed(0)
    text = ClapTextConfig(vocab_size=384, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, projection_dim=16)
    audio = ClapAudioConfig(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                            window_size=8, projection_dim=16, enable_fusion=False)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16))
    return model, ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=ByT5Tokenizer())
