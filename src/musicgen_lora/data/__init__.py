"""The data pipeline, from audio files to training windows: decoding and resampling (`audio`),
captions and metadata (`captions`), Hugging Face datasets input (`hf_datasets`), EnCodec encoding in
blocks (`encoding`) into the on-disk token cache (`tokens`), the chroma of melody models (`chroma`),
listening groups and the held-out split (`groups`), windows over cached codes (`windows`),
percussive emphasis and the built-in demo loops.

Imports: the standard library, numpy/torch/audio libraries, `musicgen_lora.helpers` and
`musicgen_lora.modeling` (the codec and the collate layout). Never training, tracking, evaluation,
tools, azure or the CLI: a data module must be usable without a run.
"""

from typing import Literal

# How a clip shorter than a window is filled. Here (not in `windows`) so that the run configuration
# can name it without importing torch.
PadMode = Literal["tile", "pad", "zero_pad_legacy"]
