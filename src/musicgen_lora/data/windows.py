"""Training examples: windows over cached codes, exact-resume order (the held-out split: groups.py).

Every random choice (clip order, window offset, condition and melody dropout) is a pure function of the run
seed and the example's global draw number, so a resumed run draws exactly the examples the
uninterrupted run would have, whatever the number of processes or data workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from musicgen_lora.data import PadMode
from musicgen_lora.data.chroma import WindowChroma
from musicgen_lora.data.groups import split_clips as split_clips  # the split lives with the groups
from musicgen_lora.modeling.collate import Example

"""How a clip shorter than the window is filled:
tile: repeat the clip (loops repeat musically); every frame is a training target. Prepare tiles
    loops in the audio domain (seam-exact codes), so this code-domain tiling is only a fallback for
    a cache made for shorter windows.
pad: pad with masked frames that are never training targets.
zero_pad_legacy: pad with the codec's codes for silence AND train on them; the old behaviour,
    kept only to measure what it costs (experiment 06). Validation masks that padding, as `pad`."""


@dataclass(frozen=True)
class Clip:
    codes: np.ndarray  # (K, T) int16
    caption: str
    source: str
    content_sha256: str
    group: str = ""  # files of one source share a group ("": the file alone); see groups.py
    chroma: np.ndarray | None = None  # melody models: (frames,) chroma bins of the clip (see chroma.py)


class DataConfigError(ValueError):
    """The data cannot serve the requested windows or batches; the message says what to change."""


def window(
    codes: np.ndarray,
    frames: int,
    offset: int,
    pad_mode: PadMode,
    special_token_id: int,
    silence_codes: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of `frames` frames starting at `offset`: (codes (K, frames), valid (frames,))."""
    length = codes.shape[-1]
    if length >= frames:
        piece = codes[:, offset : offset + frames]
        return torch.from_numpy(piece.astype(np.int64)), torch.ones(frames, dtype=torch.bool)
    if pad_mode == "tile":
        repeats = -(-(frames + offset) // length)
        tiled = np.tile(codes, (1, repeats))[:, offset : offset + frames]
        return torch.from_numpy(tiled.astype(np.int64)), torch.ones(frames, dtype=torch.bool)
    padded = np.full((codes.shape[0], frames), special_token_id, dtype=np.int64)
    padded[:, :length] = codes
    valid = torch.zeros(frames, dtype=torch.bool)
    valid[:length] = True
    if pad_mode == "zero_pad_legacy":
        if silence_codes is None:
            raise ValueError("zero_pad_legacy needs the codec's codes for silence")
        padded[:, length:] = silence_padding(silence_codes, frames - length)
        valid[:] = True
    return torch.from_numpy(padded), valid


def silence_padding(silence_codes: np.ndarray, frames: int) -> np.ndarray:
    """(K, frames): the silence codes repeated along time, each codebook in its own row."""
    repeats = -(-frames // silence_codes.shape[-1])
    return np.tile(silence_codes, (1, repeats))[:, :frames]


def window_offset(length: int, frames: int, pad_mode: PadMode, rng: np.random.Generator) -> int:
    if length > frames:
        return int(rng.integers(0, length - frames + 1))
    if length < frames and pad_mode == "tile":
        return int(rng.integers(0, length))  # start anywhere in the loop
    return 0


class TrainWindows(torch.utils.data.Dataset):
    """Random windows. Item `g` is the g-th draw of the run: epoch g // n, shuffled clip order per
    epoch, window offset and condition dropout from an RNG seeded with (seed, g)."""

    def __init__(
        self,
        clips: list[Clip],
        *,
        frames: int,
        pad_mode: PadMode,
        special_token_id: int,
        seed: int,
        condition_dropout: float,
        caption_override: str | None = None,
        silence_codes: np.ndarray | None = None,
        chroma: WindowChroma | None = None,
        chroma_dropout: float = 0.0,
    ):
        self.clips = clips
        self.chroma = chroma
        self.chroma_dropout = chroma_dropout
        self.frames = frames
        self.pad_mode = pad_mode
        self.special_token_id = special_token_id
        self.seed = seed
        self.condition_dropout = condition_dropout
        self.caption_override = caption_override
        self.silence_codes = silence_codes

    def epoch_size(self) -> int:
        return len(self.clips)

    def _clip_for_draw(self, draw: int) -> Clip:
        epoch, position = divmod(draw, len(self.clips))
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.clips))
        return self.clips[int(order[position])]

    def __len__(self) -> int:  # draws are unbounded; the sampler decides how many
        return 2**62

    def __getitem__(self, draw: int) -> Example:
        clip = self._clip_for_draw(draw)
        rng = np.random.default_rng([self.seed, draw, 2])
        offset = window_offset(clip.codes.shape[-1], self.frames, self.pad_mode, rng)
        codes, valid = window(
            clip.codes, self.frames, offset, self.pad_mode, self.special_token_id, self.silence_codes
        )
        drop = bool(rng.random() < self.condition_dropout)
        if self.chroma is None:
            return Example(codes, valid, self.caption_override or clip.caption, drop)
        # Drawn after the caption's: the melody is dropped independently of the text.
        drop_chroma = bool(rng.random() < self.chroma_dropout)
        chroma = self.chroma(clip.chroma, clip.codes.shape[-1], self.frames, offset, self.pad_mode)
        return Example(codes, valid, self.caption_override or clip.caption, drop, chroma, drop_chroma)


