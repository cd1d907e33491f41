"""04 condition dropout: does classifier-free guidance need caption dropout during fine-tuning?

Hypothesis: with p = 0 the adapter never sees the null condition, so the unconditional branch
guidance relies on stays the base model's: guided samples (scale 3) drift from the fine-tuned
style or degrade, while unguided samples (scale 1) are fine. p = 0.1 or 0.3 keeps guidance
working; 0.3 (audiocraft's pre-training value) costs a little conditional validation loss.

Evaluation, with and without guidance: validation loss is teacher-forced and conditioned, so it
does not depend on the guidance scale; every evaluation therefore also writes samples at guidance 3
(samples/<tag>_<i>.wav, W&B samples/adapter) and at guidance 1, i.e. no guidance
(samples/<tag>_g1_<i>.wav, W&B samples/adapter_g1), from the same prompts and seed. Compare them
by ear (or with an audio metric) across variants.

Run:
    uv run experiments/04_condition_dropout.py --variant p0.1 --seed 0 --data.path ~/loops
    uv run musicgen-lora sweep experiments/04_condition_dropout.py --seeds 0 1 2 -- --data.path ~/loops

Variants: p0, p0.1, p0.3 (data.condition_dropout).
"""

from musicgen_lora.training.config import (
    DataConfig,
    LoraSettings,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SampleConfig,
)
from musicgen_lora.training.experiment import main

CONFIG = RunConfig(
    variant="p0.1",
    model=ModelConfig(name="facebook/musicgen-small"),
    data=DataConfig(condition_dropout=0.1),
    lora=LoraSettings(r=16, alpha=16),
    optim=OptimConfig(lr=1e-4),
    sample=SampleConfig(guidance=3.0, extra_guidance=(1.0,)),
)

VARIANTS = {f"p{p:g}": {"data.condition_dropout": p} for p in (0.0, 0.1, 0.3)}

if __name__ == "__main__":
    raise SystemExit(main(CONFIG, VARIANTS, script=__file__, description=__doc__))
