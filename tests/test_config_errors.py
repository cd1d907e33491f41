"""Issue 6.2: bad configuration fails before any heavy work, with a message saying what to change."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from musicgen_lora.data.tokens import CacheMismatchError
from musicgen_lora.data.windows import DataConfigError
from musicgen_lora.modeling.model import LoraTargetError, ModelLoadError, load_musicgen
from musicgen_lora.training.config import SMOKE_OVERRIDES, RunConfig, apply_overrides
from musicgen_lora.training.loop import train


@pytest.fixture
def config(tmp_path, demo_dir, demo_cache):
    """A smoke config on the demo loops with a private copy of their token cache."""
    shutil.copytree(demo_cache, tmp_path / "cache")

    def make(**overrides) -> RunConfig:
        base = apply_overrides(RunConfig(), SMOKE_OVERRIDES)
        return apply_overrides(base, {
            "output_dir": tmp_path / "run", "data.path": demo_dir, "data.cache_dir": tmp_path / "cache",
            "metrics.enabled": False, "train.max_steps": 1, **overrides,
        })

    return make


def test_unknown_model_offline_fails_fast_naming_the_fix(config):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        train(config(**{"model.name": "no-such-org/no-such-musicgen"}))
    assert time.perf_counter() - start < 15  # not a minute of download retries
    message = str(error.value)
    assert "--smoke" in message and "--model.name" in message


def test_offline_mode_is_respected(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_musicgen("facebook/musicgen-small")
    assert time.perf_counter() - start < 5


def test_cache_for_another_sample_rate_is_refused(config, tmp_path):
    cfg = config()
    identity = json.loads((cfg.data.cache_dir / "cache.json").read_text())
    (cfg.data.cache_dir / "cache.json").write_text(json.dumps({**identity, "sample_rate": 24000}))
    before = sorted((cfg.data.cache_dir / "codes").iterdir())
    with pytest.raises(CacheMismatchError, match=r"sample_rate: cache has 24000, model needs 32000[\s\S]*--data.cache-dir"):
        train(cfg)
    assert sorted((cfg.data.cache_dir / "codes").iterdir()) == before  # nothing encoded or overwritten


def test_cache_for_another_codec_is_refused(config):
    cfg = config()
    identity = json.loads((cfg.data.cache_dir / "cache.json").read_text())
    (cfg.data.cache_dir / "cache.json").write_text(json.dumps({**identity, "codec_id": "0123456789abcdef"}))
    with pytest.raises(CacheMismatchError, match="codec_id"):
        train(cfg)


def test_lora_target_matching_nothing_fails_before_encoding(config, tmp_path):
    cfg = config(**{"lora.targets": ("q_proj", "qkv_proj"), "data.cache_dir": tmp_path / "fresh_cache"})
    with pytest.raises(LoraTargetError, match=r"'qkv_proj' matches no module[\s\S]*Choose from: .*q_proj.*--lora.targets"):
        train(cfg)
    assert not (tmp_path / "fresh_cache").exists()  # failed before the token cache was built


def test_window_longer_than_every_clip_without_tiling(config):
    with pytest.raises(DataConfigError, match=r"longer than every clip.*--data.window-seconds.*--data.pad-mode tile"):
        train(config(**{"data.window_seconds": 30.0, "data.pad_mode": "pad"}))


def test_batch_the_data_cannot_fill(config):
    with pytest.raises(DataConfigError, match=r"batch of 64 windows.*lower --train.batch-size"):
        train(config(**{"train.batch_size": 64}))


def test_experiment_prints_the_message_and_exits_2(tmp_path, demo_dir, capsys):
    from musicgen_lora.training.experiment import main

    argv = ["--smoke", "--output-dir", str(tmp_path / "run"), "--data.path", str(demo_dir),
            "--data.cache-dir", str(tmp_path / "cache"), "--lora.targets", "nope"]
    assert main(RunConfig(), {"default": {}}, script="01_baseline.py", argv=argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: LoRA target 'nope' matches no module") and "Traceback" not in err
