"""03 LoRA targets: which decoder layers should the adapter touch?

Hypothesis: adding the feed-forward layers (fc1, fc2) to the attention projections lowers
held-out loss at the same rank, because timbre and groove live partly in the MLPs; adapting the
codebook embeddings and LM heads too helps little more and risks drifting away from the base
model's token statistics (its samples get worse before its loss does).

Rank 16, alpha 16, lr 1e-4 in every variant; only lora.targets changes (matched as module-name
suffixes in the decoder; embed_tokens and lm_heads cover all codebooks).

Run:
    uv run experiments/03_lora_targets.py --variant attention_ffn --seed 0 --data.path ~/loops
    uv run musicgen-lora sweep experiments/03_lora_targets.py --seeds 0 1 2 -- --data.path ~/loops

Variants:
    attention      self- and cross-attention q, k, v, out projections (the baseline)
    attention_ffn  + fc1, fc2
    all            + fc1, fc2, embed_tokens, lm_heads
"""

from musicgen_lora.training.config import LoraSettings, ModelConfig, OptimConfig, RunConfig
from musicgen_lora.training.experiment import main

ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
FFN = ("fc1", "fc2")
EMBEDDINGS_AND_HEADS = ("embed_tokens", "lm_heads")

CONFIG = RunConfig(
    variant="attention",
    model=ModelConfig(name="facebook/musicgen-small"),
    lora=LoraSettings(r=16, alpha=16, targets=ATTENTION),
    optim=OptimConfig(lr=1e-4),
)

VARIANTS = {
    "attention": {"lora.targets": ATTENTION},
    "attention_ffn": {"lora.targets": ATTENTION + FFN},
    "all": {"lora.targets": ATTENTION + FFN + EMBEDDINGS_AND_HEADS},
}

if __name__ == "__main__":
    raise SystemExit(main(CONFIG, VARIANTS, script=__file__, description=__doc__))
