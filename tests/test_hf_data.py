"""--data.dataset: Hugging Face datasets (save_to_disk, parquet, audiofolder, Hub id) into the token cache."""

import csv
import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from conftest import BASELINE, child_env
from musicgen_lora.data.hf_datasets import DatasetSourceError, load_splits
from musicgen_lora.data.tokens import load_manifest
from musicgen_lora.training.data_setup import split_cached


def _demo_rows(demo_dir):
    """(wav bytes, caption) of the demo loops, as a dataset would hold them."""
    with open(demo_dir / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [((demo_dir / row["file_name"]).read_bytes(), row["text"]) for row in rows]


def _audio_dataset(rows):
    from datasets import Audio, Dataset

    ds = Dataset.from_dict({"audio": [{"bytes": b, "path": None} for b, _ in rows], "text": [t for _, t in rows]})
    return ds.cast_column("audio", Audio())  # a real Audio feature, as Hub datasets have


def _saved_dict(demo_dir, path):
    from datasets import DatasetDict

    rows = _demo_rows(demo_dir)
    DatasetDict({"train": _audio_dataset(rows[:4]), "validation": _audio_dataset(rows[4:])}).save_to_disk(str(path))
    return rows


def test_save_to_disk_dataset_trains_end_to_end(demo_dir, tmp_path):
    """The user's path with its defaults: --smoke --data.dataset PATH (the demo loops are not used)."""
    rows = _saved_dict(demo_dir, tmp_path / "ds")
    run_dir = tmp_path / "run"
    done = subprocess.run(  # in tmp_path: the default cache folder (.cache/...) lands there
        [sys.executable, str(BASELINE), "--smoke", "--data.dataset", str(tmp_path / "ds"), "--output-dir", str(run_dir)],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["dataset"] == str(tmp_path / "ds") and config["data"]["path"] is None
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == config["train"]["max_steps"] and any("val/loss" in r for r in records)
    assert "6 usable files" in done.stdout
    assert not (tmp_path / ".cache" / "musicgen-lora" / "demo_audio").exists()  # the demo loops were not used
    caches = list((tmp_path / ".cache" / "musicgen-lora" / "tokens").glob("hf-ds-*/manifest.json"))
    assert len(caches) == 1
    entries = json.loads(caches[-1].read_text())["entries"]
    assert {e["origin_split"] for e in entries} == {"train", "validation"}
    assert {e["caption"] for e in entries} == {t for _, t in rows}


def test_dataset_cache_splits_by_origin_and_reuses_codes(demo_dir, tmp_path, tiny_codec):
    from musicgen_lora.data.hf_datasets import prepare_dataset_cache

    _saved_dict(demo_dir, tmp_path / "ds")
    kwargs = {"encoder": tiny_codec.encoder, "fmt": tiny_codec.fmt, "codec_id": tiny_codec.codec_id}
    first = prepare_dataset_cache(str(tmp_path / "ds"), tmp_path / "cache", **kwargs)
    assert first.encoded == 6 and not first.skipped
    train, val, _ = split_cached(tmp_path / "cache", val_fraction=0.5)
    assert len(train) == 4 and len(val) == 2  # the dataset's own validation split, not 50 %
    assert all(c.source.startswith("validation/") for c in val)
    assert prepare_dataset_cache(str(tmp_path / "ds"), tmp_path / "cache", **kwargs).encoded == 0

    # --data.split validation trains on it; "train" is then no held-out split name: random split.
    other = prepare_dataset_cache(str(tmp_path / "ds"), tmp_path / "cache2", split="validation", **kwargs)
    assert {e.origin_split for e in other.entries} == {"validation"}
    train, val, _ = split_cached(tmp_path / "cache2", 0.5, "validation")
    assert len(train) == 1 and len(val) == 1


def test_audio_in_both_splits_is_only_held_out(demo_dir, tmp_path, tiny_codec):
    from datasets import DatasetDict

    from musicgen_lora.data.hf_datasets import prepare_dataset_cache

    rows = _demo_rows(demo_dir)
    DatasetDict({"train": _audio_dataset(rows[:4]), "test": _audio_dataset(rows[3:])}).save_to_disk(str(tmp_path / "ds"))
    result = prepare_dataset_cache(str(tmp_path / "ds"), tmp_path / "cache", encoder=tiny_codec.encoder,
                                   fmt=tiny_codec.fmt, codec_id=tiny_codec.codec_id)
    assert result.encoded == 6 and len(result.entries) == 7  # the shared clip is encoded once
    train, val, _ = split_cached(tmp_path / "cache", 0.1)
    assert len(train) == 3 and len(val) == 3
    assert not {c.content_sha256 for c in train} & {c.content_sha256 for c in val}


def test_old_cache_without_origin_split_is_readable(demo_cache, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    for entry in manifest["entries"]:
        entry.pop("origin_split", None)  # as written before the field existed
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert all(e.origin_split is None for e in load_manifest(cache))
    train, val, _ = split_cached(cache, 0.2)
    assert len(val) == 1 and len(train) == 5  # the random content-hash split, as before


def test_arrays_paths_and_parquet(tmp_path, tiny_codec):
    from datasets import Dataset

    from musicgen_lora.data.hf_datasets import prepare_dataset_cache

    rate = 16000
    tone = (0.3 * np.sin(np.arange(rate) * 2 * np.pi * 220 / rate)).astype(np.float32)
    soundfile.write(tmp_path / "tone.wav", tone, rate)
    ds = Dataset.from_dict({
        "sound": [{"array": tone, "sampling_rate": rate}, {"array": tone[::-1].copy(), "sampling_rate": rate}],
        "caption": ["a tone", ""],
    })
    ds.to_parquet(str(tmp_path / "pq" / "train-0.parquet"))
    result = prepare_dataset_cache(str(tmp_path / "pq"), tmp_path / "cache", audio_column="sound", text_column="caption",
                                   caption_template="{folder} sound", encoder=tiny_codec.encoder, fmt=tiny_codec.fmt,
                                   codec_id=tiny_codec.codec_id)
    assert [e.caption for e in result.entries] == ["a tone", "pq sound"]  # an empty caption gets the template
    assert result.encoded == 2 and result.entries[0].frames > 0
    with pytest.raises(DatasetSourceError, match=r"--data\.text-column 'text'"):
        prepare_dataset_cache(str(tmp_path / "pq"), tmp_path / "cache", audio_column="sound",
                              encoder=tiny_codec.encoder, fmt=tiny_codec.fmt, codec_id=tiny_codec.codec_id)


def test_audiofolder_with_train_and_test_splits(tmp_path):
    for split in ("train", "test"):
        folder = tmp_path / "af" / split
        folder.mkdir(parents=True)
        buffer = io.BytesIO()
        soundfile.write(buffer, np.full(800, 0.1, np.float32), 8000, format="WAV")
        (folder / "a.wav").write_bytes(buffer.getvalue())
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.wav", "text": f"{split} clip"}) + "\n")
    splits = load_splits(str(tmp_path / "af"))
    assert set(splits) == {"train", "test"}
    assert splits["test"]["text"] == ["test clip"] and splits["train"]["text"] == ["train clip"]


def test_unreachable_hub_id_fails_fast_naming_the_option(tmp_path, capsys, monkeypatch):
    from musicgen_lora.training import prepare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    code = prepare.main(["--dataset", "someone/not-cached-here", "--model", "tiny", "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 30
    assert "--data.dataset 'someone/not-cached-here'" in err and "save_to_disk" in err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://unreachable.invalid")
    with pytest.raises(DatasetSourceError, match="cannot be reached"):
        load_splits("someone/not-cached-here")


def test_prepare_needs_exactly_one_source(capsys):
    from musicgen_lora.training import prepare

    assert prepare.main(["--model", "tiny"]) == 2
    assert "either --data" in capsys.readouterr().err


def test_dataset_and_path_together_are_refused():
    from musicgen_lora.training.config import RunConfig, apply_overrides
    from musicgen_lora.training.validation import ConfigValueError, validate_run_config

    cfg = apply_overrides(RunConfig(), {"data.dataset": "some/dataset", "data.path": "loops"})
    with pytest.raises(ConfigValueError, match="pass only one"):
        validate_run_config(cfg)
    validate_run_config(apply_overrides(RunConfig(), {"data.dataset": "some/dataset"}))


def test_single_saved_dataset_is_the_training_split(demo_dir, tmp_path):
    _audio_dataset(_demo_rows(demo_dir)[:2]).save_to_disk(str(tmp_path / "one"))
    splits = load_splits(str(tmp_path / "one"))
    assert list(splits) == ["train"] and splits["train"].num_rows == 2
    _saved_dict(demo_dir, tmp_path / "dict")
    with pytest.raises(DatasetSourceError, match="splits: train, validation"):
        load_splits(str(tmp_path / "dict"), split="training")
