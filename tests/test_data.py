"""Windows: tiling, masked padding, deterministic split and draw order."""

import numpy as np
import torch

from musicgen_lora.data.windows import Clip, TrainWindows, split_clips, window


def _clip(name, frames, k=4):
    codes = np.arange(k * frames, dtype=np.int16).reshape(k, frames) % 2048
    return Clip(codes, f"{name} loop", f"{name}.wav", f"{name}-sha")


def test_short_clip_is_tiled_and_fully_trained():
    codes, valid = window(_clip("a", 30).codes, 70, offset=5, pad_mode="tile", special_token_id=2048)
    assert codes.shape == (4, 70) and bool(valid.all())
    assert codes[0, :3].tolist() == [5, 6, 7] and codes[0, 25].item() == 0  # wraps to the loop start


def test_padding_is_masked_never_a_target():
    codes, valid = window(_clip("a", 30).codes, 70, offset=0, pad_mode="pad", special_token_id=2048)
    assert valid.sum() == 30 and not valid[30:].any()
    assert (codes[:, 30:] == 2048).all()


def test_legacy_zero_padding_trains_on_silence_codes():
    silence = np.full((4, 50), 7, dtype=np.int16)
    codes, valid = window(_clip("a", 30).codes, 70, 0, "zero_pad_legacy", 2048, silence)
    assert bool(valid.all()) and (codes[:, 30:] == 7).all()


def test_split_is_deterministic_and_by_content():
    clips = [_clip(str(i), 40) for i in range(20)]
    train, val = split_clips(clips, 0.2)
    assert len(val) == 4 and len(train) == 16
    _, again_val = split_clips(list(reversed(clips)), 0.2)
    assert {c.source for c in val} == {c.source for c in again_val}


def test_draws_are_a_pure_function_of_seed_and_index():
    clips = [_clip(str(i), 200) for i in range(5)]
    a = TrainWindows(clips, frames=50, pad_mode="tile", special_token_id=2048, seed=3, condition_dropout=0.5)
    b = TrainWindows(clips, frames=50, pad_mode="tile", special_token_id=2048, seed=3, condition_dropout=0.5)
    for draw in (0, 7, 123):
        x, y = a[draw], b[draw]
        assert torch.equal(x.codes, y.codes) and x.caption == y.caption and x.drop_condition == y.drop_condition
    # each epoch visits every clip once
    assert sorted(a[i].caption for i in range(5)) == sorted(c.caption for c in clips)
    drops = [a[i].drop_condition for i in range(400)]
    assert 0.4 < sum(drops) / len(drops) < 0.6
