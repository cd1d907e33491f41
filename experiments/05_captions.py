"""05 captions: do real captions matter when fine-tuning on one folder of loops?

Hypothesis: metadata captions (genre, tempo, instruments) give the lowest held-out loss and the
only adapter whose samples follow the prompt; the folder-name template ("{folder} loop") is close
when folders are meaningful (kick/, breaks/...); one fixed dummy prompt for every clip (the old
behaviour) turns the text condition into a constant, so the adapter learns an unconditional style
and prompts stop steering it.

Run:
    uv run experiments/05_captions.py --variant metadata --seed 0 --data.path ~/loops
    uv run musicgen-lora sweep experiments/05_captions.py --seeds 0 1 2 -- --data.path ~/loops

Variants:
    dummy     every clip captioned "audio loop" (data.caption_override)
    folder    "{folder} loop" from the parent folder's name, metadata ignored (data.use_metadata False)
    metadata  metadata.csv / metadata.jsonl captions, the template for files it does not list

With the built-in demo loops (one flat folder) `folder` gives every clip the same caption too.
"""

from musicgen_lora.training.config import LoraSettings, ModelConfig, OptimConfig, RunConfig
from musicgen_lora.training.experiment import main

CONFIG = RunConfig(
    variant="dummy",
    model=ModelConfig(name="facebook/musicgen-small"),
    lora=LoraSettings(r=16, alpha=16),
    optim=OptimConfig(lr=1e-4),
)

VARIANTS = {
    "dummy": {"data.caption_override": "audio loop"},
    "folder": {"data.use_metadata": False},
    "metadata": {"data.use_metadata": True},
}

if __name__ == "__main__":
    raise SystemExit(main(CONFIG, VARIANTS, script=__file__, description=__doc__))
