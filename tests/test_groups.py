"""Issue 12.4: the held-out split is by group (files of one source), never by file."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile

from musicgen_lora.data.groups import check_group_by, file_groups, split_record, split_sides
from musicgen_lora.data.tokens import load_manifest
from musicgen_lora.data.windows import Clip, split_clips
from musicgen_lora.tools import loops
from musicgen_lora.training import prepare
from musicgen_lora.training.config import DataConfig
from musicgen_lora.training.data_setup import load_clips
from test_loops import RATE, drum_track

TRACKS = ("funk", "house", "rock")


def _clip(name: str, group: str = "", content: str | None = None) -> Clip:
    return Clip(np.zeros((4, 10), np.int16), "a loop", f"{name}.wav", content or f"{name}-sha", group)


def _sides_by(clips: list[Clip], key) -> dict[str, set[str]]:
    train, val = split_clips(clips, DataConfig().val_fraction)
    sides: dict[str, set[str]] = {}
    for side, chosen in (("train", train), ("val", val)):
        for clip in chosen:
            sides.setdefault(key(clip), set()).add(side)
    return sides


@pytest.fixture(scope="module")
def looped(tmp_path_factory):
    """Three drum tracks cut by `musicgen-lora loops` with its defaults, then prepared with the
    defaults of `musicgen-lora prepare` (the user's path)."""
    root = tmp_path_factory.mktemp("group_split")
    (root / "songs" / "drums").mkdir(parents=True)
    for seed, name in enumerate(TRACKS):
        soundfile.write(root / "songs" / "drums" / f"{name}.wav", drum_track(120, 0.2 + 0.1 * seed, bars=9, seed=seed), RATE)
    assert loops.main(["--in", str(root / "songs"), "--out", str(root / "loops")]) == 0
    assert prepare.main(["--data", str(root / "loops"), "--model", "tiny", "--cache", str(root / "cache")]) == 0
    return root


def test_loops_of_one_track_never_sit_on_both_sides(looped):
    clips = load_clips(looped / "cache")
    track = {json.loads(line)["file_name"]: json.loads(line)["source"]
             for line in (looped / "loops" / "drums" / "metadata.jsonl").read_text().splitlines()}
    assert len(clips) >= 2 * len(TRACKS)  # 9 bars: two 4-bar loops per track
    assert {clip.group for clip in clips} == {f"source:drums/{name}.wav" for name in TRACKS}
    sides = _sides_by(clips, lambda clip: track[clip.source.split("/")[-1]])
    assert sorted(sides) == [f"drums/{name}.wav" for name in TRACKS]
    assert all(len(s) == 1 for s in sides.values()), sides  # no track on both sides
    assert set().union(*sides.values()) == {"train", "val"}  # and a track is held out
    # The leak this prevents: split file by file, the same loops do straddle the split.
    by_file = [Clip(c.codes, c.caption, c.source, c.content_sha256) for c in clips]
    assert any(len(s) == 2 for s in _sides_by(by_file, lambda clip: track[clip.source.split("/")[-1]]).values())


def test_without_metadata_the_loop_names_group_the_files(looped, tmp_path):
    bare = tmp_path / "bare"
    (bare / "drums").mkdir(parents=True)
    for wav in (looped / "loops" / "drums").glob("*.wav"):
        (bare / "drums" / wav.name).write_bytes(wav.read_bytes())
    files = sorted(bare.rglob("*.wav"))
    groups = file_groups(files, bare)
    assert {groups[f] for f in files} == {f"name:drums/{name}" for name in TRACKS}
    assert set(file_groups(files, bare, "file").values()) == {""}
    assert set(file_groups(files, bare, "folder").values()) == {"folder:drums"}
    assert set(file_groups(files, bare, r"stem-regex:^([a-z])").values()) == {"regex:drums/f", "regex:drums/h", "regex:drums/r"}


def test_val_fraction_is_a_share_of_groups_and_deterministic():
    clips = [_clip(f"g{g}_{i}", f"source:g{g}") for g in range(10) for i in range(3)]
    sides = split_sides(clips, 0.2)
    assert sorted(sides.values()).count("val") == 2
    train, val = split_clips(clips, 0.2)
    assert len(val) == 6 and len(train) == 24
    assert split_sides(list(reversed(clips)), 0.2) == sides
    record = split_record(clips, 0.2)
    assert record["groups"] == {"train": 8, "val": 2} and record["files_per_side"] == {"train": 24, "val": 6}
    assert {(f["file"], f["group"], f["side"]) for f in record["files"]} == {
        (c.source, c.group, sides[c.group]) for c in clips
    }


def test_two_groups_hold_one_out_one_group_holds_none():
    two = [_clip("a1", "source:a"), _clip("a2", "source:a"), _clip("b1", "source:b")]
    assert sorted(split_sides(two, 0.01).values()) == ["train", "val"]
    one = [_clip("a1", "source:a"), _clip("a2", "source:a")]
    assert split_clips(one, 0.5) == (one, [])


def test_identical_files_join_their_groups():
    clips = [_clip(f"x{i}", f"source:x{i}") for i in range(12)] + [_clip("copy", "source:other", content="x3-sha")]
    for fraction in (0.1, 0.3, 0.5, 0.7):
        sides = split_sides(clips, fraction)
        assert sides["source:other"] == sides["source:x3"]


def test_files_without_a_group_split_as_before_by_content():
    """Old caches (no group) keep the split they had: by content hash, a share of distinct files."""
    clips = [_clip(str(i)) for i in range(20)]
    ranked = sorted({c.content_sha256 for c in clips}, key=lambda h: hashlib.sha256(f"split:{h}".encode()).hexdigest())
    _, val = split_clips(clips, 0.2)
    assert {c.content_sha256 for c in val} == set(ranked[:4])


@pytest.mark.parametrize("rule", ["auto", "source", "folder", "file", r"stem-regex:^(.*)_\d+$"])
def test_group_rules_are_accepted(rule):
    check_group_by(rule)


@pytest.mark.parametrize(("rule", "message"), [("track", "must be one of"), ("stem-regex:(", "not a regular expression")])
def test_bad_group_rules_are_refused(rule, message):
    with pytest.raises(ValueError, match=message):
        check_group_by(rule)


def test_the_manifest_carries_the_group_and_old_manifests_still_load(looped, tmp_path):
    entries = load_manifest(looped / "cache")
    assert all(entry.group.startswith("source:drums/") for entry in entries)
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((looped / "cache" / "manifest.json").read_text())
    for entry in manifest["entries"]:
        del entry["group"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert {entry.group for entry in load_manifest(old)} == {""}


def test_a_run_from_before_groups_resumes_only_with_its_split_by_file():
    from musicgen_lora.training.config import RunConfig, apply_overrides, to_dict
    from musicgen_lora.training.resume import config_changes

    old = to_dict(RunConfig())
    del old["data"]["group_by"]
    assert config_changes(old, to_dict(apply_overrides(RunConfig(), {"data.group_by": "file"}))) == {}
    assert config_changes(old, to_dict(RunConfig())) == {"data.group_by": ("file", "auto")}


def test_a_bad_rule_is_refused_before_any_work():
    from musicgen_lora.training.config import RunConfig, apply_overrides
    from musicgen_lora.training.validation import ConfigValueError, validate_run_config

    with pytest.raises(ConfigValueError, match=r"--data\.group-by must be one of auto, source, folder, file"):
        validate_run_config(apply_overrides(RunConfig(), {"data.group_by": "tracks"}))
