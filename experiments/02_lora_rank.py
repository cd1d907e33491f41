"""02 LoRA rank: how much adapter capacity does a folder of loops need?

Hypothesis: held-out loss improves from rank 4 to rank 16 and then flattens: one style of loops is
a low-rank change to the decoder, so ranks 32 and 64 add parameters (and adapter size) without a
lower validation loss, and may overfit a small folder sooner.

Everything else is 01_baseline (attention projections, lr 1e-4, 10 s tiled windows). alpha = r in
every variant, so the LoRA scale alpha / r is 1 throughout and r16 is exactly the baseline: rank
is the only thing that changes. (A fixed alpha would also shrink the update scale as r grows, mixing
capacity with an effective learning-rate change; rsLoRA's alpha ~ sqrt(r) is a separate question.)

Run:
    uv run experiments/02_lora_rank.py --variant r8 --seed 0 --data.path ~/loops
    uv run musicgen-lora sweep experiments/02_lora_rank.py --seeds 0 1 2 -- --data.path ~/loops
    uv run musicgen-lora report experiments/02_lora_rank.py

Variants: r4, r8, r16, r32, r64 (lora.r = lora.alpha = N).
"""

from musicgen_lora.training.config import LoraSettings, ModelConfig, OptimConfig, RunConfig
from musicgen_lora.training.experiment import main

CONFIG = RunConfig(
    variant="r16",
    model=ModelConfig(name="facebook/musicgen-small"),
    lora=LoraSettings(r=16, alpha=16, targets=("q_proj", "k_proj", "v_proj", "out_proj")),
    optim=OptimConfig(lr=1e-4),
)

VARIANTS = {f"r{r}": {"lora.r": r, "lora.alpha": r} for r in (4, 8, 16, 32, 64)}

if __name__ == "__main__":
    raise SystemExit(main(CONFIG, VARIANTS, script=__file__, description=__doc__))
