"""01 baseline: LoRA on MusicGen-small's decoder attention learns the style of a folder of loops.

Hypothesis: rank-16 LoRA on the decoder's self- and cross-attention projections (lr 1e-4, 10 s
windows, loops tiled instead of zero-padded, real captions, 10% condition dropout) lowers held-out
loss well below the base model within a few thousand steps, and samples move towards the data.

Run:
    uv run experiments/01_baseline.py --data.path ~/loops          # your audio, musicgen-small
    uv run experiments/01_baseline.py --smoke                      # offline CPU demo, ~1 minute
    uv run experiments/01_baseline.py --smoke --model.name tiny-melody   # the same with MusicGen-Melody
    uv run experiments/01_baseline.py --help                       # every option
"""

from musicgen_lora.training.config import LoraSettings, ModelConfig, OptimConfig, RunConfig
from musicgen_lora.training.experiment import main

CONFIG = RunConfig(
    model=ModelConfig(name="facebook/musicgen-small"),
    lora=LoraSettings(r=16, alpha=16, targets=("q_proj", "k_proj", "v_proj", "out_proj")),
    optim=OptimConfig(lr=1e-4),
)

VARIANTS = {"default": {}}

if __name__ == "__main__":
    raise SystemExit(main(CONFIG, VARIANTS, script=__file__, description=__doc__))
