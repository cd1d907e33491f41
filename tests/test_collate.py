"""Collate: delay-pattern labels match what `generate()` builds; padding is never a target."""

import torch

from musicgen_lora.modeling.collate import (
    IGNORE_INDEX,
    Example,
    MusicgenCollator,
    codebook_delays,
    delay_pattern_labels,
    delay_pattern_sequence,
)

PAD = 2048


def test_sequence_equals_transformers_delay_pattern(tiny_model):
    codes = torch.randint(0, 2048, (3, 4, 17))
    ours = delay_pattern_sequence(codes, torch.ones(3, 17, dtype=torch.bool), codebook_delays(4), PAD)
    start = torch.full((3, 4, 1), PAD)
    prompt = torch.cat([start, codes], dim=-1).reshape(3 * 4, -1)
    _, pattern = tiny_model.decoder.build_delay_pattern_mask(prompt, pad_token_id=PAD, max_length=17 + 4)
    assert torch.equal(ours, pattern.reshape(3, 4, -1))


def test_labels_layout_and_shift():
    codes = torch.arange(4 * 6).reshape(1, 4, 6)
    decoder_input_ids, labels = delay_pattern_labels(codes, torch.ones(1, 6, dtype=torch.bool), [0, 1, 2, 3], PAD)
    assert labels.shape == (1, 6 + 3, 4)  # (batch, time, codebooks), never (B, K, T)
    assert decoder_input_ids.shape == (4, 6 + 3)
    for k in range(4):
        # codebook k: frame t is the label at position t + k; everything else is ignored
        assert labels[0, k : k + 6, k].tolist() == codes[0, k].tolist()
        assert (labels[0, :k, k] == IGNORE_INDEX).all()
        assert (labels[0, k + 6 :, k] == IGNORE_INDEX).all()
        # decoder inputs start with the start token at the codebook's delay
        assert decoder_input_ids[k, k] == PAD
        assert decoder_input_ids[k, k + 1 : k + 7].tolist()[: 6 + 3 - k - 1] == codes[0, k].tolist()[: 6 + 3 - k - 1]


def test_shift_matches_transformers_shift_of_labels():
    from transformers.models.musicgen.modeling_musicgen import shift_tokens_right

    codes = torch.randint(0, 2048, (2, 4, 9))
    decoder_input_ids, labels = delay_pattern_labels(codes, torch.ones(2, 9, dtype=torch.bool), [0, 1, 2, 3], PAD)
    shifted = shift_tokens_right(labels, PAD, PAD)  # what the model builds from labels
    assert torch.equal(shifted.reshape(-1, shifted.shape[-1]), decoder_input_ids)


def test_padding_frames_are_ignored():
    codes = torch.randint(0, 2048, (1, 4, 10))
    valid = torch.zeros(1, 10, dtype=torch.bool)
    valid[0, :6] = True
    _, labels = delay_pattern_labels(codes, valid, [0, 1, 2, 3], PAD)
    for k in range(4):
        assert labels[0, k : k + 6, k].tolist() == codes[0, k, :6].tolist()
        assert (labels[0, k + 6 :, k] == IGNORE_INDEX).all()
    assert (labels != IGNORE_INDEX).sum() == 4 * 6


def test_stereo_delays_interleave_pairs():
    assert codebook_delays(8, audio_channels=2) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert codebook_delays(4) == [0, 1, 2, 3]


def test_collator_tokenizes_captions_and_marks_dropout(tokenizer):
    collator = MusicgenCollator(tokenizer, delays=[0, 1, 2, 3], special_token_id=PAD)
    examples = [
        Example(torch.randint(0, 2048, (4, 8)), torch.ones(8, dtype=torch.bool), "techno drum loop, 128 bpm", False),
        Example(torch.randint(0, 2048, (4, 8)), torch.ones(8, dtype=torch.bool), "hip hop", True),
    ]
    batch = collator(examples)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["attention_mask"][0].sum() == len(b"techno drum loop, 128 bpm") + 1  # bytes + </s>
    assert batch["condition_mask"].tolist() == [1, 0]
    assert batch["labels"].shape == (2, 8 + 3, 4)
    assert batch["decoder_input_ids"].shape == (2 * 4, 8 + 3)