class EvalWindows(torch.utils.data.Dataset):
    """Fixed held-out windows: consecutive windows covering each clip, no dropout; the same every
    evaluation, so validation losses are comparable across steps and runs."""

    def __init__(self, clips, *, frames, pad_mode, special_token_id, caption_override=None, silence_codes=None, max_windows=64,
                 chroma: WindowChroma | None = None):
        self.items: list[Example] = []
        for clip in clips:
            length = clip.codes.shape[-1]
            for offset in range(0, max(1, length - frames + 1), frames):
                codes, valid = window(clip.codes, frames, offset, pad_mode, special_token_id, silence_codes)
                if pad_mode == "zero_pad_legacy":  # scored like `pad`: the padding is not the clip
                    valid = valid & (torch.arange(frames) < length - offset)
                melody = None if chroma is None else chroma(clip.chroma, length, frames, offset, pad_mode)
                self.items.append(Example(codes, valid, caption_override or clip.caption, False, melody))
        self.items = self.items[:max_windows]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        return self.items[index]


class DrawSampler(torch.utils.data.Sampler[int]):
    """Global draw numbers `start, start+1, ..., stop-1`: the data order is a counter, so resuming
    at draw `start` continues exactly where the interrupted run stopped."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def check_windows(clips: list[Clip], frames: int, pad_mode: PadMode, frame_rate: int) -> None:
    """Reject a window no clip can fill when padding is masked out (everything would be padding)."""
    longest = max(clip.codes.shape[-1] for clip in clips)
    if pad_mode == "pad" and longest < frames:
        raise DataConfigError(
            f"window of {frames / frame_rate:.1f} s is longer than every clip (longest {longest / frame_rate:.1f} s) "
            "and padding is masked out: shorten --data.window-seconds or use --data.pad-mode tile."
        )


def window_capacity(clips: list[Clip], frames: int) -> int:
    """Distinct windows of `frames` the clips hold (a clip shorter than a window counts once)."""
    return sum(max(1, clip.codes.shape[-1] // frames) for clip in clips)


def check_batch(clips: list[Clip], frames: int, batch_size: int) -> None:
    """Reject a batch larger than the number of distinct windows the data holds (every batch
    would repeat examples)."""
    capacity = window_capacity(clips, frames)
    if batch_size > capacity:
        raise DataConfigError(
            f"batch of {batch_size} windows, but the training data holds only {capacity} distinct windows "
            f"({len(clips)} clips): lower --train.batch-size (or use grad accumulation) or add data."
        )
