"""Predicted peak memory of one LoRA training step, from the model's architecture alone.

The estimate counts what a step of `train` holds at its peak, tensor by tensor:

- the process itself (CPU only): Python, torch and the training stack imported, and what the
  first training step pages in, measured in a fresh child (`measure_process_baseline`);
- frozen weights at their dtype (T5 and the decoder at the base dtype, EnCodec always fp32) and
  float buffers;
- LoRA weights, their gradients and AdamW's two states (all fp32);
- the text encoder's states for the batch and the per-caption cache (`modeling.forward.TextStateCache`);
- activations autograd saves for backward, per decoder layer, as the installed torch / transformers
  / peft save them: LayerNorm inputs, LoRA inputs (dropped-out copies) and dropout masks, attention
  q/k/v/output (SDPA; the L x L probabilities with eager), the FFN's GELU input;
  with gradient checkpointing only each layer's input, plus one layer recomputed in backward;
- the logits (B x K x L x vocab) and the loss: our loss upcasts the logits to fp32 and its
  log-softmax output is saved; in backward its gradient and the gradient of its input coexist with
  it, so the loss peaks at 12 bytes per logit (fp32 or autocast alike);
- the transient gradients of one layer's backward.

The peak is the larger of two moments: the loss's backward (every saved activation still alive) and
one layer's backward (with checkpointing: that layer recomputed). On CPU the estimate of a run before
it starts also counts a third, loading the checkpoint (`Settings.count_loading`): the memory-mapped
files and, for a bf16 run of fp32 files, the converted copies; that is the process's peak for
musicgen-small in bf16 at small batches. `tests/test_memory_estimate.py`
checks the saved-activation count against autograd's own saved tensors, and
`benchmarks/memory_estimate.py` the totals against measured peak RSS / max_memory_allocated.

The arithmetic here needs no torch; reading an architecture (`training.architecture`) does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from musicgen_lora.training.architecture import (
    AdaptableModule,
    Architecture,
    lora_modules,
    lora_parameter_count,
)

GIB = 2**30

Precision = Literal["no", "bf16", "fp16"]
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class Settings:
    """One training configuration to estimate."""

    batch_size: int
    window_seconds: float
    device: Device = "cpu"
    precision: Precision = "no"
    """Autocast: no (fp32), bf16 or fp16."""
    base_dtype: Literal["float32", "bfloat16"] = "float32"
    """Frozen T5 and decoder weights (EnCodec is always fp32)."""
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "eager"] = "sdpa"
    lora_r: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    text_tokens: int = 64
    """Tokens of the longest caption in a batch (captions are padded to it)."""
    cached_captions: int = 0
    """Distinct captions whose T5 states the text-state cache holds."""
    process_baseline_bytes: int = 0
    """Resident set of the process before the model (CPU; see host_memory.baseline_rss_bytes)."""
    count_loading: bool = False
    """CPU: also count the moment the checkpoint loads, which can be the process's peak (a bf16 run
    of an fp32 checkpoint holds the mapped files and the converted copies at once). Off where the
    model is loaded already (--train.batch-size auto)."""


@dataclass(frozen=True)
class Row:
    label: str
    bytes: float
    group: Literal["process", "static", "peak"]


@dataclass(frozen=True)
class MemoryEstimate:
    """Components of the predicted peak (bytes) and where the peak falls."""

    rows: tuple[Row, ...]
    peak_moment: str
    saved_activation_bytes: float
    """Everything autograd holds for backward at the loss (all layers, or checkpointed inputs)."""

    @property
    def total(self) -> float:
        return sum(row.bytes for row in self.rows)

    def get(self, label_start: str) -> float:
        return sum(row.bytes for row in self.rows if row.label.startswith(label_start))


# ---------------------------------------------------------------------------------------------
# The arithmetic


@dataclass(frozen=True)
class _Saved:
    """A tensor autograd saves: `key` names its storage, so a tensor saved by two ops counts once."""

    key: str
    elements: float
    itemsize: float


def _sizes(s: Settings) -> dict[str, float]:
    """Bytes per element of each kind of saved tensor, as torch saves them on this device / precision."""
    autocast = s.precision != "no"
    base = 2 if s.base_dtype == "bfloat16" else 4
    act = 2 if autocast else base
    cuda = s.device == "cuda"
    return {
        "act": act,  # matmul / attention outputs
        "residual": base,  # the residual stream between blocks (the embeddings' dtype)
        # LayerNorm saves its input; CUDA autocast runs it in fp32 (an fp32 copy), CPU autocast does not.
        "ln": 4 if (cuda and autocast) else base,
        "ln_out": 4 if (cuda and autocast) else base,
        "text": act,  # the projected text states the cross-attention reads
        # lora_B's input (lora_A's output): the autocast dtype, else the adapter's fp32.
        "lora_in": act if autocast else 4,
        # The decoder's dropout keeps a bool mask on CUDA, a multiplier of its input's dtype on CPU.
        "hidden_mask": 1 if cuda else act,
        "fp32": 4,
    }


def _lora_by_place(arch: Architecture, modules: Iterable[AdaptableModule]) -> tuple[dict[int, set[str]], dict[str, int]]:
    """{layer: {"self_attn.q_proj", "fc1", ...}} and counts of adapted embeddings / LM heads / others."""
    per_layer: dict[int, set[str]] = {i: set() for i in range(arch.layers)}
    outside = {"embed_tokens": 0, "lm_heads": 0, "other": 0}
    for module in modules:
        match = re.search(r"\.layers\.(\d+)\.((?:self_attn|encoder_attn)\.(?:q|k|v|out)_proj|fc1|fc2)$", module.name)
        if match:
            per_layer[int(match.group(1))].add(match.group(2))
        elif re.search(r"\.embed_tokens\.\d+$", module.name):
            outside["embed_tokens"] += 1
        elif re.search(r"\.lm_heads\.\d+$", module.name):
            outside["lm_heads"] += 1
        else:
            outside["other"] += 1
    return per_layer, outside


def _layer_saved(
    arch: Architecture, s: Settings, adapted: set[str], stream_grad: bool, tag: str, lm_heads: int = 0
) -> tuple[list[_Saved], bool]:
    """Tensors one decoder layer saves for backward, and whether its output requires grad.

    `stream_grad`: whether the layer's input requires grad (false in the first layer unless the
    embeddings are adapted: then autograd records nothing until the first LoRA). `lm_heads`: instead,
    what that many adapted LM heads save on the final LayerNorm's output."""
    z = _sizes(s)
    n = s.batch_size * (arch.prefix(s.text_tokens) + arch.positions(s.window_seconds))  # decoder positions
    m = s.batch_size * s.text_tokens  # text positions
    d, f, r, heads = arch.d_model, arch.ffn_dim, s.lora_r, arch.heads
    dropout = s.lora_dropout > 0
    saved: list[_Saved] = []

    def lora(name: str, tokens: float, width: int, x_key: str, x_grad: bool, x_bytes: float) -> None:
        """What an adapted module saves, for an input `x` of `x_bytes` per element. Its dropout
        (modeling.lora_dropout) casts x to fp32 first on CUDA or without autocast, and saves a bool
        mask (CUDA's fused dropout and our CPU one alike). lora_A saves its input: the dropped-out x, autocast's
        cast of it, or (no dropout, no cast) x itself, shared by every module reading x."""
        if name not in adapted:
            return
        autocast = s.precision != "no"
        x_in = 4 if (s.device == "cuda" or not autocast) else x_bytes
        saved_bytes = z["act"] if autocast else x_in
        if dropout or x_in != x_bytes or saved_bytes != x_in:
            saved.append(_Saved(f"{tag}{name}.lora_in", tokens * width, saved_bytes))
        else:
            saved.append(_Saved(x_key, tokens * width, x_bytes))
        if dropout and x_grad:  # the mask exists only where autograd records the dropout
            saved.append(_Saved(f"{tag}{name}.mask", tokens * width, 1))  # bool, on CUDA and CPU alike
        saved.append(_Saved(f"{tag}{name}.lora_mid", tokens * r, z["lora_in"]))  # lora_B's input

    if lm_heads:
        for k in range(lm_heads):
            lora(f"lm_heads.{k}", n, d, "final_ln.ln_out", stream_grad, z["ln_out"])
        return saved, stream_grad

    def layer_norm(key: str) -> None:  # its input, and its mean and 1/std per position (fp32)
        saved.extend([_Saved(f"{key}.ln_in", n * d, z["ln"]), _Saved(f"{key}.ln_stats", 2 * n, z["fp32"])])

    def attention(prefix: str, x_grad: bool, kv_tokens: float, kv_key: str, kv_grad: bool, kv_bytes: float) -> bool:
        q_grad = x_grad or f"{prefix}.q_proj" in adapted
        k_grad = kv_grad or f"{prefix}.k_proj" in adapted
        v_grad = kv_grad or f"{prefix}.v_proj" in adapted
        if x_grad:
            layer_norm(f"{tag}{prefix}")
        for proj, tokens, key, grad, x_bytes in (("q_proj", n, f"{tag}{prefix}.ln_out", x_grad, z["ln_out"]),
                                                 ("k_proj", kv_tokens, kv_key, kv_grad, kv_bytes),
                                                 ("v_proj", kv_tokens, kv_key, kv_grad, kv_bytes)):
            lora(f"{prefix}.{proj}", tokens, d, key, grad, x_bytes)
        scores_grad = q_grad or k_grad or v_grad
        if scores_grad:
            saved.extend([_Saved(f"{tag}{prefix}.q", n * d, z["act"]), _Saved(f"{tag}{prefix}.k", kv_tokens * d, z["act"]),
                          _Saved(f"{tag}{prefix}.v", kv_tokens * d, z["act"])])
            if s.attention == "eager":  # the softmax output, B x H x L x S (the matmuls keep q, k, v)
                saved.append(_Saved(f"{tag}{prefix}.probs", n * heads * kv_tokens / s.batch_size, z["act"]))
            else:  # SDPA keeps its output and the fp32 logsumexp
                saved.extend([_Saved(f"{tag}{prefix}.out", n * d, z["act"]), _Saved(f"{tag}{prefix}.lse", n * heads, z["fp32"])])
        lora(f"{prefix}.out_proj", n, d, f"{tag}{prefix}.out", scores_grad, z["act"])
        out_grad = scores_grad or f"{prefix}.out_proj" in adapted
        if out_grad and arch.hidden_dropout > 0:
            saved.append(_Saved(f"{tag}{prefix}.dropout_mask", n * d, z["hidden_mask"]))
        return x_grad or out_grad

    stream = attention("self_attn", stream_grad, n, f"{tag}self_attn.ln_out", stream_grad, z["ln_out"])
    if arch.cross_attention:  # MusicGen-Melody has no cross-attention: its text is in the prefix
        stream = attention("encoder_attn", stream, m, "text_states", False, z["text"])
    # Feed-forward: LayerNorm, fc1, GELU, fc2 (frozen matmuls save nothing; GELU saves its input).
    if stream:
        layer_norm(f"{tag}ffn")
    lora("fc1", n, d, f"{tag}ffn.ln_out", stream, z["ln_out"])
    hidden_grad = stream or "fc1" in adapted
    if hidden_grad:
        saved.append(_Saved(f"{tag}ffn.gelu_in", n * f, z["act"]))
        if arch.activation_dropout > 0:
            saved.append(_Saved(f"{tag}ffn.act_mask", n * f, z["hidden_mask"]))
    lora("fc2", n, f, f"{tag}ffn.gelu_out", hidden_grad, z["act"])
    out = hidden_grad or "fc2" in adapted
    if out and arch.hidden_dropout > 0:
        saved.append(_Saved(f"{tag}ffn.dropout_mask", n * d, z["hidden_mask"]))
    return saved, stream or out


