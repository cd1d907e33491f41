"""Loss: equals MusicGen's built-in loss; metrics count only labelled tokens."""

import math

import torch

from musicgen_lora.modeling.collate import IGNORE_INDEX, Example, MusicgenCollator, codebook_delays
from musicgen_lora.modeling.forward import TextStateCache, forward_loss
from musicgen_lora.modeling.loss import codebook_cross_entropy, codebook_metrics


def _batch(tokenizer, drop=(False, False), frames=12):
    collator = MusicgenCollator(tokenizer, delays=codebook_delays(4), special_token_id=2048)
    valid = torch.ones(frames, dtype=torch.bool)
    examples = [
        Example(torch.randint(0, 2048, (4, frames)), valid, caption, d)
        for caption, d in zip(["techno drum loop", "house"], drop, strict=True)
    ]
    return collator(examples)


def test_loss_equals_builtin_musicgen_loss(tiny_model, tokenizer):
    batch = _batch(tokenizer)
    ours, _ = forward_loss(tiny_model, batch)
    builtin = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(ours, builtin, atol=1e-5)


def test_cached_text_states_give_the_same_loss(tiny_model, tokenizer):
    batch = _batch(tokenizer)
    cache = TextStateCache()
    fresh, _ = forward_loss(tiny_model, batch)
    first, _ = forward_loss(tiny_model, batch, cache)
    second, _ = forward_loss(tiny_model, batch, cache)
    assert len(cache) == 2
    assert torch.allclose(fresh, first, atol=1e-6) and torch.equal(first, second)


def test_per_codebook_metrics_from_known_logits():
    labels = torch.full((1, 3, 2), IGNORE_INDEX)
    labels[0, 0, 0], labels[0, 1, 0], labels[0, 2, 1] = 1, 2, 3
    logits = torch.zeros(1 * 2, 3, 4)
    logits[0, 0, 1] = 10.0  # codebook 0, position 0: confident and right
    logits[0, 1, 3] = 10.0  # codebook 0, position 1: confident and wrong (label 2)
    loss, stats = codebook_cross_entropy(logits, labels)
    assert stats["count"].tolist() == [2, 1]
    assert stats["correct"].tolist() == [1, 0]  # codebook 1: uniform logits pick id 0, label is 3
    metrics = codebook_metrics(stats, "val")
    uniform = math.log(4)
    assert abs(metrics["val/ce_cb1"] - uniform) < 1e-5
    assert metrics["val/acc_cb0"] == 0.5 and metrics["val/tokens"] == 3
    assert abs(loss.item() - (metrics["val/ce_cb0"] + metrics["val/ce_cb1"]) / 2) < 1e-5
    assert abs(metrics["val/ppl_cb1"] - 4.0) < 1e-4


def test_condition_dropout_and_guidance_are_finite(tiny_model, tokenizer):
    """A fully dropped caption (all-zero cross-attention mask) stays NaN-free under SDPA."""
    from musicgen_lora.modeling.generate import generate_audio

    assert tiny_model.config.decoder._attn_implementation == "sdpa"
    batch = _batch(tokenizer, drop=(True, True))
    loss, _ = forward_loss(tiny_model, batch)
    out = tiny_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"] * 0,
        decoder_input_ids=batch["decoder_input_ids"],
    )
    assert torch.isfinite(loss) and torch.isfinite(out.logits).all()
    audio = generate_audio(tiny_model, tokenizer, ["techno", "dnb"], seconds=0.3, guidance=3.0, seed=0)
    assert audio.shape == (2, 1, 9600) and bool(torch.isfinite(torch.from_numpy(audio)).all())


def test_text_states_are_deterministic_while_training(tiny_model, tokenizer):
    """T5 runs without dropout even in train mode: a cached state equals a fresh one and inference's."""
    from musicgen_lora.modeling.forward import text_states

    batch = _batch(tokenizer)
    mask = batch["attention_mask"][..., None]  # the cache leaves padding positions at zero
    inference = text_states(tiny_model, batch, None) * mask
    tiny_model.train()
    assert torch.equal(text_states(tiny_model, batch, None) * mask, inference)
    # The cache encodes each caption alone (unpadded, so its states never depend on the batch that
    # first held it: exact resume); that differs from a padded batch only in float rounding.
    assert torch.allclose(text_states(tiny_model, batch, TextStateCache()), inference, atol=1e-5)
    assert tiny_model.text_encoder.training  # the mode is restored


def test_cached_text_states_do_not_depend_on_the_batch(tiny_model, tokenizer):
    """A caption's cached states are the same bits whichever batch (and padding) first held it, so
    a resumed run, whose cache fills in another order, trains on exactly the same states."""
    captions = ["techno drum loop, 128 bpm", "a much longer caption: trap hi-hats, rolling 808s, 140 bpm"]
    alone, together = TextStateCache(), TextStateCache()
    for cache, batches in ((alone, [captions[:1], captions[1:]]), (together, [captions])):
        for texts in batches:
            text = tokenizer(texts, padding=True, return_tensors="pt")
            cache.encode(tiny_model.text_encoder, text["input_ids"], text["attention_mask"])
    assert alone._states.keys() == together._states.keys()
    assert all(torch.equal(alone._states[key], together._states[key]) for key in alone._states)


def _sliced_cross_entropy(logits, labels):
    """codebook_cross_entropy as it was before it skipped the no-op slice (the reference)."""
    batch, length, num_codebooks = labels.shape
    logits = logits.reshape(batch, num_codebooks, -1, logits.shape[-1])[:, :, -length:]
    targets = labels.transpose(1, 2)
    token_ce = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).reshape(batch, num_codebooks, -1)
    mask = targets != IGNORE_INDEX
    counts = mask.sum(dim=(0, 2))
    ce_sums = (token_ce * mask).sum(dim=(0, 2))
    correct = ((logits.argmax(-1) == targets) & mask).sum(dim=(0, 2))
    stats = {"ce_sum": ce_sums, "correct": correct, "count": counts}
    return (ce_sums / counts.clamp(min=1)).mean(), stats


def _graph_nodes(tensor) -> set[str]:
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_loss_without_the_no_op_slice_keeps_values_and_gradients():
    """Logits as long as the labels are not sliced (no zero-filled gradient copy in backward); loss,
    statistics and gradients equal the sliced formulation bit for bit, with and without a prefix."""
    torch.manual_seed(0)
    labels = torch.randint(0, 32, (2, 7, 4))
    labels[0, :3, 1] = IGNORE_INDEX
    for prefix in (0, 3):  # 3: a melody model's condition prefix, which is sliced off
        base = torch.randn(2 * 4, 7 + prefix, 32)
        results = []
        for loss_fn in (codebook_cross_entropy, _sliced_cross_entropy):
            logits = base.clone().requires_grad_()
            loss, stats = loss_fn(logits, labels)
            loss.backward()
            results.append((loss.detach(), stats, logits.grad))
            if loss_fn is codebook_cross_entropy:
                assert ("SliceBackward0" in _graph_nodes(loss)) == bool(prefix)
        (loss, stats, grad), (ref_loss, ref_stats, ref_grad) = results
        assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
        assert all(torch.equal(stats[key], ref_stats[key]) for key in ref_stats)