def _bytes(saved: Iterable[_Saved]) -> float:
    unique: dict[str, float] = {}
    for item in saved:
        unique[item.key] = max(unique.get(item.key, 0.0), item.elements * item.itemsize)
    return sum(unique.values())



def estimate(arch: Architecture, s: Settings, modules: list[AdaptableModule] | None = None) -> MemoryEstimate:
    """The predicted peak of one training step (forward, loss, backward, optimizer) with settings `s`."""
    modules = lora_modules(arch, s.lora_targets) if modules is None else modules
    z = _sizes(s)
    base = 2 if s.base_dtype == "bfloat16" else 4
    prefix = arch.prefix(s.text_tokens)
    n = s.batch_size * (prefix + arch.positions(s.window_seconds))  # decoder positions
    d = arch.d_model

    rows: list[Row] = []
    if s.device == "cpu":
        rows.append(Row("process baseline (python, torch, training stack, runtime)", s.process_baseline_bytes, "process"))
    p = arch.parameters
    rows += [
        Row("frozen weights: decoder", (p.get("decoder", 0) + arch.float_buffers.get("decoder", 0)) * base, "static"),
        # T5 and the projections into the decoder (text; MusicGen-Melody's chroma too).
        Row("frozen weights: text encoder (T5)", sum(count for part, count in p.items() if part not in ("decoder", "audio_encoder"))
            * base + arch.float_buffers.get("text_encoder", 0) * base, "static"),
        Row("frozen weights: audio codec (EnCodec, fp32)", (p.get("audio_encoder", 0) + arch.float_buffers.get("audio_encoder", 0)) * 4
            + arch.other_buffer_bytes, "static"),
    ]
    lora_params = lora_parameter_count(modules, s.lora_r)
    # fp32 weights + fp32 gradients + AdamW exp_avg / exp_avg_sq; autocast keeps a low-precision copy.
    rows.append(Row("LoRA weights + gradients + AdamW states", lora_params * (4 * 4 + (2 if s.precision != "no" else 0)), "static"))
    text = s.batch_size * s.text_tokens * (arch.text_d_model * 4 + 2 * d * z["act"]) + s.cached_captions * s.text_tokens * arch.text_d_model * base
    rows.append(Row("text encoder states (batch + caption cache)", text, "static"))

    per_layer, outside = _lora_by_place(arch, modules)
    stream = outside["embed_tokens"] > 0
    layer_sets: list[list[_Saved]] = []
    embed = [_Saved(f"embed{k}.lora_mid", n * s.lora_r, z["act"]) for k in range(outside["embed_tokens"])]
    if embed and arch.hidden_dropout > 0:  # the decoder's dropout on the embeddings, recorded once they need grad
        embed.append(_Saved("embed.dropout_mask", n * d, z["hidden_mask"]))
    for i in range(arch.layers):
        saved, stream = _layer_saved(arch, s, per_layer[i], stream, f"l{i}.")
        layer_sets.append(saved)
    text_kv = [item for layer in layer_sets for item in layer if item.key == "text_states"]
    head: list[_Saved] = []
    if stream:
        head += [_Saved("final_ln.ln_in", n * d, z["ln"]), _Saved("final_ln.ln_stats", 2 * n, z["fp32"])]
    if outside["lm_heads"]:  # adapted heads read the final LayerNorm's output, as attention reads its own
        heads_saved, _ = _layer_saved(arch, s, {f"lm_heads.{k}" for k in range(outside["lm_heads"])}, stream, "",
                                      lm_heads=outside["lm_heads"])
        head += heads_saved
    # Our loss: fp32 log-softmax output (saved) + its gradient + the gradient of its input, 12 B/logit.
    logits = s.batch_size * arch.positions(s.window_seconds) * arch.codebooks * arch.vocab
    loss_peak = logits * 12
    if prefix:  # MusicGen-Melody: the heads' logits cover the prefix too; the loss copies the audio part
        all_logits = n * arch.codebooks * arch.vocab
        loss_peak = max(loss_peak, all_logits * (2 if s.precision != "no" else 4) + 8 * logits)
    # One layer's backward: the gradient of its output and of the FFN's two wide tensors coexist.
    grad_bytes = 4 if s.precision == "no" else z["act"]
    layer_backward = n * (2 * arch.ffn_dim + 2 * d) * grad_bytes

    # Text states a LoRA without dropout saves as its input are the batch's states, counted above.
    text_saved = _bytes(text_kv)
    if not s.gradient_checkpointing:
        saved_total = _bytes([item for layer in layer_sets for item in layer] + embed + head)
        rows.append(Row("activations saved for backward (all layers)", saved_total - text_saved, "peak"))
        at_layer = layer_backward
        moment = "the loss's backward" if loss_peak >= at_layer else "the last layer's backward"
    else:
        # Each checkpointed layer keeps its input; backward recomputes one layer at a time.
        saved_total = arch.layers * n * d * z["residual"] + _bytes(embed + head)
        rows.append(Row("activations saved for backward (checkpointed layer inputs)", saved_total, "peak"))
        recompute = max(_bytes(layer) - _bytes([i for i in layer if i.key == "text_states"]) for layer in layer_sets)
        at_layer = recompute + layer_backward
        moment = "the loss's backward" if loss_peak >= at_layer else "one layer's recompute and backward"
    if loss_peak >= at_layer:
        rows.append(Row("logits + loss (fp32; in its backward)", loss_peak, "peak"))
    else:
        rows.append(Row("one layer's backward" + (" (recomputed)" if s.gradient_checkpointing else ""), at_layer, "peak"))
    loading = _loading(arch, s, rows) if s.count_loading and s.device == "cpu" else None
    if loading is not None and sum(row.bytes for row in loading) > sum(row.bytes for row in rows):
        return MemoryEstimate(loading, "loading the checkpoint", saved_total)
    return MemoryEstimate(tuple(rows), moment, saved_total)


def _loading(arch: Architecture, s: Settings, rows: list[Row]) -> tuple[Row, ...]:
    """The resident set while the checkpoint loads: its files are memory-mapped (every page read
    stays resident until the load ends) and, when the run's dtype differs from the files', the
    converted copies of T5 and the decoder exist beside them (EnCodec stays fp32, read in place)."""
    files = sum(arch.parameters.values()) * arch.stored_itemsize
    base_itemsize = 2 if s.base_dtype == "bfloat16" else 4
    converted = sum(row.bytes for row in rows if row.label.startswith("frozen weights") and "codec" not in row.label)
    loading = [rows[0], Row(f"loading: checkpoint files mapped ({arch.stored_itemsize} B per weight)", files, "static")]
    if base_itemsize != arch.stored_itemsize:
        loading.append(Row(f"loading: T5 and decoder converted to {s.base_dtype}", converted, "static"))
    return tuple(loading)


def with_settings(s: Settings, **changes) -> Settings:
    return replace(s, **changes)
